"""Budgeted few-step ODE solvers: exact budgets, every SDE, no NaN, low-precision outputs, bad input."""

from __future__ import annotations

import pytest
import torch
from reference import registered

import scoresolve as ss
from scoresolve.sampling import resolve_solver
from scoresolve.solvers.coefficients import lagrange_integral_weights

SDES = {
    "ve": lambda: ss.VESDE(sigma_min=0.01, sigma_max=50.0),
    "vp": lambda: ss.VPSDE(),
    "subvp": lambda: ss.SubVPSDE(),
}
ONE_EVAL = [
    ("dpm_solver", {"order": 1}),
    ("dpm_solver", {"order": 2}),
    ("dpm_solver", {"order": 3}),
    ("dpm_solver", {"order": 3, "method": "singlestep"}),
    ("dpmpp_2m", {}),
    ("dpmpp_3m", {}),
    ("ipndm", {}),
    ("ipndm", {"variable": False}),
    ("unipc", {}),
]


def _problem(sde_name):
    gm = ss.analytic.anisotropic(dim=4, n_components=3, seed=1)
    sde = SDES[sde_name]()
    return gm, sde, (lambda x, t: gm.score(x, t, sde))


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("name,opts", ONE_EVAL, ids=[f"{n}-{o}" for n, o in ONE_EVAL])
def test_exact_budget_and_finite(sde_name, name, opts):
    gm, sde, score = _problem(sde_name)
    g = torch.Generator().manual_seed(0)
    for last_step in ("none", "zero", "tweedie"):
        for k in (1, 2, 3, 5, 8):
            if k == 1 and last_step != "none":
                with pytest.raises(ValueError, match="final"):
                    ss.sample(score, sde, solver=name, nfe=k, shape=(4, 4), final=last_step, **opts)
                continue
            res = ss.sample(score, sde, solver=name, nfe=k, shape=(16, 4), generator=g, final=last_step,
                            return_result=True, **opts)
            assert res.nfe == k, (name, opts, last_step, k, res.nfe)
            assert torch.isfinite(res.samples).all()
    # at 20 evaluations every solver lands near the exact PF-ODE solution (here: ipndm at 400)
    x_T = sde.prior_sample((16, 4), generator=torch.Generator().manual_seed(3))
    ref = ss.sample(score, sde, solver="ipndm", nfe=400, x_T=x_T, grid="log_snr", final="zero")
    out = ss.sample(score, sde, solver=name, nfe=20, x_T=x_T, grid="log_snr", final="zero", **opts)
    rmse = (out - ref).pow(2).mean().sqrt().item()
    assert rmse < 0.25, rmse  # data spread ~2: a blow-up or a wrong formula lands far above


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_heun_budget(sde_name):
    gm, sde, score = _problem(sde_name)
    for k in (1, 3, 5, 9):
        res = ss.sample(score, sde, solver="heun_edm", nfe=k, shape=(8, 4), return_result=True,
                        generator=torch.Generator().manual_seed(0))
        assert res.nfe == k and torch.isfinite(res.samples).all()
    for k in (2, 4, 10):  # even budgets: the last step is Euler (2n - 1 evaluations), so k - 1
        res = ss.sample(score, sde, solver="heun_edm", nfe=k, shape=(8, 4), return_result=True)
        assert res.nfe == k - 1
    # churn is stochastic and reproducible from the generator
    a = ss.sample(score, sde, solver="heun_edm", nfe=9, shape=(8, 4), s_churn=10.0,
                  generator=torch.Generator().manual_seed(1))
    b = ss.sample(score, sde, solver="heun_edm", nfe=9, shape=(8, 4), s_churn=10.0,
                  generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.isfinite(a).all()


#: the deterministic solvers that take an evaluation budget (``budgeted``), from the registry
BUDGETED = registered(lambda c: getattr(c, "budgeted", False) and not c.stochastic)


@pytest.mark.parametrize("name", [*BUDGETED, "auto"])
def test_no_nan_at_large_budgets(name):
    gm, sde, score = _problem("vp")
    for k in (999, 1000):
        res = ss.sample(score, sde, solver=name, nfe=k, shape=(2, 4), return_result=True,
                        generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(res.samples).all()
        assert res.nfe <= k


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", BUDGETED)
def test_low_precision_model_outputs(name, half):
    gm = ss.analytic.anisotropic(dim=4, n_components=3, seed=1)
    for sde in (ss.VPSDE(), ss.VESDE(sigma_min=0.01, sigma_max=50.0)):
        def score(x, t, sde=sde):
            return gm.score(x.to(half).double(), t.double(), sde).to(half)

        x_T = sde.prior_sample((16, 4), generator=torch.Generator().manual_seed(0))
        ref = ss.sample(lambda x, t, sde=sde: gm.score(x, t, sde), sde, solver=name, nfe=10, x_T=x_T.double())
        for dtype in (torch.float32, half):
            out = ss.sample(score, sde, solver=name, nfe=10, x_T=x_T.to(dtype))
            assert out.dtype == dtype and torch.isfinite(out).all()
            err = (out.double() - ref).abs()
            # half-precision rounding of x ~ 50 (VE) can move a trajectory to another mode: judge the
            # median (rounding noise) and the maximum (no blow-up)
            assert err.median() < 0.05 and err.max() < 8, (sde, dtype, err.median(), err.max())


def test_solver_object_is_stateless_between_runs():
    gm, sde, score = _problem("vp")
    solver = resolve_solver("dpmpp_3m", {})
    x_T = sde.prior_sample((8, 4), generator=torch.Generator().manual_seed(0))
    a = ss.sample(score, sde, solver=solver, nfe=7, x_T=x_T)
    ss.sample(score, sde, solver=solver, nfe=5, x_T=x_T * 0.5)
    b = ss.sample(score, sde, solver=solver, nfe=7, x_T=x_T)
    assert torch.equal(a, b)


def test_bad_input_names_the_argument():
    gm, sde, score = _problem("vp")
    with pytest.raises(ValueError, match="order"):
        ss.sample(score, sde, solver="dpm_solver", nfe=5, shape=(2, 4), order=4)
    with pytest.raises(ValueError, match="final"):
        ss.sample(score, sde, solver="ipndm", nfe=5, shape=(2, 4), final="final")
    with pytest.raises(ValueError, match="variant"):
        ss.sample(score, sde, solver="unipc", nfe=5, shape=(2, 4), variant="bh3")
    with pytest.raises(ValueError, match="grid"):
        ss.sample(score, sde, solver="ipndm", nfe=5, shape=(2, 4), grid="karas")
    with pytest.raises(ValueError, match="decreasing"):
        ss.sample(score, sde, solver="ipndm", shape=(2, 4), grid=[1.0, 0.5, 0.6, 0.1])
    with pytest.raises(ValueError, match="nfe"):
        ss.sample(score, sde, solver="dpmpp_2m", nfe=0, shape=(2, 4))


def test_declarations():
    for name in ("dpm_solver", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm", "heun_edm"):
        s = resolve_solver(name, {})
        assert s.default_final == "none" and not s.stochastic and not s.adaptive
        assert "arXiv" in s.reference


def test_coefficient_helpers():
    # Lagrange weights integrate polynomials of degree k-1 exactly
    nodes = [0.0, 0.3, 0.7, 1.2]
    w = lagrange_integral_weights(nodes, 0.0, -0.5)
    for p in range(4):
        exact = ((-0.5) ** (p + 1)) / (p + 1)
        assert abs(sum(wi * n**p for wi, n in zip(w, nodes, strict=True)) - exact) < 1e-12


# --- analytical first step (gaussian_prior) --------------------------------------------------------
def test_gaussian_flow_is_the_exact_pf_ode_of_a_gaussian():
    """For Gaussian data the first step is exact: compare with a 400-step 4th-order teacher
    (global error ~1e-9 on this smooth problem) from T to an intermediate time."""
    from scoresolve.calibrate import teacher_solution
    from scoresolve.gaussian import GaussianFit

    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64)
    cov = A @ A.T / 4 + 0.01 * torch.eye(4, dtype=torch.float64)
    mean = torch.randn(4, generator=g, dtype=torch.float64)
    gm = ss.analytic.gaussian(mean, cov)
    for sde in (ss.VPSDE(), ss.VESDE(sigma_min=0.01, sigma_max=50.0)):
        x_T = sde.prior_sample((64, 4), generator=g, dtype=torch.float64)
        t1 = 0.3
        ref, _ = teacher_solution(gm.score_model(sde), sde, x_T, t1, to_zero=False, steps=400)
        s0 = float(sde.sigma(torch.tensor(sde.T, dtype=torch.float64)))
        s1 = float(sde.sigma(torch.tensor(t1, dtype=torch.float64)))
        a0 = float(sde.alpha(torch.tensor(sde.T, dtype=torch.float64)))
        a1 = float(sde.alpha(torch.tensor(t1, dtype=torch.float64)))
        for fit in (GaussianFit(mean, cov), GaussianFit(mean.reshape(1, 4), cov)):
            y1, _ = fit.flow(x_T / a0, s0, s1)
            assert torch.allclose(y1 * a1, ref, atol=1e-6)
        # diagonal form agrees with the full form on a diagonal covariance
        d = torch.rand(4, generator=g, dtype=torch.float64) + 0.1
        yd, dd = GaussianFit(mean, d).flow(x_T, s0, s1)
        yf, df = GaussianFit(mean, torch.diag(d)).flow(x_T, s0, s1)
        assert torch.allclose(yd, yf, atol=1e-10) and torch.allclose(dd, df, atol=1e-10)


@pytest.mark.parametrize("name", ["ipndm", "dpmpp_2m", "unipc", "dpm_solver"])
@pytest.mark.parametrize("last_step", ["none", "zero", "tweedie"])
def test_gaussian_prior_keeps_the_exact_budget(name, last_step):
    gm, sde, score = _problem("vp")
    mean, cov = gm.moments()
    for k in (1, 2, 5):
        res = ss.sample(score, sde, solver=name, nfe=k, shape=(16, 4), final=last_step,
                        gaussian_prior=(mean, cov), generator=torch.Generator().manual_seed(0), return_result=True)
        assert res.nfe == k and torch.isfinite(res.samples).all()
        assert res.grid.numel() - 1 == k + (1 if last_step == "none" else 0)  # one interval more, taken analytically


def test_gaussian_first_step_helps_on_a_mixture():
    """Same noise, same budget, Karras grid: the analytical first step frees the evaluation at T.
    Deterministic comparison against a tight reference (no statistical tolerance involved)."""
    from scoresolve.calibrate import teacher_solution

    gm, sde, score = _problem("vp")
    mean, cov = gm.moments()
    x_T = sde.prior_sample((256, 4), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref, _ = teacher_solution(score, sde, x_T, sde.default_eps, to_zero=True, steps=200)
    errs = {}
    for gp in (None, (mean, cov)):
        out = ss.sample(score, sde, solver="ipndm", nfe=6, x_T=x_T, final="zero", gaussian_prior=gp)
        errs[gp is None] = float((out - ref).pow(2).mean().sqrt())
    assert errs[False] < 0.95 * errs[True], errs  # 0.347 vs 0.381 when written


def test_gaussian_prior_bad_input():
    from scoresolve.gaussian import GaussianFit

    with pytest.raises(ValueError, match="gaussian_prior"):
        GaussianFit(torch.zeros(3), torch.ones(3, 4))
    with pytest.raises(ValueError, match="gaussian_prior"):
        GaussianFit(torch.zeros(3), torch.ones(4))
    with pytest.raises(ValueError, match="positive semi-definite"):
        GaussianFit(torch.zeros(2), torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    gm, sde, score = _problem("vp")
    with pytest.raises(TypeError, match="gaussian_prior"):
        ss.sample(score, sde, solver="ipndm", nfe=3, shape=(4, 4), gaussian_prior=torch.zeros(3))
    with pytest.raises(ValueError, match="singlestep"):
        ss.sample(score, sde, solver="dpm_solver", nfe=3, shape=(4, 4), method="singlestep",
                  gaussian_prior=(torch.zeros(4), 1.0))
    with pytest.raises(ValueError, match="dimension"):
        ss.sample(score, sde, solver="ipndm", nfe=3, shape=(4, 4), gaussian_prior=(torch.zeros(5), 1.0))
    # the moments are identified by their digest (calibration fingerprints)
    assert GaussianFit(torch.zeros(4), 1.0).digest != GaussianFit(torch.zeros(4), 2.0).digest
