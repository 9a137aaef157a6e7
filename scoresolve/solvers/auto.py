r"""``solver="auto"``: the best measured few-step deterministic sampler for a given budget.

What it runs (measured on the digits mixture under VP, ``benchmarks/fewstep.py``, docs/fast_samplers.md),
always on a grid **calibrated for this model, solver and budget** (the solver's own endpoint error
against a fine teacher, :func:`scoresolve.calibrate.calibrate_grid`) and always ending at
:math:`\tilde\sigma = 0` after an evaluation at ``eps``:

- ``steps`` < 7: iPNDM — 4th-order Adams–Bashforth on the denoiser direction with iPNDM's fixed
  coefficients, order ramping 1→4 — with the **analytical Gaussian first step**
  (``gaussian_prior``, :mod:`~scoresolve.solvers.exp_base`: the first interval from ``T`` is the exact
  PF-ODE flow of a Gaussian fit of the data, no evaluation, and the Adams history starts with the
  Gaussian direction at ``T``), a Tweedie final step (``last_step="tweedie"``), calibrated on
  ``metric="logp"`` (RMSE optimum, then the estimated mean log-density gap traded against RMSE under a
  1.5× cap, with a paired-Fréchet term: ``GAUSS_FEW_OPTIONS``). The Gaussian fit is the user's
  ``gaussian_prior=(mean, cov)`` or, by default (``"estimate"``), the model's own moments when it is a
  :class:`~scoresolve.ScoreModel` with ``data_moments=(mean, cov)``, else estimated during calibration
  (mean of the denoiser at ``T``; isotropic or shrunk covariance of the teacher's endpoints, whichever
  calibrates better). Digits × VP at 5 NFE: FD 1.14–1.28× the floor, mean :math:`\log p_0` +0.6 to
  +0.9 nats off the exact ODE's, where the same solver without the Gaussian step reached 2.3–2.9× and
  +4.7 nats;
- ``steps`` in ``UNIPC_BUDGETS`` (7–15): UniPC (bh2, predictor order 2 + corrector), ``last_step="zero"``,
  calibrated on ``metric="logp"`` (``UNIPC_OPTIONS``) — at 10 NFE FD 1.00–1.05× the floor, RMSE 0.012,
  mean :math:`\log p_0` +0.29 to +0.35 nats off the exact ODE's (RMSE-only calibration: +0.45 to +0.50);
- ``steps`` ≥ 16: as below 7 (iPNDM with the Gaussian first step, Tweedie final step, ``metric="logp"``,
  the default search budget) — digits × VP at 20 NFE: FD 0.96–1.03× the floor, RMSE 0.002, mean
  :math:`\log p_0` +0.16 to +0.17 nats off the exact ODE's; it also brings the 16-D anisotropic mixture
  under VE within 1.06× of the exact ODE's FD, where iPNDM without it (``metric="both"``, the choice
  without a Gaussian step) was at 1.14×.

- ``steps`` > ``CALIBRATED_MAX`` (25): iPNDM (fixed coefficients, ``last_step="zero"``) on the log-SNR
  grid (:meth:`grid_for`; a user's ``grid=`` is kept) **without calibration**. The calibration's cost
  grows faster than the budget (digits × VP on this project's CPU: 6 000 evaluations / 17 s at 5,
  46 000 / 46 s at 20, 265 000 / 4 min at 50), while from ~25 evaluations a 4th-order multistep method
  converges without it: paired against a converged PF-ODE solution from the same noise (digits × VP,
  2000 samples) mean :math:`\log p_0` −0.50 / −0.11 / −0.03 nats and RMSE 0.0036 / 0.0009 / 0.0002 at
  26 / 50 / 100 evaluations. So ``auto``
  at 200 costs 200 evaluations and nothing else.

``gaussian_prior=None``, or ``calibrate=False`` with a model that carries no ``data_moments`` (nothing to
estimate from), turns the Gaussian step off: then iPNDM with ``last_step="zero"`` and ``metric="both"``
below 7 and from 16. With ``calibrate=False`` and a model's ``data_moments`` the Gaussian step is taken
on the uncalibrated Karras grid. Calibration runs once per (model, SDE, budget, shape) in a process
(in-memory cache keyed by the model's fingerprint) or once ever with ``calibrate="file.json"`` (the
estimated moments are stored in it; a grid calibrated with a model's moments records their digest, and
is not reused for estimated moments nor the other way); its cost is reported in
``SampleResult.info["calibration"]`` and is not counted in the sampling NFE. ``steps=K`` spends exactly
``K`` evaluations (``K >= 2``; outside 7–15 with the Gaussian step: ``K`` grid intervals, the first
analytical, evaluations at grid points ``1..K`` and a Tweedie step to 0; otherwise ``K - 1`` grid intervals
and the jump to 0).
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

__all__ = ["AutoSolver", "UNIPC_BUDGETS", "CALIBRATED_MAX"]

#: budgets at which ``auto`` runs UniPC rather than iPNDM
UNIPC_BUDGETS = range(7, 16)
#: the largest budget ``auto`` calibrates a grid for; above it, uncalibrated iPNDM on the log-SNR grid
CALIBRATED_MAX = 25
#: calibration options of ``auto`` below 7 evaluations with a ``gaussian_prior``
UNIPC_OPTIONS = {"logp_tol": 1.0, "logp_cap": 1.25}
GAUSS_FEW_OPTIONS = {"n_samples": 256, "logp_tol": 2.0, "logp_cap": 1.5, "fd_weight": 16.0}


@SOLVERS.register("auto", description="best measured few-step choice for the budget, calibrated grid, step to 0")
class AutoSolver(BudgetSolver):
    """The one-word few-step sampler (see the module docstring for what it runs and why).

    Args:
        calibrate: ``True`` (default): calibrate the grid at the first call (in-memory cache);
            a path: cache the calibrated grid in that JSON file; ``False``: no calibration, Karras grid.
        gaussian_prior: ``"estimate"`` (default: the model's ``ScoreModel.data_moments`` if it carries
            them — with or without calibration — else the data's mean and covariance estimated during
            calibration, and no Gaussian step with ``calibrate=False``), ``(mean, cov)`` of the data
            (``cov``: ``(D, D)``, ``(D,)`` or a scalar; wins over the model's), or ``None`` (off): the
            analytical first step used below 7 and from 16 to 25 evaluations.
    """

    reference = "Zhang & Chen 2023, iPNDM, arXiv:2204.13902; Zhao et al. 2023, UniPC, arXiv:2302.04867"
    order: ClassVar[float] = 2.0
    default_grid: ClassVar[str] = "karras"

    def __init__(
        self,
        calibrate: bool | str | os.PathLike[str] = True,
        gaussian_prior: tuple[Tensor | float, Tensor | float] | str | None = "estimate",
    ) -> None:
        from_model = isinstance(gaussian_prior, str) and gaussian_prior == "estimate"
        if from_model and not calibrate:
            # the estimate comes from calibration: without it, no analytical first step, unless the model
            # carries data_moments (for_model, called by sample(), then gives this solver the model's fit)
            gaussian_prior = None
        super().__init__(last_step="zero", calibrate=calibrate, gaussian_prior=gaussian_prior)
        self._gauss_from_model = from_model

    def _gaussian_step_at(self, steps: int) -> bool:
        """Whether ``auto`` takes the analytical Gaussian first step at a budget of ``steps`` (then its grid has
        ``steps`` intervals, otherwise ``steps - 1``)."""
        return self.uses_gaussian and steps <= CALIBRATED_MAX and steps not in UNIPC_BUDGETS

    def choose(self, steps: int) -> BudgetSolver:
        """The solver ``auto`` runs for a budget of ``steps`` evaluations (e.g. to pre-calibrate it), with
        the calibration metric and options it uses (``calibrate_metric``, ``calibrate_options``)."""
        inner: BudgetSolver
        if steps > CALIBRATED_MAX:
            return IPNDM(order=4, variable=False, last_step="zero", calibrate=False)
        if self._gaussian_step_at(steps):
            inner = IPNDM(order=4, variable=False, last_step="tweedie", calibrate=self.calibrate,
                          gaussian_prior=self.gaussian_prior)
            inner.calibrate_metric = "logp"
            inner.calibrate_options = dict(GAUSS_FEW_OPTIONS)
            if steps < 7:
                inner.calibrate_options["max_evals"] = 400
        elif steps in UNIPC_BUDGETS:
            inner = UniPC(order=2, variant="bh2", last_step="zero", calibrate=self.calibrate)
            inner.calibrate_metric = "logp"
            inner.calibrate_options = dict(UNIPC_OPTIONS)
        else:
            inner = IPNDM(order=4, variable=False, last_step="zero", calibrate=self.calibrate)
            inner.calibrate_metric = "both"
        return inner

    def grid_for(self, steps: int) -> str:
        """Karras up to ``CALIBRATED_MAX`` (replaced by the calibrated grid unless ``calibrate=False``),
        the log-SNR grid above it."""
        return "log_snr" if steps > CALIBRATED_MAX else self.default_grid

    def steps_to_grid(self, steps: int) -> int:
        if isinstance(steps, int) and not isinstance(steps, bool) and steps == 1:
            raise ValueError(
                "steps=1 is too small for solver='auto' (it spends one evaluation at eps for the final step to "
                "sigma=0 and needs >= 2); with a single evaluation use solver='ipndm', last_step='none'"
            )
        super().steps_to_grid(steps)  # validates
        return self.choose(steps).steps_to_grid(steps)

    def nfe_for(self, n_intervals: int) -> int:
        """Budget of a grid of ``n_intervals`` (used only when ``sample()`` got a grid, not ``steps``: with the
        analytical first step on, a grid of up to 6 or of 16 to ``CALIBRATED_MAX`` intervals is read as its,
        ``K = n``)."""
        if self._gaussian_step_at(n_intervals):
            return n_intervals
        return n_intervals + 1

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
