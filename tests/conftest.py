"""Shared fixtures: SDEs, analytic problems and cached Fréchet-distance floors."""

from __future__ import annotations

import functools
import os
import tempfile

import pytest
import torch

import scoresolve as ss
from scoresolve.metrics import frechet_floor

# progress bars are shown by default (scoresolve.progress); the suite's output stays readable without them
# (subprocesses inherit this; tests of the bars pass progress=True)
os.environ.setdefault("SCORESOLVE_PROGRESS", "0")
# solver="auto" on a network caches its calibration in a file keyed by the weights: never in the user's home
os.environ.setdefault("SCORESOLVE_CALIBRATION_CACHE", tempfile.mkdtemp(prefix="scoresolve-calibration-"))

SDES = {
    "ve": lambda: ss.VESDE(sigma_min=0.01, sigma_max=50.0),
    "vp": lambda: ss.VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": lambda: ss.SubVPSDE(beta_min=0.1, beta_max=20.0),
}


@pytest.fixture(params=sorted(SDES))
def any_sde(request):
    return SDES[request.param]()


@functools.cache
def exact_floor(problem: str, n: int, draws: int = 50) -> float:
    """Mean FD of `draws` exact samples of size n against the exact moments (cached per session)."""
    gm = getattr(ss.analytic, problem)()
    mean, cov = gm.moments()
    return frechet_floor(lambda k, g: gm.sample(k, g), mean, cov, n, draws=draws)[0]


@pytest.fixture(autouse=True)
def _threads():
    # one thread: deterministic, and tiny tensor ops are many times faster than with 2 threads on a
    # loaded 2-core machine
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
