r"""EDM's Heun sampler (Karras et al. 2022, arXiv:2206.00364, Algorithms 1–2) for any linear SDE.

In the EDM variables (:math:`y = x/\alpha`, :math:`\tilde\sigma = \sigma/\alpha`, see
:class:`~scoresolve.solvers.base.EDMSolver`) the probability-flow ODE is
:math:`dy/d\tilde\sigma = d(y,\tilde\sigma) = (y - D(y,\tilde\sigma))/\tilde\sigma`. One step from
:math:`\tilde\sigma_i` to :math:`\tilde\sigma_{i+1}`:

.. math:: \tilde y = y_i + (\tilde\sigma_{i+1}-\tilde\sigma_i)\,d_i,\qquad
          y_{i+1} = y_i + \tfrac12(\tilde\sigma_{i+1}-\tilde\sigma_i)\,(d_i + d(\tilde y, \tilde\sigma_{i+1})),

the last one an Euler step when the run ends on the grid (``final="none"``; EDM's Euler step onto 0 is
``final="tweedie"``). Churn (``s_churn > 0``, off by default) first raises the level with fresh noise to
:math:`(1+\gamma)\tilde\sigma_i`, :math:`\gamma = \min(s_{churn}/n, \sqrt2-1)` on :math:`[s_{tmin}, s_{tmax}]`.
Order 2; :math:`n` intervals cost :math:`2n - 1` evaluations with ``final="none"``, :math:`2n + 1` with a final
step; ``nfe=K`` plans the largest grid within ``K`` (an even ``K`` with ``final="none"`` spends ``K - 1``)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..registry import SOLVERS
from .base import EDMSolver, Interval, SolveContext, Step

__all__ = ["HeunEDM"]


@SOLVERS.register("heun_edm", description="EDM Heun (2nd order, Euler last step), optional churn")
class HeunEDM(EDMSolver):
    """EDM's Heun sampler; see the module docstring for the update, budget and churn.

    Args:
        s_churn, s_tmin, s_tmax, s_noise: EDM's stochasticity knobs (``s_churn=0``: deterministic).
    """

    reference = "Karras et al. 2022, EDM, arXiv:2206.00364"
    order: ClassVar[float] = 2.0
    nfe_per_step: ClassVar[int] = 2
    nfe_last: ClassVar[int | None] = 1
    default_grid: ClassVar[str] = "karras"

    def __init__(
        self,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = math.inf,
        s_noise: float = 1.0,
    ) -> None:
        if not (s_churn >= 0 and math.isfinite(s_churn)):
            raise ValueError(f"s_churn must be a finite number >= 0, got {s_churn!r}")
        self.s_churn, self.s_tmin = float(s_churn), float(s_tmin)
        self.s_tmax, self.s_noise = float(s_tmax), float(s_noise)
        self.stochastic = self.s_churn > 0  # type: ignore[misc]

    def step(self, ctx: SolveContext, y: Tensor, iv: Interval, state: Any) -> Step:
        s, s_next = iv.sigma, iv.sigma_next
        t, a = iv.t, iv.alpha
        churned = False
        if self.s_churn > 0 and self.s_tmin <= s <= self.s_tmax:
            gamma = min(self.s_churn / iv.n, math.sqrt(2) - 1)
            s_hat = s * (1 + gamma)
            sde = ctx.sde
            t_hat = float(sde.t_from_sigma(torch.tensor(s_hat, dtype=torch.float64)))
            if t_hat <= sde.T:
                z = ctx.noise.randn_like(y)
                y = y + (math.sqrt(s_hat**2 - s**2) * self.s_noise) * z
                s, t, churned = s_hat, t_hat, True
                a = float(sde.alpha(torch.tensor(t, dtype=torch.float64)))
        D = ctx.denoise(y, t, s, a)
        d = (y - D) / s
        y_pred = y + (s_next - s) * d
        direction = None if churned else d
        if iv.last and ctx.final == "none":  # Euler last step (nfe_last = 1)
            return Step(y_pred, direction=direction)
        D2 = ctx.denoise(y_pred, iv.t_next, s_next, iv.alpha_next)
        d2 = (y_pred - D2) / s_next
        return Step(y + (0.5 * (s_next - s)) * (d + d2), direction=direction)
