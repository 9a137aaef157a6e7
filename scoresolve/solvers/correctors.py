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

from ..registry import CORRECTORS
from ..sde import SDE
from .base import CountedScore, NoiseSource

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
    r"""Langevin MCMC with the signal-to-noise step size of Song et al. 2021 (Algorithms 4/5):
    :math:`\epsilon = 2\alpha\,(r\,\lVert z\rVert / \lVert s\rVert)^2` with :math:`r` = ``snr``,
    per sample, and :math:`\alpha = a^2` the squared mean factor of the forward transition into
    ``t`` (:math:`1-\beta_i` for VP/sub-VP, 1 for VE, as in the paper)."""

    __call__ = Corrector._run

    def step_size(self, sde, x, s, z, t, t_from, snr):
        a, _ = sde.transition(t_from, t)
        tiny = torch.finfo(x.dtype).tiny
        return 2 * a**2 * (snr * _norm(z) / _norm(s).clamp_min(tiny)) ** 2


@CORRECTORS.register("annealed_langevin")
class AnnealedLangevin(Corrector):
    r"""Annealed Langevin dynamics of NCSN (Song & Ermon 2019, arXiv:1907.05600) as written in
    Song et al. 2021: :math:`\epsilon = 2\alpha\,(r\,\sigma(t))^2` with :math:`\sigma(t)` the
    perturbation std and :math:`\alpha` as for :class:`Langevin`."""

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
