"""Empirical convergence order of every registered deterministic fixed-grid solver, each declared variant.

Ground truth: the tight (rtol = atol = 1e-10) reference solution of the probability-flow ODE in
``tests/reference.py`` (4-D anisotropic mixture, under VP with the exact score and under the rectified-flow
interpolant with shift 3 and the exact velocity as a flow model), from the same prior noise, to the same final
time. The grid is uniform in log-SNR and the run stops at eps (``final="none"``), so only the solver's own
truncation error is measured. The slope of log2(RMSE) over the finest doubling of the steps must match the
declared order within ±0.3. The solvers come from the registry, filtered by their declarations: a new
solver is tested by registering it.
"""

from __future__ import annotations

import math

import pytest
from reference import (
    EPS,
    PROCESSES,
    deterministic_fixed_grid,
    intervals,
    model,
    problem,
    reference,
    registered,
    variants,
)

import scoresolve as ss
from scoresolve.sampling import resolve_solver


def steps_for(solver) -> list[int]:
    """Grid intervals: fine enough for the asymptotic regime (multistep solvers start at low order), coarse enough
    for the error to stay well above the reference's (a one-step method of 4 evaluations per step is
    accurate on few steps)."""
    n = 25 if solver.nfe_per_step >= 4 else 100
    return [n, 2 * n, 4 * n]


def empirical_order(name: str, opts: dict, process: str) -> tuple[float, list[float]]:
    gm, sde, x_T = problem(process)
    solver = resolve_solver(name, dict(opts))
    errs = []
    for n in steps_for(solver):
        res = ss.sample(model(process), sde, solver=solver, x_T=x_T, grid="log_snr", eps=EPS, final="none",
                        return_result=True, **intervals(solver, n))
        assert res.grid.numel() - 1 == n
        errs.append((res.samples - reference(process)).pow(2).mean().sqrt().item())
    return math.log2(errs[-2] / errs[-1]), errs


CONFIGS = variants(registered(deterministic_fixed_grid))


@pytest.mark.parametrize("process", list(PROCESSES))
@pytest.mark.parametrize("name,opts", CONFIGS, ids=[f"{n}-{o}" for n, o in CONFIGS])
def test_empirical_order_matches_declared(name, opts, process):
    declared = resolve_solver(name, dict(opts)).order
    slope, errs = empirical_order(name, opts, process)
    assert abs(slope - declared) <= 0.3, f"{name}{opts}: errors {errs}, slope {slope:.2f}, declared {declared}"


ADAPTIVE = [(n, o) for n, o in variants(registered(lambda c: c.adaptive and not c.stochastic))]


def adaptive_order(name: str, opts: dict) -> tuple[float, list[tuple[float, float]]]:
    """Slope of log error against log mean per-sample NFE between tolerances 1e-5 and 1e-7 (VP), and the points."""
    gm, sde, x_T = problem("vp")
    pts = []
    for tol in (1e-5, 1e-7):
        r = ss.sample(model("vp"), sde, solver=name, x_T=x_T, eps=EPS, final="none", rtol=tol, atol=tol,
                      return_result=True, **opts)
        nfe = float(r.info["nfe_per_sample"].double().mean()) if "nfe_per_sample" in r.info else float(r.nfe)
        pts.append((nfe, (r.samples - reference("vp")).pow(2).mean().sqrt().item()))
    return math.log(pts[0][1] / pts[1][1]) / math.log(pts[1][0] / pts[0][0]), pts


@pytest.mark.parametrize("name,opts", ADAPTIVE, ids=[f"{n}-{o}" for n, o in ADAPTIVE])
def test_adaptive_error_falls_at_least_at_the_declared_order(name, opts):
    """A deterministic adaptive solver: between tolerances 1e-5 and 1e-7 the error against the reference falls at
    least like NFE^-order (per-sample controllers place steps well and often do better)."""
    order = resolve_solver(name, dict(opts)).order
    slope, pts = adaptive_order(name, opts)
    assert slope >= order - 0.3, f"{name}{opts}: (NFE, error) {pts}, slope {slope:.2f}, declared {order}"
