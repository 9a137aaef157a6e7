"""scoresolve: sampling, likelihood and conditional generation for score-based diffusion models.

    import torch, scoresolve as ss
    sde = ss.VPSDE()
    x = ss.sample(score_fn, sde, solver="pc", steps=1000, shape=(64, 2),
                  generator=torch.Generator().manual_seed(0))

See ``ss.solvers()`` for the registered samplers.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import analytic, grid_io, solvers  # `solvers` is the subpackage; calling it lists the registered solvers
from . import io as io  # registers ScoreModel's file and Hub functions (from_pretrained, save_pretrained, ...)
from ._version import __version__ as __version__
from .likelihood import LikelihoodResult, likelihood  # eager: `ss.likelihood` must stay the function
from .models import ScoreModel, from_denoiser, from_eps, from_v, from_velocity, from_x0
from .registry import CORRECTORS, GRIDS, PREDICTORS, SOLVERS, UnknownNameError
from .sampling import SampleResult, sample
from .sde import SDE, VESDE, VPSDE, RectifiedFlow, SubVPSDE, resolution_shift
from .solvers.base import NonFiniteScoreError  # also registers every solver


def predictors() -> dict[str, str]:
    """Registered predictors of the ``pc`` solver."""
    return PREDICTORS.describe()


def correctors() -> dict[str, str]:
    """Registered correctors of the ``pc`` solver."""
    return CORRECTORS.describe()


class _Grids:
    """``ss.grids()`` lists the registered time grids; ``ss.grids.export(grid, sde, path)`` writes a grid as a
    sigma list (JSON or text) that diffusers, k-diffusion and ComfyUI take, ``ss.grids.import_(path)`` reads one
    (:mod:`scoresolve.grid_io`)."""

    def __call__(self) -> dict[str, str]:
        return GRIDS.describe()

    def __getattr__(self, name: str) -> Any:
        if name in ("export", "import_"):
            return getattr(grid_io, name)
        raise AttributeError(f"ss.grids has no attribute {name!r}; it has export and import_")


grids = _Grids()


# Names whose modules are imported on first use (optional parts, heavier imports).
_LAZY: dict[str, tuple[str, str]] = {
    "bpd_offset": ("scoresolve.likelihood", "bpd_offset"),
    "inpaint": ("scoresolve.conditional", "inpaint"),
    "linear_inverse": ("scoresolve.conditional", "linear_inverse"),
    "colorize": ("scoresolve.conditional", "colorize"),
    "guided": ("scoresolve.conditional", "guided"),
    "classifier_free": ("scoresolve.conditional", "classifier_free"),
    "calibrate_grid": ("scoresolve.calibrate", "calibrate_grid"),
    "CalibratedGrid": ("scoresolve.calibrate", "CalibratedGrid"),
    "CalibrationMismatchError": ("scoresolve.calibrate", "CalibrationMismatchError"),
    "gits_grid": ("scoresolve.calibrate", "gits_grid"),
    "load": ("scoresolve.io", "load"),
    "save": ("scoresolve.io", "save"),
    "save_pretrained": ("scoresolve.io", "save_pretrained"),
    "push_to_hub": ("scoresolve.io", "push_to_hub"),
    "from_diffusers": ("scoresolve.adapters.diffusers", "from_diffusers"),
    "ScoresolveScheduler": ("scoresolve.adapters.diffusers_scheduler", "ScoresolveScheduler"),
    "from_kdiffusion": ("scoresolve.adapters.kdiffusion", "from_kdiffusion"),
    "from_score_sde": ("scoresolve.adapters.score_sde", "from_score_sde"),
    "metrics": ("scoresolve.metrics", ""),
    "distributed": ("scoresolve.distributed", ""),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("scoresolve"):
                raise AttributeError(f"scoresolve.{name} is not available in this version") from e
            raise
        value = getattr(mod, attr) if attr else mod
        globals()[name] = value
        return value
    raise AttributeError(f"module 'scoresolve' has no attribute {name!r}")


__all__ = [
    "sample",
    "SampleResult",
    "likelihood",
    "LikelihoodResult",
    "SDE",
    "VESDE",
    "VPSDE",
    "SubVPSDE",
    "RectifiedFlow",
    "resolution_shift",
    "ScoreModel",
    "from_eps",
    "from_x0",
    "from_v",
    "from_velocity",
    "from_denoiser",
    "analytic",
    "solvers",
    "predictors",
    "correctors",
    "grids",
    "SOLVERS",
    "PREDICTORS",
    "CORRECTORS",
    "GRIDS",
    "UnknownNameError",
    "NonFiniteScoreError",
    *_LAZY,
]
