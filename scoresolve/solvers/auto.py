r"""``solver="auto"``: the best measured few-step deterministic sampler for a given budget.

What it runs (measured on the digits mixture under VP, ``benchmarks/fewstep.py``, docs/fast_samplers.md),
always on a grid **calibrated for this model, solver and budget** (the solver's own endpoint error
against a fine teacher, :func:`scoresolve.calibrate.calibrate_grid`) and always ending with a step to
:math:`\tilde\sigma = 0` that uses an evaluation at ``eps`` (``last_step="zero"``):

- ``steps`` < 7: iPNDM — 4th-order Adams–Bashforth on the denoiser direction with iPNDM's fixed
  coefficients, order ramping 1→4, variable-step weights for the jump to 0 — calibrated on
  ``metric="both"`` (an RMSE-calibrated grid gave a lower FD on digits, 1.7–2.1× the floor against
  2.3–2.9×, but left mean :math:`\log p_0` +6.7 nats off there and −560 nats on the 16-D anisotropic
  mixture under VE);
- ``steps`` in ``UNIPC_BUDGETS`` (7–15): UniPC (bh2, predictor order 2 + corrector), calibrated on
  RMSE — at 10 NFE it kept the mean :math:`\log p_0` of the exact ODE (+0.34–0.38 nats, paired) where
  iPNDM lost 1.5 nats, with FD 1.02–1.08× the floor and RMSE 0.013;
- ``steps`` ≥ 16: iPNDM calibrated on ``metric="both"``.

The 5-NFE acceptance bars of the few-step issue are not reached (see docs/fast_samplers.md).

Calibration runs once per (model, SDE, budget, shape) in a process (in-memory cache keyed by the
model's fingerprint) or once ever with ``calibrate="file.json"``; its cost is reported in
``SampleResult.info["calibration"]`` and is not counted in the sampling NFE. ``steps=K`` spends exactly
``K`` evaluations (``K >= 2``: ``K - 1`` grid intervals and the jump to 0).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from torch import Tensor

from ..registry import SOLVERS
from .base import SolveContext
from .exp_base import BudgetSolver
from .exponential import UniPC
from .ipndm import IPNDM

__all__ = ["AutoSolver", "UNIPC_BUDGETS"]

#: budgets at which ``auto`` runs UniPC rather than iPNDM
UNIPC_BUDGETS = range(7, 16)
#: calibration options of ``auto`` below 7 evaluations with a ``gaussian_prior``
UNIPC_OPTIONS = {"logp_tol": 1.0, "logp_cap": 1.25}
GAUSS_FEW_OPTIONS = {"n_samples": 256, "logp_tol": 2.0, "logp_cap": 1.5, "fd_weight": 16.0}


@SOLVERS.register("auto", description="best measured few-step choice for the budget, calibrated grid, step to 0")
class AutoSolver(BudgetSolver):
    """The one-word few-step sampler (see the module docstring for what it runs and why).

    Args:
        calibrate: ``True`` (default): calibrate the grid at the first call (in-memory cache);
            a path: cache the calibrated grid in that JSON file; ``False``: no calibration, Karras grid.
    """

    reference = "Zhang & Chen 2023, iPNDM, arXiv:2204.13902; Zhao et al. 2023, UniPC, arXiv:2302.04867"
    order: ClassVar[float] = 2.0
    default_grid: ClassVar[str] = "karras"

    def __init__(
        self,
        calibrate: bool | str | os.PathLike[str] = True,
        gaussian_prior: tuple[Tensor | float, Tensor | float] | str | None = "estimate",
    ) -> None:
        if gaussian_prior == "estimate" and not calibrate:
            gaussian_prior = None  # the estimate comes from calibration: without it, no analytical first step
        super().__init__(last_step="zero", calibrate=calibrate, gaussian_prior=gaussian_prior)

    def choose(self, steps: int) -> BudgetSolver:
        """The solver ``auto`` runs for a budget of ``steps`` evaluations (e.g. to pre-calibrate it), with
        the calibration metric and options it uses (``calibrate_metric``, ``calibrate_options``)."""
        inner: BudgetSolver
        if steps < 7 and self.uses_gaussian:
            inner = IPNDM(order=4, variable=False, last_step="tweedie", calibrate=self.calibrate,
                          gaussian_prior=self.gaussian_prior)
            inner.calibrate_metric = "logp"
            inner.calibrate_options = dict(GAUSS_FEW_OPTIONS)
        elif steps in UNIPC_BUDGETS:
            inner = UniPC(order=2, variant="bh2", last_step="zero", calibrate=self.calibrate)
            inner.calibrate_metric = "logp"
            inner.calibrate_options = dict(UNIPC_OPTIONS)
        else:
            inner = IPNDM(order=4, variable=False, last_step="zero", calibrate=self.calibrate)
            inner.calibrate_metric = "both"
        return inner

    def steps_to_grid(self, steps: int) -> int:
        if isinstance(steps, int) and not isinstance(steps, bool) and steps == 1:
            raise ValueError(
                "steps=1 is too small for solver='auto' (it spends one evaluation at eps for the final step to "
                "sigma=0 and needs >= 2); with a single evaluation use solver='ipndm', last_step='none'"
            )
        super().steps_to_grid(steps)  # validates
        return self.choose(steps).steps_to_grid(steps)

    def nfe_for(self, n_intervals: int) -> int:
        """Budget of a grid of ``n_intervals`` (used only when ``sample()`` got a grid, not ``steps``: a grid of
        up to 6 intervals is read as the analytical first step's, ``K = n``, when that step is on)."""
        return n_intervals if (self.uses_gaussian and n_intervals <= 6) else n_intervals + 1

    def solve(self, ctx: SolveContext, x: Tensor) -> Tensor:
        assert ctx.grid is not None
        n = ctx.grid.numel() - 1
        k = ctx.info.get("steps")
        k = self.nfe_for(n) if k is None else int(k)
        inner = self.choose(k)
        if inner.steps_to_grid(k) != n:
            raise ValueError(f"grid: solver='auto' with a budget of {k} evaluations needs {inner.steps_to_grid(k)} "
                             f"grid intervals, got {n}")
        ctx.info["auto"] = {k: v for k, v in inner.config().items()}
        ctx.info["last_step"] = inner.last_step
        return inner.solve(ctx, x)

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"class": type(self).__name__, "last_step": self.last_step}
        gp = self.gaussian_prior
        if gp is not None:
            cfg["gaussian_prior"] = gp if isinstance(gp, str) else gp.digest
        return cfg
