r"""Correctors of the predictor–corrector sampler: score-based MCMC at a fixed time ``t``.

Each corrector runs ``n_steps`` Langevin steps :math:`x \leftarrow x + \epsilon\,s(x,t) +
\sqrt{2\epsilon}\,z` targeting :math:`p_t`; they differ in the step size :math:`\epsilon`.
Norms are **per sample**: the paper's released code averages them over the batch, which lets
samples change each other's step size; here a sample's result never depends on its neighbours.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..noise import NoiseSource
from ..registry import CORRECTORS
from ..sde import SDE
from .base import CountedScore

__all__ = ["Corrector", "Langevin", "AnnealedLangevin", "NoneCorrector"]


def _norm(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).norm(dim=-1)


class Corrector:
    """Base class. ``t`` is the current time and ``t_from`` the previous grid time (used by
    correctors whose step size follows the discretisation)."""

    stochastic: ClassVar[bool] = True
    uses_score: ClassVar[bool] = True

    def __call__(
        self,
        score: CountedScore,
        sde: SDE,
        x: Tensor,
        t: Tensor,
        t_from: Tensor,
        noise: NoiseSource,
        snr: float,
        n_steps: int,
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def step_size(self, sde: SDE, x: Tensor, s: Tensor, z: Tensor, t: Tensor, t_from: Tensor, snr: float) -> Tensor:
        raise NotImplementedError

    def _run(self, score, sde, x, t, t_from, noise, snr, n_steps):
        x_mean = x
        for _ in range(n_steps):
            s = score(x, t)
            z = noise.randn_like(x)
            eps = SDE.bcast(self.step_size(sde, x, s, z, t, t_from, snr), x)
            x_mean = x + eps * s
            x = x_mean + torch.sqrt(2 * eps) * z
        return x, x_mean


@CORRECTORS.register("langevin")
class Langevin(Corrector):
    r"""Langevin MCMC with the signal-to-noise step size of Song et al. 2021 (arXiv:2011.13456,
    Algorithms 4/5): :math:`\epsilon = 2\alpha\,(r\,\lVert z\rVert / \lVert s\rVert)^2` with
    :math:`r` = ``snr``, per sample, and :math:`\alpha = a^2` the squared mean factor of the one-step
    forward transition into ``t``: :math:`1-\beta_i` for VP/sub-VP (to first order in the step), 1 for
    VE. That is the released code's ``alpha = sde.alphas[timestep]`` (:math:`1-\beta_i`), which
    produced the paper's numbers; Algorithm 5's text writes :math:`\alpha_i`, the paper's symbol for
    the cumulative :math:`\prod_{j\le i}(1-\beta_j)` (score_sde_pytorch issue #73). The cumulative
    product would shrink the steps at high noise and makes corrector-only sampling worse.

    A sample whose score is zero (e.g. an untrained network with a zero-initialised output layer), or
    so small that the step overflows, is not moved (:math:`\epsilon = 0`): the step size has no
    finite value there, and ``inf * 0`` would turn the sample into NaN.

    One step per call of the score: NFE = ``n_steps`` per noise level."""

    __call__ = Corrector._run

    def step_size(self, sde, x, s, z, t, t_from, snr):
        a, _ = sde.transition(t_from, t)
        ns = _norm(s)
        eps = 2 * a**2 * (snr * _norm(z) / ns.clamp_min(torch.finfo(x.dtype).tiny)) ** 2
        # zero score or overflow: no move (the step's size and its noise would be inf, its drift NaN)
        ok = (ns > 0) & torch.isfinite(eps) & torch.isfinite(eps * ns)
        return torch.where(ok, eps, torch.zeros_like(eps))


@CORRECTORS.register("annealed_langevin")
class AnnealedLangevin(Corrector):
    r"""Annealed Langevin dynamics of NCSN (Song & Ermon 2019, arXiv:1907.05600) as written in
    Song et al. 2021: :math:`\epsilon = 2\alpha\,(r\,\sigma(t))^2` with :math:`\sigma(t)` the
    perturbation std and :math:`\alpha` as for :class:`Langevin`.

    NCSN's step :math:`\epsilon_i = \epsilon\,\sigma_i^2/\sigma_L^2` is this with
    :math:`r = \sqrt{\epsilon/(2\sigma_L^2)}`: the released corrector-only configurations use
    ``snr=0.316`` with 100 steps per level (NCSN, :math:`\epsilon = 2\cdot10^{-5}`,
    :math:`\sigma_L = 0.01`) and ``snr=0.176`` with 5 steps per level (NCSNv2 CIFAR-10,
    :math:`\epsilon = 6.2\cdot10^{-6}`). NFE = ``n_steps`` per noise level."""

    __call__ = Corrector._run

    def step_size(self, sde, x, s, z, t, t_from, snr):
        a, _ = sde.transition(t_from, t)
        return 2 * a**2 * (snr * sde.marginal_std(t)) ** 2


@CORRECTORS.register("none")
class NoneCorrector(Corrector):
    """No corrector."""

    stochastic = False
    uses_score = False

    def __call__(self, score, sde, x, t, t_from, noise, snr, n_steps):
        return x, x
