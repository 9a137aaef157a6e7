r"""EDM's Heun sampler (Karras et al. 2022, arXiv:2206.00364, Algorithms 1–2) for any linear SDE.

In the EDM variables (:math:`y = x/\alpha`, :math:`\tilde\sigma = \sigma/\alpha`, see
:mod:`scoresolve.solvers.exp_base`) the probability-flow ODE is
:math:`dy/d\tilde\sigma = d(y,\tilde\sigma) = (y - D(y,\tilde\sigma))/\tilde\sigma`. One step from
:math:`\tilde\sigma_i` to :math:`\tilde\sigma_{i+1}`:

.. math:: \tilde y = y_i + (\tilde\sigma_{i+1}-\tilde\sigma_i)\,d_i,\qquad
          y_{i+1} = y_i + \tfrac12(\tilde\sigma_{i+1}-\tilde\sigma_i)\,(d_i + d(\tilde y, \tilde\sigma_{i+1})),

and the last step is an Euler step (EDM takes Euler onto :math:`\sigma = 0`). With churn
(``s_churn > 0``) the noise level is first raised to :math:`\hat\sigma = (1+\gamma)\tilde\sigma_i`,
:math:`\gamma = \min(s_{churn}/n, \sqrt2-1)` on :math:`[s_{tmin}, s_{tmax}]`, by adding
:math:`\sqrt{\hat\sigma^2-\tilde\sigma_i^2}\,s_{noise}\,z` (stochastic; off by default).

Budget: ``steps=K`` uses :math:`n = \lceil K/2\rceil` grid intervals, all Heun but the last (Euler):
:math:`2n - 1` evaluations, i.e. exactly ``K`` for odd ``K``. For even ``K`` the budget is reached
exactly when :func:`scoresolve.sample` passes the budget to the solver (``ctx.info["steps"]``): the
last step is then Heun too; otherwise ``K - 1`` evaluations are spent (never more than ``K``).
Order 2.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._util import check_int
from ..registry import SOLVERS
from .base import SolveContext
from .exp_base import BudgetSolver, Run

__all__ = ["HeunEDM"]


@SOLVERS.register("heun_edm", description="EDM Heun (2nd order, Euler last step), optional churn")
class HeunEDM(BudgetSolver):
    """EDM's Heun sampler; see the module docstring for the update, budget and churn.

    Args:
        s_churn, s_tmin, s_tmax, s_noise: EDM's stochasticity knobs (``s_churn=0``: deterministic).
        last_step: ``"none"`` (stop at ``eps``) or ``"zero"``/``"tweedie"`` (the last interval ends at
            :math:`\\tilde\\sigma=0`, not at ``eps``; Euler there is Tweedie).
        calibrate: see :class:`~scoresolve.solvers.exp_base.BudgetSolver`.
    """

    reference = "Karras et al. 2022, EDM, arXiv:2206.00364"
    order: ClassVar[float] = 2.0
    nfe_per_step: ClassVar[int] = 2
    default_grid: ClassVar[str] = "karras"

    def __init__(
        self,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = math.inf,
        s_noise: float = 1.0,
        last_step: str = "none",
        calibrate: Any = False,
    ) -> None:
        super().__init__(last_step=last_step, calibrate=calibrate)
        if not (s_churn >= 0 and math.isfinite(s_churn)):
            raise ValueError(f"s_churn must be a finite number >= 0, got {s_churn!r}")
        self.s_churn, self.s_tmin = float(s_churn), float(s_tmin)
        self.s_tmax, self.s_noise = float(s_tmax), float(s_noise)
        self.stochastic = self.s_churn > 0  # type: ignore[misc]

    def steps_to_grid(self, steps: int) -> int:
        check_int(steps, "steps")
        return (steps + 1) // 2

    def nfe_for(self, n_intervals: int) -> int:
        return 2 * n_intervals - 1

    def make_run(self, ctx: SolveContext, x: Tensor, grid: Tensor) -> Run:
        # the last interval ends at sigma = 0 instead of eps when last_step != "none"
        run = super().make_run(ctx, x, grid)
        if run.to_zero:
            for lst in (run.t, run.s, run.lam, run.alpha):
                del lst[-2]
        budget = ctx.info.get("steps")
        run.extras["all_heun"] = isinstance(budget, int) and budget == 2 * run.n_steps and not run.to_zero
        return run

    def update(self, run: Run, y: Tensor, i: int, state: Any) -> tuple[Tensor, Any]:
        s, s_next = run.s[i], run.s[i + 1]
        t, a = run.t[i], run.alpha[i]
        if self.s_churn > 0 and self.s_tmin <= s <= self.s_tmax:
            gamma = min(self.s_churn / run.n_steps, math.sqrt(2) - 1)
            s_hat = s * (1 + gamma)
            sde = run.ctx.sde
            t_hat = float(sde.t_from_sigma(torch.tensor(s_hat, dtype=torch.float64)))
            if t_hat <= sde.T:
                z = run.ctx.noise.randn_like(y)
                y = y + (math.sqrt(s_hat**2 - s**2) * self.s_noise) * z
                s, t = s_hat, t_hat
                a = float(sde.alpha(torch.tensor(t, dtype=torch.float64)))
        D = run.denoise_at(y, t, s, a)
        d = (y - D) / s
        y_pred = y + (s_next - s) * d
        last = i == run.n_steps - 1
        if s_next == 0 or (last and not run.extras.get("all_heun")):
            return y_pred, None
        D2 = run.denoise(y_pred, i + 1)
        d2 = (y_pred - D2) / s_next
        return y + (0.5 * (s_next - s)) * (d + d2), None
