r"""``solver="auto"``: the best measured few-step deterministic sampler for an evaluation budget, as a table.

Each row of :data:`AUTO` gives, for a range of budgets ``nfe``, the solver and its options, how the run ends
(``final``), whether the first interval is the analytical Gaussian flow (``gaussian_prior="estimate"``: the
model's ``ScoreModel.data_moments``, else estimated during calibration), and the options of the grid
calibration (:func:`scoresolve.calibrate.calibrate_grid`, the solver's own endpoint error against a fine
teacher; ``None``: no calibration, the row's grid). On a network (a model holding a ``torch.nn.Module``) the
calibration is :mod:`scoresolve.calibrate_dp` instead: grids fitted for each of :func:`trajectory_candidates`
from one teacher run, the solver and grid chosen on held-out draws. A row marked ``gaussian`` applies only when a
Gaussian fit is available; otherwise the next row for that budget does. The measurements behind the table are in
docs/fast_samplers.md (``benchmarks/fewstep.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .calibrate_dp import Candidate
from .registry import SOLVERS
from .solvers.base import GridSolver, Solver
from .solvers.exponential import DPMSolverPP2M, UniPC
from .solvers.ipndm import IPNDM

__all__ = ["Recipe", "AUTO", "auto_recipe", "Auto", "trajectory_candidates"]

_GAUSS_FEW = {"n_samples": 256, "logp_tol": 2.0, "logp_cap": 1.5, "fd_weight": 16.0}


@dataclass(frozen=True)
class Recipe:
    """One row of the ``auto`` table: budgets ``lo..hi`` (inclusive) run ``solver(**options)``."""

    lo: int
    hi: int
    solver: type[GridSolver]
    options: dict[str, Any]
    final: str
    grid: str
    gaussian: bool = False
    calibration: dict[str, Any] | None = field(default=None)


_IPNDM = {"order": 4, "variable": False}
AUTO: tuple[Recipe, ...] = (
    Recipe(2, 6, IPNDM, _IPNDM, "tweedie", "karras", True, {"metric": "logp", **_GAUSS_FEW, "max_evals": 400}),
    Recipe(7, 15, UniPC, {"order": 2, "variant": "bh2"}, "zero", "karras", False,
           {"metric": "logp", "logp_tol": 1.0, "logp_cap": 1.25}),
    Recipe(16, 25, IPNDM, _IPNDM, "tweedie", "karras", True, {"metric": "logp", **_GAUSS_FEW}),
    Recipe(2, 25, IPNDM, _IPNDM, "zero", "karras", False, {"metric": "both"}),
    Recipe(26, 10**9, IPNDM, _IPNDM, "zero", "log_snr", False, None),
)


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
