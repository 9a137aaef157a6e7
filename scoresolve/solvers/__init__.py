"""Solvers, predictors, correctors and time grids.

Every module in this package is imported here, so a new solver is one file with one
``@SOLVERS.register("name")``: nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import types

from ..noise import NoiseSource
from .base import CountedScore, GridSolver, NonFiniteScoreError, SolveContext, Solver

__all__ = ["Solver", "GridSolver", "SolveContext", "NoiseSource", "CountedScore", "NonFiniteScoreError"]

for _m in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _m.startswith("_"):
        importlib.import_module(f"{__name__}.{_m}")

# after every solver is registered: the aliases check their targets against the registry when imported
from ..aliases import describe  # noqa: E402
from ..registry import SOLVERS  # noqa: E402


class _SolversModule(types.ModuleType):
    """``scoresolve.solvers`` is both this package and, called, the listing ``ss.solvers()``."""

    def __call__(self) -> dict[str, str]:
        """Registered solvers, then the familiar aliases (``scoresolve.aliases``): ``{name: one-line description}``."""
        return {**SOLVERS.describe(), **describe()}


sys.modules[__name__].__class__ = _SolversModule
