r"""DDPM++ (Song et al. 2021, arXiv:2011.13456, Sec. 4.4): the NCSN++ layout of :mod:`.ncsnpp` with the
VP-model choices of the released ``*_ddpmpp_*`` configurations -- sinusoidal timestep embedding, no FIR
resampling (nearest-neighbour up, 2x2 average-pool down), no input pyramid, no division by :math:`\sigma`,
data centred to ``[-1, 1]``. The network is called with :math:`999\,t` and predicts :math:`\varepsilon`
(score :math:`= -\mathrm{net}/\sigma_t`). See :mod:`.ncsnpp` for what is covered.
"""

from __future__ import annotations

from typing import Any

from .ncsnpp import NCSNpp, NCSNppConfig

__all__ = ["DDPMpp", "ddpmpp_config"]


def ddpmpp_config(**overrides: Any) -> NCSNppConfig:
    """The CIFAR-10 DDPM++ (continuous) hyper-parameters, with ``overrides`` applied
    (``num_res_blocks=8`` gives the "deep" variant)."""
    base = NCSNppConfig(
        embedding_type="positional",
        fir=False,
        progressive_input="none",
        scale_by_sigma=False,
        centered=True,
    )
    return NCSNppConfig(**{**base.to_dict(), **overrides})


class DDPMpp(NCSNpp):
    """:class:`~scoresolve.adapters.ncsnpp.NCSNpp` with the DDPM++ defaults (:func:`ddpmpp_config`)."""

    def __init__(self, config: NCSNppConfig | None = None, **overrides: Any) -> None:
        super().__init__(config or ddpmpp_config(), **overrides)
