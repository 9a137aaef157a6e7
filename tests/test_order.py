"""Empirical convergence order of the budgeted few-step ODE solvers on a fixed grid.

Ground truth: a tight (rtol = atol = 1e-10) dopri5 solution of the probability-flow ODE of an exact
Gaussian mixture (4-D anisotropic, under VP and under the rectified-flow interpolant with SD3's shift 3,
there with the mixture's exact velocity as a flow model), from the same prior noise, to the same final time. The
grid is uniform in log-SNR and the run stops at eps (``final="none"``) so only the solver's own
truncation error is measured. The slope of log2(RMSE) between K = 200 and 400 steps must match the
declared order within ±0.3.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torchdiffeq import odeint

import scoresolve as ss
from scoresolve.sampling import resolve_solver

# (registry name, options) of every budgeted fixed-grid solver configuration we declare an order for
CONFIGS = [
    ("dpm_solver", {"order": 1}),
    ("dpm_solver", {"order": 2}),
    ("dpm_solver", {"order": 3}),
    ("dpm_solver", {"order": 2, "method": "singlestep"}),
    ("dpm_solver", {"order": 3, "method": "singlestep"}),
    ("dpmpp_2m", {}),
    ("dpmpp_3m", {}),
    ("ipndm", {}),
    ("ipndm", {"order": 2}),
    ("ipndm", {"order": 3}),
    ("unipc", {}),
    ("unipc", {"variant": "bh1"}),
    ("heun_edm", {}),
]

EPS = 1e-3
PROCESSES = {"vp": ss.VPSDE(), "flow": ss.RectifiedFlow(shift=3.0)}


@functools.cache
def _problem(process: str = "vp"):
    torch.manual_seed(0)
    gm = ss.analytic.anisotropic(dim=4, n_components=3, seed=0)
    sde = PROCESSES[process]
    x_T = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return gm, sde, x_T


def _model(process: str):
    """The exact score under VP; the exact velocity as a flow model (``from_velocity``) under the flow process."""
    gm, sde, _ = _problem(process)
    return gm.velocity_model(sde) if process == "flow" else (lambda x, t: gm.score(x, t, sde))


def reference_solution(score, sde, x_T, eps, rtol=1e-10):
    """PF-ODE solution at ``eps`` from ``x_T`` at ``T``: dy/dλ = D - y in y = x/α (dopri5, float64)."""
    f64 = functools.partial(torch.tensor, dtype=torch.float64)
    lam0, lam1 = float(sde.log_snr(f64(sde.T))), float(sde.log_snr(f64(eps)))

    def f(lam, y):
        t = sde.t_from_log_snr(lam.reshape(1)).expand(y.shape[0])
        a = sde.alpha(t).reshape(-1, *([1] * (y.ndim - 1)))
        s = torch.exp(-lam)
        return s * s * a * score(a * y, t)  # D - y

    y0 = x_T / sde.alpha(f64(sde.T))
    y1 = odeint(f, y0, f64([lam0, lam1]), rtol=rtol, atol=rtol, method="dopri5")[-1]
    return y1 * sde.alpha(f64(eps))


@functools.cache
def _reference(process: str = "vp"):
    gm, sde, x_T = _problem(process)
    return reference_solution(lambda x, t: gm.score(x, t, sde), sde, x_T, EPS)


@pytest.mark.parametrize("process", list(PROCESSES))
@pytest.mark.parametrize("name,opts", CONFIGS, ids=[f"{n}-{o}" for n, o in CONFIGS])
def test_empirical_order_matches_declared(name, opts, process):
    gm, sde, x_T = _problem(process)
    model = _model(process)
    ref = _reference(process)
    solver = resolve_solver(name, dict(opts))
    errs = []
    ks = [100, 200, 400] if solver.nfe_per_step == 1 else [201, 401, 801]
    for k in ks:
        res = ss.sample(model, sde, solver=solver, nfe=k, x_T=x_T, grid="log_snr",
                        eps=EPS, return_result=True)
        assert res.nfe == k
        errs.append((res.samples - ref).pow(2).mean().sqrt().item())
    slopes = [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]
    slope = slopes[-1]  # the finest pair: the asymptotic regime
    assert abs(slope - solver.order) <= 0.3, f"{name}{opts}: errors {errs}, slopes {slopes}, declared {solver.order}"
