"""Fast stochastic samplers: SDE-DPM-Solver++ (scoresolve/solvers/sde_dpmpp.py) and the adaptive
Gotta Go Fast solver (scoresolve/solvers/gotta_go_fast.py), against analytic Gaussian mixtures.

Ground truth: the exact moments and mode weights of the mixture; tolerances are derived from the
sample size (z-scores of sample means / proportions) plus a stated discretisation allowance.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import SDES

import scoresolve as ss
from scoresolve.metrics import mode_weights
from scoresolve.solvers.coefficients import phi_integrals
from scoresolve.solvers.sde_dpmpp import SDEDPMSolverPP2M


@pytest.fixture(autouse=True)
def _one_thread():
    # these tests make thousands of tiny tensor ops: on a loaded 2-core machine two intra-op threads
    # spin-wait on each other (einsum/softmax at 10-20 ms a call); one thread is ~50x faster
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# A 2-D mixture of three well-separated modes with unequal weights: mode weights are a sharp test of
# the stochastic part (an ODE-like or over-damped sampler still finds the modes, but a wrong noise
# level shifts the within-mode spread).
MIX = ss.analytic.GaussianMixture(
    [0.2, 0.3, 0.5],
    torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]]),
    torch.stack([torch.diag(torch.tensor([0.3, 0.1])), torch.diag(torch.tensor([0.05, 0.4])), 0.2 * torch.eye(2)]),
    name="three_modes",
)


def _check_distribution(x: torch.Tensor, gm: ss.analytic.GaussianMixture, bias: float) -> None:
    """Mode weights, mean and per-coordinate variance of samples ``x`` against the exact values.

    Each statistic must lie within 4.5 standard errors (from the sample size; family-wise false alarm
    below 1e-3 for the ~10 checks) plus ``bias``, the discretisation allowance of the solver.
    """
    n = x.shape[0]
    xd = x.double().reshape(n, -1)
    assert torch.isfinite(xd).all()
    w = mode_weights(gm.labels(xd), gm.n_components)
    ref = gm.weights
    se_w = (ref * (1 - ref) / n).sqrt()
    assert ((w - ref).abs() <= 4.5 * se_w + bias).all(), f"mode weights {w.tolist()} vs {ref.tolist()}"
    mean, cov = gm.moments()
    var = torch.diagonal(cov)
    se_m = (var / n).sqrt()
    assert ((xd.mean(0) - mean).abs() <= 4.5 * se_m + bias).all(), f"mean {xd.mean(0).tolist()} vs {mean.tolist()}"
    # variance of the sample variance: (m4 - var²)/n; bound m4 by the exact samples' kurtosis
    ex = gm.sample(20_000, torch.Generator().manual_seed(99), dtype=torch.float64).reshape(20_000, -1)
    m4 = ((ex - mean) ** 4).mean(0)
    se_v = ((m4 - var**2) / n).sqrt()
    assert ((xd.var(0) - var).abs() <= 4.5 * se_v + bias * var.sqrt() * 2).all(), (
        f"variance {xd.var(0).tolist()} vs {var.tolist()}"
    )


# --------------------------------------------------------------------------------------------------
# SDE-DPM-Solver++


def test_phi_integrals_against_quadrature():
    for h in (1e-6, 1e-4, 1e-3, 0.05, 0.7, 3.0):
        for eta in (0.0, 0.5, 1.0):
            c = 1 + eta
            u = torch.linspace(0, h, 20_001, dtype=torch.float64)
            wgt = c * torch.exp(-c * (h - u))
            ref = [float(torch.trapezoid(wgt * u**k, u)) for k in range(3)]
            got = phi_integrals(h, eta)
            for k in range(3):
                assert got[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-300), (h, eta, k)


@pytest.mark.parametrize("solver", ["sde_dpmpp_2m", "sde_dpmpp_3m"])
@pytest.mark.parametrize("final", ["tweedie", "none"])
def test_budget_semantics(solver, final):
    sde = ss.VPSDE()
    model = MIX.score_model(sde)
    for k in (1, 2, 3, 5, 17):
        if final == "tweedie" and k == 1:
            with pytest.raises(ValueError, match="nfe=1 is too small"):
                ss.sample(model, sde, solver, nfe=k, batch_size=4, final=final)
            continue
        calls: list[int] = []
        res = ss.sample(
            model,
            sde,
            solver,
            nfe=k,
            batch_size=4,
            final=final,
            return_result=True,
            generator=torch.Generator().manual_seed(0),
            callback=lambda calls=calls, **kw: calls.append(kw["step"]),
        )
        assert res.nfe == k, f"{solver} final={final}: steps={k} spent {res.nfe} evaluations"
        assert torch.isfinite(res.samples).all()
        assert len(calls) == k - (final != "none")  # callbacks see the grid's steps, not the final one


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_no_nan_over_budgets(sde_name):
    sde = SDES[sde_name]()
    model = MIX.score_model(sde)
    for k in (2, 3, 4, 5, 7, 10, 20, 50, 100, 999, 1000):
        x = ss.sample(model, sde, "sde_dpmpp_2m", nfe=k, batch_size=3, generator=torch.Generator().manual_seed(k))
        assert torch.isfinite(x).all(), f"NaN/inf at steps={k} under {sde_name}"
    x = ss.sample(model, sde, "sde_dpmpp_2m", nfe=1, batch_size=3, final="none")
    assert torch.isfinite(x).all()


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_no_nan_every_budget_1_to_1000(sde_name):
    # every budget under VP (~10 min on one core), every 37th under VE and sub-VP
    sde = SDES[sde_name]()
    model = MIX.score_model(sde)
    for k in range(1, 1001, 1 if sde_name == "vp" else 37):
        x = ss.sample(
            model,
            sde,
            "sde_dpmpp_2m",
            nfe=k,
            batch_size=2,
            final="none" if k == 1 else "tweedie",
            generator=torch.Generator().manual_seed(k),
        )
        assert torch.isfinite(x).all(), f"NaN/inf at steps={k} under {sde_name}"


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_sde_dpmpp_2m_distribution(sde_name):
    # n = 4000 at 40 evaluations; the discretisation allowance (0.01 on weights and means, 2 % on
    # variances) is below what a first-order solver reaches at 10 steps or a score off by 10 % gives.
    sde = SDES[sde_name]()
    x = ss.sample(
        MIX.score_model(sde), sde, "sde_dpmpp_2m", nfe=40, batch_size=4000, generator=torch.Generator().manual_seed(1)
    )
    _check_distribution(x, MIX, bias=0.01)


def test_sde_dpmpp_noise_matters_and_is_reproducible():
    sde = ss.VPSDE()
    model = MIX.score_model(sde)
    a = ss.sample(model, sde, "sde_dpmpp_2m", nfe=10, batch_size=8, generator=torch.Generator().manual_seed(3))
    b = ss.sample(model, sde, "sde_dpmpp_2m", nfe=10, batch_size=8, generator=torch.Generator().manual_seed(3))
    c = ss.sample(model, sde, "sde_dpmpp_2m", nfe=10, batch_size=8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # per-sample seeds: a sample depends only on its own seed, not on the batch
    s1 = ss.sample(model, sde, "sde_dpmpp_2m", nfe=10, seeds=[5, 6, 7])
    s2 = ss.sample(model, sde, "sde_dpmpp_2m", nfe=10, seeds=[7, 5])
    assert torch.allclose(s1[0], s2[1], atol=1e-6) and torch.allclose(s1[2], s2[0], atol=1e-6)


@functools.cache
def _order_problem():
    gm = ss.analytic.anisotropic(dim=8, n_components=4)
    sde = ss.VPSDE()
    model = gm.score_model(sde)
    x_T = torch.randn(16, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = ss.sample(model, sde, "sde_dpmpp_3m", nfe=800, x_T=x_T, eta=0.0, final="none")
    return model, sde, x_T, ref


@pytest.mark.parametrize("order, solver_type", [(1, "midpoint"), (2, "midpoint"), (2, "heun"), (3, "midpoint")])
def test_eta0_convergence_order(order, solver_type):
    # with eta = 0 the solver is a deterministic exponential multistep method of order `order`:
    # the slope of log2(median per-sample error) from 40 to 80 steps against a 3M solution with 800
    # steps, on an 8-D anisotropic mixture in float64
    model, sde, x_T, ref = _order_problem()
    errs = []
    for k in (20, 40, 80):
        x = ss.sample(
            model, sde, "sde_dpmpp_2m", nfe=k, x_T=x_T, eta=0.0, order=order, solver_type=solver_type, final="none"
        )
        errs.append(float((x - ref).pow(2).mean(1).sqrt().median()))
    slope = math.log2(errs[1] / errs[2])
    assert abs(slope - order) <= 0.6, f"order {order}: errors {errs}, slope {slope:.2f}"


def test_half_precision_model_output():
    sde = ss.VPSDE()
    model = MIX.score_model(sde)
    x = ss.sample(
        lambda x, t: model(x, t).half(),
        sde,
        "sde_dpmpp_2m",
        nfe=20,
        shape=(64, 2),
        generator=torch.Generator().manual_seed(0),
    )
    assert x.dtype == torch.float32 and torch.isfinite(x).all()


def test_sde_dpmpp_bad_input():
    with pytest.raises(ValueError, match="order"):
        SDEDPMSolverPP2M(order=4)
    with pytest.raises(ValueError, match="solver_type"):
        SDEDPMSolverPP2M(solver_type="rk4")
    with pytest.raises(ValueError, match="final"):
        ss.sample(MIX.score_model(ss.VPSDE()), solver="sde_dpmpp_2m", nfe=3, batch_size=2, final="denoise")
    with pytest.raises(ValueError, match="eta"):
        SDEDPMSolverPP2M(eta=-1.0)
    sde = ss.VPSDE()
    with pytest.raises(ValueError, match="nfe"):
        ss.sample(MIX.score_model(sde), sde, "sde_dpmpp_2m", nfe=0, batch_size=2)


def test_declarations():
    cls = ss.registry.SOLVERS.get("sde_dpmpp_2m")
    assert cls.stochastic and not cls.adaptive and cls.default_final == "tweedie" and cls.nfe_per_step == 1
    assert "2211.01095" in cls.reference


# --------------------------------------------------------------------------------------------------
# Gotta Go Fast


def _ggf(sde, n, **kw):
    return ss.sample(MIX.score_model(sde), sde, "gotta_go_fast", batch_size=n, return_result=True, **kw)


@pytest.mark.parametrize("norm", ["batch_rms", "per_sample"])
def test_ggf_distribution_vp(norm):
    # paper tolerances, n = 4000; same allowance as for SDE-DPM-Solver++ (0.01 on weights and means)
    res = _ggf(ss.VPSDE(), 4000, norm=norm, generator=torch.Generator().manual_seed(2))
    _check_distribution(res.samples, MIX, bias=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["ve", "subvp"])
@pytest.mark.parametrize("norm", ["batch_rms", "batch_max", "per_sample"])
def test_ggf_distribution_all(sde_name, norm):
    res = _ggf(SDES[sde_name](), 4000, norm=norm, generator=torch.Generator().manual_seed(2))
    _check_distribution(res.samples, MIX, bias=0.01)


@pytest.mark.parametrize("norm", ["batch_rms", "batch_max", "per_sample"])
def test_ggf_nfe_accounting(norm):
    res = _ggf(ss.VPSDE(), 16, norm=norm, generator=torch.Generator().manual_seed(0))
    info = res.info
    assert info["attempted_steps"] >= 1
    # two evaluations per attempted step, plus the final denoising step counted by sample()
    assert res.nfe == 2 * info["attempted_steps"] + 1
    per = info["nfe_per_sample"]
    assert per.shape == (16,) and int(per.max()) == 2 * info["attempted_steps"]
    assert info["row_evaluations"] == int(per.sum())
    if norm == "per_sample":
        assert int(per.min()) < int(per.max()), "per-sample step sizes should finish at different times"
        assert info["row_evaluations"] < 16 * 2 * info["attempted_steps"]
    else:
        assert bool((per == per[0]).all())
        times = res.grid
        assert float(times[0]) == 1.0 and float(times[-1]) == pytest.approx(1e-3)
        assert (times[1:] < times[:-1]).all()
    res2 = ss.sample(
        MIX.score_model(ss.VPSDE()),
        ss.VPSDE(),
        "gotta_go_fast",
        batch_size=16,
        norm=norm,
        final="none",
        return_result=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert res2.nfe == res.nfe - 1


def test_ggf_tighter_tolerance_costs_more():
    sde = ss.VPSDE()
    loose = _ggf(sde, 64, rtol=0.1, atol=0.05, generator=torch.Generator().manual_seed(0))
    tight = _ggf(sde, 64, rtol=0.01, atol=0.005, generator=torch.Generator().manual_seed(0))
    assert tight.nfe > 1.5 * loose.nfe


def test_ggf_per_sample_batch_independence():
    # a sample depends only on its own seed: the same seed gives the same sample in any batch
    sde = ss.VPSDE()
    model = MIX.score_model(sde)
    a = ss.sample(model, sde, "gotta_go_fast", norm="per_sample", seeds=[11, 12, 13], return_result=True)
    b = ss.sample(model, sde, "gotta_go_fast", norm="per_sample", seeds=[13, 40, 41, 11], return_result=True)
    assert torch.allclose(a.samples[0], b.samples[3], atol=1e-6)
    assert torch.allclose(a.samples[2], b.samples[0], atol=1e-6)
    assert a.info["nfe_per_sample"][0] == b.info["nfe_per_sample"][3]
    # the default with seeds= is per_sample; a batch controller, which would couple the samples, is refused
    c = ss.sample(model, sde, "gotta_go_fast", seeds=[11, 12, 13])
    assert torch.equal(c, a.samples)
    with pytest.raises(ValueError, match="per_sample"):
        ss.sample(model, sde, "gotta_go_fast", norm="batch_rms", seeds=[11, 40, 41, 42, 43])


def test_ggf_brownian_bridge_split_is_exact_in_distribution():
    # splitting a known increment W_h at h' by the bridge, the pieces must be independent with
    # variances h' and h - h' (a wrong bridge shows up as a correlation or a wrong variance)
    from scoresolve.noise import brownian_increment

    g = torch.Generator().manual_seed(0)
    n = 200_000
    L = torch.full((n,), 0.3, dtype=torch.float64)
    w = torch.randn(n, 1, generator=g, dtype=torch.float64) * math.sqrt(0.3)
    h = torch.full((n,), 0.1, dtype=torch.float64)
    w1, left = brownian_increment(
        [(L, w)],
        h,
        torch.randn(n, 1, generator=g, dtype=torch.float64),
        torch.randn(n, 1, generator=g, dtype=torch.float64),
    )
    w2 = left[0][1]
    assert torch.allclose(w1 + w2, w)
    assert torch.allclose(left[0][0], L - h)
    tol = 4.5 * math.sqrt(2 / n)  # relative SE of a sample variance / correlation
    assert float(w1.var()) == pytest.approx(0.1, rel=tol)
    assert float(w2.var()) == pytest.approx(0.2, rel=tol)
    assert abs(float(torch.corrcoef(torch.stack([w1[:, 0], w2[:, 0]]))[0, 1])) < tol
    # beyond the known pieces: fresh noise of the remaining variance
    w3, left3 = brownian_increment(
        [(L, w)],
        torch.full((n,), 0.5, dtype=torch.float64),
        torch.zeros(n, 1, dtype=torch.float64),
        torch.randn(n, 1, generator=g, dtype=torch.float64),
    )
    assert float((w3 - w).var()) == pytest.approx(0.2, rel=tol)
    assert float(left3[0][0].abs().max()) == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rtol": 0.0}, "rtol"),
        ({"rtol": -0.1}, "rtol"),
        ({"atol": 0.0}, "atol"),
        ({"norm": "rms"}, "norm must be one of"),
        ({"exponent": 1.0}, "exponent"),
        ({"h_init": 0.0}, "h_init"),
        ({"max_steps": 0}, "max_steps"),
        ({"tolerance": "relative"}, "tolerance must be one of"),
        ({"variable": "sigma"}, "variable must be one of"),
        ({"hold_after_reject": 1}, "hold_after_reject"),
    ],
)
def test_ggf_bad_input(kwargs, match):
    sde = ss.VPSDE()
    with pytest.raises((ValueError, TypeError), match=match):
        ss.sample(MIX.score_model(sde), sde, "gotta_go_fast", batch_size=2, **kwargs)


def test_ggf_rejects_steps_and_max_steps_error():
    sde = ss.VPSDE()
    model = MIX.score_model(sde)
    with pytest.raises(ValueError, match="adaptive"):
        ss.sample(model, sde, "gotta_go_fast", 10, batch_size=2)
    with pytest.raises(RuntimeError, match="max_steps=3"):
        ss.sample(model, sde, "gotta_go_fast", batch_size=2, max_steps=3)


def test_ggf_default_tolerances_per_rule():
    from scoresolve.solvers.gotta_go_fast import GottaGoFast

    noise, state = GottaGoFast(), GottaGoFast(tolerance="state")
    assert (noise.tolerance, noise.variable, noise.hold_after_reject) == ("noise", "log_snr", True)
    assert (noise.controller.rtol, noise.controller.atol) == (1.0, 0.0078)
    assert (state.controller.rtol, state.controller.atol) == (0.05, 0.0078)  # the paper's
    assert GottaGoFast(tolerance="state", rtol=0.2).controller.rtol == 0.2


@functools.cache
def _digits_problem():
    from scoresolve.metrics import frechet_floor

    gm = ss.analytic.digits()
    sde = ss.VPSDE(beta_min=0.1, beta_max=20.0)
    mean, cov = gm.moments()
    floor, _ = frechet_floor(lambda k, g: gm.sample(k, g), mean, cov, 2000, draws=20)
    return gm, sde, mean, cov, floor


def _digits_ggf(seed, **kw):
    from scoresolve.metrics import frechet_to_moments

    gm, sde, mean, cov, floor = _digits_problem()
    res = ss.sample(
        gm.score_model(sde),
        sde,
        "gotta_go_fast",
        batch_size=2000,
        return_result=True,
        generator=torch.Generator().manual_seed(1000 + seed),
        **kw,
    )
    assert torch.isfinite(res.samples).all()
    return res, frechet_to_moments(res.samples, mean, cov) / floor


def test_ggf_digits_vp_two_x_floor_within_40_nfe():
    # issue 14's bar for the adaptive SDE solver: FD <= 2x the floor of exact samples at <= 40 NFE on
    # the 64-D digits mixture under VP, n = 2000, three noise seeds (the benchmark's seeds). Measured
    # 33-37 NFE and <= 1.6x; the floor (20 exact draws) has a standard error of ~2 %.
    for seed in range(3):
        res, ratio = _digits_ggf(seed)
        assert res.nfe <= 40, f"seed {seed}: {res.nfe} NFE"
        assert ratio <= 2.0, f"seed {seed}: FD / floor = {ratio:.2f} at {res.nfe} NFE"
        # steps controlled in log-SNR: few rejections (measured 2-4; the paper's t-controller: 6 of 25
        # attempts at 51 NFE, every other one below t = 0.3)
        assert res.info["rejected_steps"] <= 5
        times = res.grid
        assert float(times[0]) == 1.0 and float(times[-1]) == pytest.approx(1e-3)
        assert (times[1:] < times[:-1]).all()


def test_ggf_digits_vp_paper_rule_breaks_down_below_50_nfe():
    # the paper's rule (tolerance on |x|, steps in t, no hold after rejection) at ~45 NFE: the last steps
    # jump over the stiff thin directions near eps (measured 2.7-3.0x on the three seeds); the default at
    # fewer evaluations stays below 2x (test above)
    res, ratio = _digits_ggf(0, tolerance="state", variable="t", hold_after_reject=False, rtol=0.16, atol=0.16)
    assert res.nfe >= 41
    assert ratio > 2.0, f"FD / floor = {ratio:.2f} at {res.nfe} NFE"
