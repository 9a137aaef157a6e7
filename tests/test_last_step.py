"""The final step onto sigma = 0 of the budgeted solvers (``final="zero"``).

Returning the denoiser at sigma_min (Tweedie, the peers' jump, ``final="tweedie"``) scales a data
direction of variance v by sqrt(v / (v + sigma_min^2)) whatever the budget, so the mean log-density of the
samples stops converging; ``"zero"`` is an Adams-Bashforth step of dy/dsigma = (y - D)/sigma onto 0 through
directions kept at nodes spaced >= sqrt(2) apart in sigma (``finish.Tail``), which converges with the budget
and does not amplify a low-precision model's rounding on fine grids. Ground truth: a Gaussian with thin
directions, whose exact PF-ODE endpoint under VE is x0 = sqrt(C) (C + sigma_T^2 I)^(-1/2) x_T.
"""

import math

import pytest
import torch

import scoresolve as ss
from scoresolve.solvers.coefficients import lagrange_integral_weights
from scoresolve.solvers.finish import TAIL_RATIO, Tail

SOLVERS = ["unipc", "dpmpp_3m", "dpmpp_2m", "dpm_solver", "ipndm"]


def _problem():
    d = 8
    var = torch.logspace(-3, 0, d, dtype=torch.float64)  # thin directions down to std 0.03 (3 sigma_min)
    gm = ss.analytic.gaussian(torch.zeros(d, dtype=torch.float64), torch.diag(var))
    sde = ss.VESDE(sigma_min=0.01, sigma_max=50.0)
    x_T = sde.prior_sample((256, d), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = x_T * (var / (var + sde.sigma_max**2)).sqrt()
    return gm, sde, x_T, exact


@pytest.mark.parametrize("name", [n for n in SOLVERS if n != "ipndm"])
def test_zero_step_converges_where_tweedie_does_not(name):
    gm, sde, x_T, exact = _problem()
    score = gm.score_model(sde)
    lp_exact = gm.log_prob(exact).mean()
    gaps = {}
    for last in ("zero", "tweedie"):
        res = ss.sample(score, sde, solver=name, nfe=100, grid="log_snr", x_T=x_T, final=last,
                        return_result=True)
        assert res.nfe == 100
        gaps[last] = float(gm.log_prob(res.samples).mean() - lp_exact)
    # Tweedie at sigma_min = 0.01 over-concentrates the thin directions: +0.07 nats at 50, 100 and 200 steps
    # (it does not shrink with the budget); the Adams jump is at |0.002| from 100 steps (measured)
    assert gaps["tweedie"] > 0.06, gaps
    assert abs(gaps["zero"]) < 0.01, gaps


def test_tail_nodes_are_spread_on_fine_grids():
    gm, sde, x_T, _ = _problem()
    s_all = sde.sigma(ss.solvers.grids.make_grid("log_snr", sde, 999, sde.default_eps)).tolist()
    idx = Tail(s_all).idx
    assert idx[0] == 999 and len(idx) == 4
    sig = [s_all[i] for i in idx]
    assert all(b >= TAIL_RATIO * a for a, b in zip(sig, sig[1:], strict=False))
    # bounded weights: the jump's weights relative to its length sigma_N stay O(10) (measured 13.9), where the
    # last four consecutive nodes of this grid give ~1e4
    w = lagrange_integral_weights(sig, sig[0], 0.0)
    assert sum(abs(x) for x in w) < 20 * sig[0]
    consecutive = [s_all[i] for i in range(999, 995, -1)]
    assert sum(abs(x) for x in lagrange_integral_weights(consecutive, sig[0], 0.0)) > 1000 * sig[0]
    # a coarse grid keeps the last consecutive points
    assert Tail(sde.sigma(ss.solvers.grids.make_grid("log_snr", sde, 5, sde.default_eps)).tolist()).idx == (5, 4, 3, 2)


@pytest.mark.parametrize("name", SOLVERS)
def test_fine_grid_with_bfloat16_model_outputs(name):
    # 1000 steps with a bfloat16 model: the jump to 0 must not amplify the rounding (consecutive nodes of this
    # grid gave iPNDM -740 nats and RMSE 0.45; the Tweedie jump is the reference for what rounding alone costs)
    gm, sde, x_T, exact = _problem()
    score = gm.score_model(sde)

    def bf16(x, t):
        return score(x, t).to(torch.bfloat16).to(x.dtype)

    lp_exact = gm.log_prob(exact).mean()
    x = ss.sample(bf16, sde, solver=name, nfe=1000, grid="log_snr", x_T=x_T.float(), final="zero").double()
    assert torch.isfinite(x).all()
    rmse = float((x - exact).pow(2).mean().sqrt())
    gap = float(gm.log_prob(x).mean() - lp_exact)
    assert rmse < 5e-4, rmse  # measured 1.3e-4-1.4e-4 (Tweedie: 6.8e-4)
    assert abs(gap) < 0.01, gap  # measured -0.002
    assert math.isfinite(gap)
