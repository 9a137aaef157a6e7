"""Weak convergence of every registered stochastic solver, against the exact moments of a Gaussian.

Ground truth: the mean and covariance of the marginal at eps of a correlated 2-D Gaussian under VP
(``tests/reference.py``), closed form. 40,000 samples per run: the moments' Monte-Carlo error (~0.01) is well
below the biases measured at 16 steps. A solver's weak order is at least its declared (strong) order, so the
error must fall at least like steps^-order from 16 to 64 grid intervals (uniform grid, no final step). ``pc`` is
run with its predictor alone: the Langevin corrector's bias is set by its ``snr``, not by the step, so with it the
error does not fall with the steps at all. The adaptive ``gotta_go_fast`` is measured against its evaluations,
from rtol 1 to 0.25. The solvers come from the registry, filtered by their declarations.
"""

from __future__ import annotations

import math

import pytest
import torch
from reference import gaussian, intervals, moment_error, registered, stochastic

import scoresolve as ss
from scoresolve.registry import SOLVERS

N = 40_000
OPTIONS = {"pc": {"corrector": "none"}}


def weak_order(name: str) -> tuple[float, list[float]]:
    """Slope of log2(moment error) per doubling of the steps from 16 to 64 intervals, and the two errors."""
    model, sde, _, _ = gaussian()
    solver = SOLVERS.get(name)(**OPTIONS.get(name, {}))
    errs = [moment_error(ss.sample(model, sde, solver=solver, shape=(N, 2), grid="uniform", final="none",
                                   generator=torch.Generator().manual_seed(n), **intervals(solver, n)))
            for n in (16, 64)]
    return math.log2(errs[0] / errs[1]) / 2, errs


def adaptive_weak_order(name: str) -> tuple[float, list[tuple[int, float]]]:
    """Slope of log moment error against log NFE from rtol 1 to 0.25, and the (NFE, error) points."""
    model, sde, _, _ = gaussian()
    pts = []
    for rtol in (1.0, 0.25):
        r = ss.sample(model, sde, solver=name, rtol=rtol, shape=(N, 2), final="none", return_result=True,
                      generator=torch.Generator().manual_seed(3))
        pts.append((r.nfe, moment_error(r.samples)))
    return math.log(pts[0][1] / pts[1][1]) / math.log(pts[1][0] / pts[0][0]), pts


@pytest.mark.parametrize("name", registered(lambda c: stochastic(c) and not c.adaptive))
def test_weak_error_falls_at_least_at_the_declared_order(name):
    order = SOLVERS.get(name)(**OPTIONS.get(name, {})).order
    slope, errs = weak_order(name)
    assert slope >= order - 0.3, f"{name}: moment errors {errs} at 16 and 64 steps, slope {slope:.2f}, declared {order}"


@pytest.mark.parametrize("name", registered(lambda c: stochastic(c) and c.adaptive))
def test_adaptive_weak_error_falls_with_the_evaluations(name):
    order = SOLVERS.get(name)().order
    slope, pts = adaptive_weak_order(name)
    assert slope >= order - 0.3, f"{name}: (NFE, moment error) {pts}, slope {slope:.2f}, declared {order}"
