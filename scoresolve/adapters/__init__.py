"""Adapters to other people's diffusion code: diffusers, k-diffusion and the official score_sde checkpoints.

Each adapter turns a foreign model into a :class:`scoresolve.ScoreModel` (right SDE, time convention and
parameterisation, through the conversions of :mod:`scoresolve.models`), and the reverse direction lets
scoresolve's solvers be called from the foreign code. Optional packages are imported lazily, inside the
functions that need them: ``import scoresolve.adapters`` imports neither diffusers nor k-diffusion.

- :mod:`scoresolve.adapters.kdiffusion`: :func:`from_kdiffusion` (a denoiser ``D(x, sigma)``), and
  :func:`sample_scoresolve` / ``sample_<solver>`` with k-diffusion's ``sample_*(model, x, sigmas, ...)``
  convention.
- :mod:`scoresolve.adapters.diffusers`: :func:`from_diffusers` (``UNet2DModel``, pipeline, local folder or Hub
  id), :func:`sample_pipeline` (a drop-in for ``pipe(...)``).
- :mod:`scoresolve.adapters.score_sde`: :func:`load_score_sde_checkpoint` for ``checkpoint_*.pth`` files, with
  our own NCSN++ / DDPM++ (:mod:`scoresolve.adapters.ncsnpp`).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "from_kdiffusion": "scoresolve.adapters.kdiffusion",
    "sample_scoresolve": "scoresolve.adapters.kdiffusion",
    "kdiffusion_sampler": "scoresolve.adapters.kdiffusion",
    "from_diffusers": "scoresolve.adapters.diffusers",
    "sample_pipeline": "scoresolve.adapters.diffusers",
    "DiscreteTimeMap": "scoresolve.adapters.diffusers",
    "load_score_sde_checkpoint": "scoresolve.adapters.score_sde",
    "from_score_sde": "scoresolve.adapters.score_sde",
    "NCSNpp": "scoresolve.adapters.ncsnpp",
    "DDPMpp": "scoresolve.adapters.ddpmpp",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'scoresolve.adapters' has no attribute {name!r}")
