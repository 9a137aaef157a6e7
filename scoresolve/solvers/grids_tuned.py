r"""Model-dependent time grids: ``"gits"`` and ``"calibrated"`` (registered in ``GRIDS``).

Both need the model (and ``"calibrated"`` the solver), which a plain grid function does not receive
from :func:`scoresolve.sample`. Use them through:

- ``ss.sample(model, sde, solver="ipndm", steps=5, calibrate=True)`` (any budgeted solver; or
  ``calibrate="grid.json"`` to cache), or ``solver="auto"``;
- :func:`scoresolve.calibrate.calibrate_grid` / :func:`scoresolve.calibrate.gits_grid`, then
  ``sample(..., grid=result)``;
- ``make_grid("calibrated", sde, n, eps, model=..., solver=..., shape=...)`` directly.

Without ``model=`` they raise an error that says so.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..registry import GRIDS
from ..sde import SDE

__all__ = ["grid_gits", "grid_calibrated"]


def _need(name: str, what: str) -> ValueError:
    return ValueError(
        f"grid={name!r} is model-dependent and needs {what}: pass calibrate=True to a budgeted solver "
        "(e.g. ss.sample(model, sde, solver='ipndm', steps=5, calibrate=True)), use solver='auto', or call "
        f"scoresolve.calibrate.{'gits_grid' if name == 'gits' else 'calibrate_grid'}(...) and pass grid=<result>"
    )


@GRIDS.register("gits", description="GITS: dynamic programming over teacher trajectories (needs model=)")
def grid_gits(sde: SDE, n: int, eps: float, *, model: Any = None, shape: Any = None, **options: Any) -> Tensor:
    """GITS grid of ``n`` intervals (Chen et al. 2024, arXiv:2405.11326); see
    :func:`scoresolve.calibrate.gits_grid`."""
    if model is None:
        raise _need("gits", "model=")
    from ..calibrate import gits_grid

    return gits_grid(model, sde, n, shape=shape, eps=eps, **options)[0]


@GRIDS.register("calibrated", description="grid calibrated for a model, solver and budget (needs model=, solver=)")
def grid_calibrated(
    sde: SDE, n: int, eps: float, *, model: Any = None, solver: Any = None, shape: Any = None, **options: Any
) -> Tensor:
    """Grid of ``n`` intervals calibrated for ``model`` and ``solver``; see
    :func:`scoresolve.calibrate.calibrate_grid` (``n`` intervals = the solver's budget mapped back)."""
    if model is None or solver is None:
        raise _need("calibrated", "model= and solver=")
    from ..calibrate import calibrate_grid
    from ..sampling import resolve_solver

    s = resolve_solver(solver, {}) if isinstance(solver, str) else solver
    return calibrate_grid(model, sde, s, s.nfe_for(n), shape=shape, eps=eps, **options).grid


# marker read by callers that build every registered grid without a model (they should skip these)
grid_gits.needs_model = True  # type: ignore[attr-defined]
grid_calibrated.needs_model = True  # type: ignore[attr-defined]
