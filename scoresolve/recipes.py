r"""``solver="auto"``: the best measured few-step deterministic sampler for an evaluation budget, as a table.

Each row of :data:`AUTO` gives, for a range of budgets ``nfe``, the solver and its options, how the run ends
(``final``), whether the first interval is the analytical Gaussian flow (``gaussian_prior="estimate"``: the model's
``ScoreModel.data_moments``, else estimated during calibration), and the options of the grid calibration
(:func:`scoresolve.calibrate.calibrate_grid`, the solver's own endpoint error against a fine teacher; ``None``: no
calibration, the row's grid). On a network (a model holding a ``torch.nn.Module``) the calibration is
:mod:`scoresolve.calibrate_dp` instead: grids fitted for each of :func:`trajectory_candidates` from one teacher run,
the solver and grid chosen on held-out draws. A row marked ``gaussian`` applies only when a Gaussian fit is
available; otherwise the next row for that budget does. On a network without a Gaussian fit the uncalibrated recipe
is :data:`NETWORK` instead (measured there: docs/benchmarks.md), calibrated below 10 evaluations only, where the
calibration keeps it unless a candidate beats it on the held-out draws by more than two paired standard errors.
:func:`auto` is all that :func:`scoresolve.sample` calls for ``solver="auto"``: the row, and the calibration as a
function returning the grid.
The measurements behind the table are in docs/fast_samplers.md (``benchmarks/fewstep.py``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

from ._util import check_int
from .calibrate import calibrated_run, calibration_options
from .calibrate_dp import Candidate, calibrate_trajectory
from .digest import holds_network
from .registry import SOLVERS
from .sde import SDE
from .solvers.base import GridSolver, Solver
from .solvers.exponential import DPMSolverPP2M, UniPC
from .solvers.grids import make_grid
from .solvers.ipndm import IPNDM
from .solvers.loop import plan

__all__ = ["Recipe", "AUTO", "NETWORK", "network_recipe", "auto_recipe", "auto", "calibrated_trajectory", "Auto",
           "trajectory_candidates"]

_UNCALIBRATED = ("not calibrated: on a network from 10 evaluations the recipe runs as it is (there, every replacement "
                 "by the held-out choice had a worse feature FD on the bundled networks; docs/benchmarks.md); "
                 "calibrate={'method': 'trajectory'} calibrates anyway")
_GAUSS_FEW = {"n_samples": 256, "logp_tol": 2.0, "logp_cap": 1.5, "fd_weight": 16.0}


@dataclass(frozen=True)
class Recipe:
    """One row of the ``auto`` table: budgets ``lo..hi`` (inclusive) run ``solver(**options)``, built once as
    :attr:`instance` (a solver holds only its options, so one object serves every run)."""

    lo: int
    hi: int
    solver: type[GridSolver]
    options: dict[str, Any]
    final: str
    grid: str
    gaussian: bool = False
    calibration: dict[str, Any] | None = field(default=None)
    instance: GridSolver = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "instance", self.solver(**self.options))


_IPNDM = {"order": 4, "variable": False}
AUTO: tuple[Recipe, ...] = (
    Recipe(2, 6, IPNDM, _IPNDM, "tweedie", "karras", True, {"metric": "logp", **_GAUSS_FEW, "max_evals": 400}),
    Recipe(7, 15, UniPC, {"order": 2, "variant": "bh2"}, "zero", "karras", False,
           {"metric": "logp", "logp_tol": 1.0, "logp_cap": 1.25}),
    Recipe(16, 25, IPNDM, _IPNDM, "tweedie", "karras", True, {"metric": "logp", **_GAUSS_FEW}),
    Recipe(2, 25, IPNDM, _IPNDM, "zero", "karras", False, {"metric": "both"}),
    Recipe(26, 10**9, IPNDM, _IPNDM, "zero", "log_snr", False, None),
)


#: the recipes on a network without a Gaussian fit for budgets up to 25 (above: the rows of :data:`AUTO`):
#: DPM-Solver++(2M) on the analytic grid to 15, on the Karras grid from 16, the best fixed solver and grid of ours
#: on the bundled digits network at 5 / 10 and at 20 NFE. Calibrated below 10 only: from 10 on, every replacement
#: the held-out choice made on the bundled networks lowered the feature FD (docs/benchmarks.md)
NETWORK: tuple[Recipe, ...] = (Recipe(2, 9, DPMSolverPP2M, {}, "none", "analytic", False, {}),
                               Recipe(10, 15, DPMSolverPP2M, {}, "none", "analytic", False, None),
                               Recipe(16, 25, DPMSolverPP2M, {}, "none", "karras", False, None))


def network_recipe(nfe: int) -> Recipe | None:
    """The row of :data:`NETWORK` for a budget of ``nfe`` evaluations (``None``: the rows of :data:`AUTO`)."""
    return next((r for r in NETWORK if r.lo <= nfe <= r.hi), None)


def auto_recipe(nfe: int, gaussian: bool) -> Recipe:
    """The row of :data:`AUTO` for a budget of ``nfe`` evaluations (``gaussian``: a Gaussian fit is available)."""
    if nfe < 2:
        raise ValueError(
            f"nfe={nfe} is too small for solver='auto' (it spends one evaluation at eps for the final step to "
            "sigma=0 and needs >= 2); with a single evaluation use solver='ipndm' with final='none'"
        )
    for r in AUTO:
        if r.lo <= nfe <= r.hi and (gaussian or not r.gaussian):
            return r
    raise AssertionError("the AUTO table covers every budget >= 2")


def trajectory_candidates() -> list[Any]:
    """The solvers ``auto`` fits grids for on a network (:mod:`scoresolve.calibrate_dp`), each with its final step;
    the held-out comparison picks one of them (on a fitted or a fixed grid)."""
    return [Candidate("ipndm", IPNDM(order=4), "tweedie"), Candidate("unipc", UniPC(order=2, variant="bh2"), "zero"),
            Candidate("dpmpp_2m", DPMSolverPP2M(), "none")]


def auto(model: Any, nfe: int | None, steps: int | None, final: str | None, grid: Any, gaussian_prior: Any,
         calibrate: Any, calibration_budget: Any, options: dict[str, Any],
         info: dict[str, Any]) -> tuple[GridSolver, str, Any, Any, int, Callable[..., Any] | None]:
    """``solver="auto"`` for :func:`scoresolve.sample`: ``(solver, final, grid, gaussian_prior, nfe, calibration)``
    from the row of :data:`AUTO` for the budget (the caller's ``final`` and ``grid`` win); ``calibration`` is
    :func:`calibrated_trajectory` on a network (or with ``calibration_budget``, or ``calibrate={"method":
    "trajectory"}``), else the row's pattern search (:func:`scoresolve.calibrate.calibrated_run`), or ``None``.
    What runs is written to ``info["auto"]``."""
    if options:
        raise TypeError(f"unknown option(s) {sorted(options)} for solver 'auto'; it accepts: gaussian_prior, calibrate")
    if nfe is None:
        if steps is None:
            raise ValueError("solver='auto' needs an evaluation budget: pass nfe=")
        warnings.warn(f"solver='auto' takes its budget as nfe=; steps={steps} is read as nfe={steps}",
                      DeprecationWarning, stacklevel=3)
        nfe = steps if type(steps) is int and steps >= 1 else check_int(steps, "steps")  # check_int raises
    calibrate = True if calibrate is None else calibrate
    calibration, cache = (None, None) if calibrate is False else calibration_options(calibrate)
    fit = None if (isinstance(gaussian_prior, str) and not calibrate) else gaussian_prior  # nothing to estimate it from
    network = holds_network(model)
    fit = None if network and isinstance(fit, str) else fit  # a network's own moments (data_moments) still serve
    row = (network_recipe(nfe) if network and fit is None else None) or auto_recipe(nfe, gaussian=fit is not None)
    solver = row.instance
    final = row.final if final is None else final
    fit = fit if row.gaussian else None
    method = (calibration or {}).pop("method", None)
    if method not in (None, "trajectory", "pattern"):
        raise ValueError(f"calibrate={{'method': ...}} must be 'trajectory' or 'pattern', got {method!r}")
    grid = row.grid if grid is None else grid
    info["auto"] = {"class": type(solver).__name__, **row.options, "final": final,
                    "gaussian_prior": fit if fit is None or isinstance(fit, str) else fit.digest}
    if calibration is None:
        return solver, final, grid, fit, nfe, None
    if row.calibration is None and method != "trajectory":  # a row without calibration, unless asked by name
        if row in NETWORK:  # the reason is this table's; above 25 the rows of AUTO need no calibration anywhere
            info["calibration"] = {"method": None, "nfe": 0, "seconds": 0.0, "fallback": _UNCALIBRATED}
        return solver, final, grid, fit, nfe, None
    if method == "trajectory" or (method is None and (calibration_budget is not None or network)):
        opts = {"budget": 60.0 if calibration_budget is None else calibration_budget, **calibration}
        if isinstance(cache, (str, os.PathLike)):
            opts["cache"] = cache
        default = row if not row.gaussian else auto_recipe(nfe, gaussian=False)
        return solver, final, grid, fit, nfe, partial(calibrated_trajectory, options=opts, default=default)
    return solver, final, grid, fit, nfe, partial(calibrated_run, options={**row.calibration, **calibration},
                                                  cache=cache)


def calibrated_trajectory(score_fn: Callable[[Tensor, Tensor], Tensor], model: Any, sde: SDE, solver: GridSolver,
                          nfe: int, final: str, gaussian_prior: Any, shape: Sequence[int], eps: float,
                          dtype: torch.dtype, progress: bool | None, info: dict[str, Any], *,
                          options: dict[str, Any],
                          default: Recipe = NETWORK[0]) -> tuple[GridSolver, str, Tensor, None]:
    """``auto``'s calibration on a network, as :func:`scoresolve.sample` runs one (the signature of
    :func:`scoresolve.calibrate.calibrated_run`): the solver, final step and grid that
    :func:`scoresolve.calibrate_dp.calibrate_trajectory` chose among :func:`trajectory_candidates`, with the cost
    and the choice in ``info``. ``default`` is the uncalibrated recipe: the candidate kept unless clearly beaten
    (:func:`scoresolve.calibrate_dp.choose`), and what runs when the budget cannot pay."""
    cands = [c for c in trajectory_candidates() if _plannable(c.solver, nfe, c.final)]
    want = default.instance.config()
    label = next((f"{c.name}@{default.grid}" for c in cands if type(c.solver) is default.solver
                  and c.final == default.final and c.solver.config() == want), None)
    cg, cost = calibrate_trajectory(model, score_fn, sde, cands, nfe, shape=shape, eps=eps, dtype=dtype,
                                    progress=progress, default=label, data_range=getattr(model, "data_range", None),
                                    **options) if cands else (None, {"fallback": "budget < 2"})
    if cg is None:
        row = default
        solver = row.instance
        times = make_grid(row.grid, sde, plan(solver, nfe, row.final), eps)
        info["calibration"] = {"method": "trajectory-dp", **cost}
        info["auto"] = {"class": type(solver).__name__, **row.options, "final": row.final, "gaussian_prior": None}
        return solver, row.final, times, None
    cand = next(c for c in cands if c.name == cg.solver["name"])
    info["calibration"] = {"method": "trajectory-dp", **cost, "choice": cg.init, "rmse": cg.rmse,
                           "heldout_rmse": cg.extra.get("heldout_rmse"),
                           "heldout_moments": cg.extra.get("heldout_moments"), "fallback": None,
                           "test": cg.extra.get("choice")}
    info["auto"] = {"class": type(cand.solver).__name__, **cand.config(), "gaussian_prior": None}
    return cand.solver, cand.final, cg.grid, None


def _plannable(solver: GridSolver, nfe: int, final: str) -> bool:
    try:
        plan(solver, nfe, final)
    except ValueError:
        return False
    return True


@SOLVERS.register("auto", description="best measured few-step choice for the budget nfe=, calibrated grid, step to 0")
class Auto(Solver):
    """The registry's entry for ``solver="auto"``: :func:`scoresolve.sample` runs the row of :data:`AUTO` for the
    budget ``nfe=`` (options ``gaussian_prior=`` and ``calibrate=`` of :func:`scoresolve.sample`)."""

    order = 2.0
    reference = "Zhang & Chen 2023, iPNDM, arXiv:2204.13902; Zhao et al. 2023, UniPC, arXiv:2302.04867"
    default_grid = "karras"
    default_final = "zero"

    def solve(self, ctx: Any, x: Any) -> Any:
        raise TypeError("solver='auto' is a recipe resolved by scoresolve.sample: pass the name 'auto' and nfe=")
