"""The budget likelihood (``likelihood(model, x, steps=K)``): exact against the analytic mixtures'
log-densities, its error estimate brackets the true error, warnings / strict / impossible bits/dim."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import scoresolve as ss
from scoresolve import analytic
from scoresolve.likelihood import LikelihoodAccuracyError, LikelihoodAccuracyWarning, likelihood
from scoresolve.likelihood.field import Field

LN2 = math.log(2)
SDES = {
    "vp": ss.VPSDE(),
    "ve": ss.VESDE(sigma_min=0.01, sigma_max=50.0),
    "subvp": ss.SubVPSDE(),
    "flow": ss.RectifiedFlow(),
}


def _model(mix, sde):
    return mix.velocity_model(sde) if isinstance(sde, ss.RectifiedFlow) else mix.score_model(sde)


@pytest.mark.parametrize("name", list(SDES))
def test_steps_20_works_and_the_estimate_brackets_the_error(name):
    """steps=20 with no other option works on every process; |error| <= error_bpd on >= 95 % of the
    samples of an 8-D mixture (exact p_T at the end, so the error is the solver's alone)."""
    sde = SDES[name]
    mix = analytic.anisotropic(8, n_components=3, min_var=0.02)
    x = mix.sample(64, torch.Generator().manual_seed(3), dtype=torch.float64)
    with _no_fail():
        r = likelihood(_model(mix, sde), sde, x, steps=20, prior_logp=lambda z: mix.log_prob(z, sde.T, sde))
    assert r.nfe == 20 and r.info["method"] == "budget" and r.info["trace"] == "exact"
    assert r.error_bpd is not None and r.error_bpd.shape == (64,) and bool((r.trace_se_bpd == 0).all())
    err = (r.logp - mix.log_prob(x, r.eps, sde)).abs() / (8 * LN2)
    covered = float((err <= r.error_bpd).float().mean())
    assert covered >= 0.95, (name, covered, float(err.mean()), float(r.error_bpd.mean()))
    assert 0 < float(err.mean()) < 0.1, (name, float(err.mean()))  # a budget result, not a converged one


@pytest.mark.parametrize("name,k", [("subvp", 12), ("flow", 12), ("ve", 40)])
def test_the_estimate_brackets_few_and_many_steps(name, k):
    """The scaled gap (GAP_SCALE / (K-1)) brackets where the plain gap sum did not (sub-VP at K=12: 33 %,
    flow 92 %) and stays within 15x of the error at K=40 (the plain sum: 21x on VE)."""
    sde = SDES[name]
    mix = analytic.anisotropic(8, n_components=3, min_var=0.02)
    x = mix.sample(64, torch.Generator().manual_seed(3), dtype=torch.float64)
    with _no_fail():
        r = likelihood(_model(mix, sde), sde, x, steps=k, prior_logp=lambda z: mix.log_prob(z, sde.T, sde))
    err = (r.logp - mix.log_prob(x, r.eps, sde)).abs() / (8 * LN2)
    assert float((err <= r.error_bpd).float().mean()) >= 0.95
    assert float(r.error_bpd.mean() / err.mean()) <= 15, (float(r.error_bpd.mean()), float(err.mean()))


def test_digits_vp_accuracy_at_20_evaluations():
    """The analytic bar: digits x VP, exact score and p_T, K=20 with the defaults: mean |error| <= 0.001 bits/dim on
    64 samples (measured 0.00043 in the locally Gaussian frame that an exact score gets; 0.0029 on the log-SNR
    path, ``precondition="none"``), bracketed by the estimate."""
    mix, sde = analytic.digits(), ss.VPSDE()
    x = mix.sample(64, torch.Generator().manual_seed(3), dtype=torch.float64)
    with _no_fail():
        r = likelihood(mix.score_model(sde), sde, x, steps=20, prior_logp=lambda z: mix.log_prob(z, sde.T, sde))
    assert r.nfe == 20 and r.info["precondition"].startswith("local") and r.info["jacobian_asymmetry"] < 1e-12
    err = (r.logp - mix.log_prob(x, r.eps, sde)).abs() / (64 * LN2)
    assert float(err.mean()) <= 0.001, float(err.mean())
    assert float((err <= r.error_bpd).float().mean()) >= 0.95


def _rotated(mix, sde, strength):
    """The mixture's score plus ``strength`` times a rotation of x: a field whose Jacobian is not symmetric."""
    score = mix.score_model(sde)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(mix.dim, mix.dim, generator=gen, dtype=torch.float64)
    rot = strength * (a - a.T) / mix.dim**0.5

    def f(x, t):
        return score(x, t) + x @ rot.to(x.dtype).T

    return f


def test_the_local_frame_is_chosen_only_for_a_gradient_field():
    """The frame is chosen from the first evaluation's Jacobian (no extra evaluation): a gradient field gets it,
    a field with an antisymmetric part (as trained networks have: 0.03-0.6) and budgets below LOCAL_MIN_STEPS keep
    the log-SNR path, bit for bit the result of ``precondition="none"``."""
    from scoresolve.likelihood.budget import LOCAL_MIN_STEPS, SYMMETRY_TOL

    mix, sde = analytic.anisotropic(8, n_components=3, min_var=0.02), ss.VPSDE()
    x = mix.sample(16, torch.Generator().manual_seed(3), dtype=torch.float64)
    field = _rotated(mix, sde, 0.05)
    with _no_fail():
        rot = likelihood(field, sde, x, steps=20)
        rot_none = likelihood(field, sde, x, steps=20, precondition="none")
        few = likelihood(mix.score_model(sde), sde, x, steps=LOCAL_MIN_STEPS - 1)
        few_none = likelihood(mix.score_model(sde), sde, x, steps=LOCAL_MIN_STEPS - 1, precondition="none")
        exact = likelihood(mix.score_model(sde), sde, x, steps=20)
        exact_none = likelihood(mix.score_model(sde), sde, x, steps=20, precondition="none")
    assert rot.info["jacobian_asymmetry"] > SYMMETRY_TOL and "log_snr" in rot.info and "precondition" not in rot.info
    assert rot.nfe == 20 and torch.equal(rot.bpd, rot_none.bpd) and torch.equal(rot.error_bpd, rot_none.error_bpd)
    assert "jacobian_asymmetry" not in few.info and torch.equal(few.bpd, few_none.bpd)
    assert exact.info["precondition"].startswith("local") and exact.nfe == 20 and exact_none.nfe == 20
    truth = mix.log_prob(x, exact.eps, sde)
    assert float((exact.logp - truth).abs().mean()) < float((exact_none.logp - truth).abs().mean())
    with pytest.raises(ValueError, match="precondition='local' needs trace='exact'"):
        likelihood(mix.score_model(sde), sde, x, steps=20, trace="hutchinson", precondition="local")
    with pytest.raises(ValueError, match="precondition must be"):
        likelihood(mix.score_model(sde), sde, x, steps=20, precondition="gaussian")


class _no_fail:
    def __enter__(self):
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", LikelihoodAccuracyWarning)

    def __exit__(self, *a):
        self._w.__exit__(*a)


def test_hutchinson_probes_give_a_standard_error():
    mix, sde = analytic.anisotropic(8, n_components=3, min_var=0.02), ss.VPSDE()
    x = mix.sample(4, torch.Generator().manual_seed(1), dtype=torch.float64)
    model = mix.score_model(sde)
    with _no_fail():
        exact = likelihood(model, sde, x, steps=16)
        reps = x.repeat_interleave(32, 0)
        g = torch.Generator().manual_seed(0)
        h = likelihood(model, sde, reps, steps=16, trace="hutchinson", probes=4, generator=g)
    assert h.info["probes"] == 4 and bool((h.trace_se_bpd > 0).all())
    # the reported standard error matches the spread of independent repeats
    spread = h.bpd.reshape(4, 32).std(1)
    ratio = spread / h.trace_se_bpd.reshape(4, 32).pow(2).mean(1).sqrt()
    assert bool(((ratio > 0.6) & (ratio < 1.6)).all()), ratio.tolist()
    z = (h.bpd.reshape(4, 32).mean(1) - exact.bpd) / (spread / math.sqrt(32))
    assert bool((z.abs() <= 3.5).all()), z.tolist()


def test_probe_vjps_one_pass_per_probe_equal_the_batched_pass():
    # Field._vjps takes one backward pass per probe on the CPU; the batched (vmap) pass must give the same products
    w = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xg = torch.randn(3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_(True)
    v = torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s = torch.tanh(xg @ w) * xg
    (batched,) = torch.autograd.grad(s, xg, grad_outputs=v, is_grads_batched=True, retain_graph=True)
    looped = Field._vjps(s, xg, v)
    assert looped.shape == (4, 3, 6)
    torch.testing.assert_close(looped, batched, rtol=1e-12, atol=1e-12)
    jac = torch.autograd.functional.jacobian(lambda z: torch.tanh(z @ w) * z, xg.detach())  # (3, 6, 3, 6)
    torch.testing.assert_close(looped, torch.einsum("pbi,bicj->pcj", v, jac))


def test_too_few_steps_warn_or_raise_naming_the_remedy():
    mix, sde = analytic.anisotropic(16), ss.VESDE(sigma_min=0.01, sigma_max=50.0)
    x = mix.sample(8, torch.Generator().manual_seed(2), dtype=torch.float64)
    model = mix.score_model(sde)
    with pytest.warns(LikelihoodAccuracyWarning, match=r"steps=8.*method='adaptive'"):
        r = likelihood(model, sde, x, steps=4)
    assert float(r.error_bpd.max()) > 0.01
    with pytest.raises(LikelihoodAccuracyError, match="exceeds tol"):
        likelihood(model, sde, x, steps=4, strict=True)
    # a loose tol accepts the same run silently
    with warnings.catch_warnings():
        warnings.simplefilter("error", LikelihoodAccuracyWarning)
        likelihood(model, sde, x, steps=4, tol=100.0)
    with pytest.raises(ValueError, match="tol"):
        likelihood(model, sde, x, steps=4, tol=0)
    with pytest.raises(ValueError, match="steps"):
        likelihood(model, sde, x, steps=1)
    with pytest.raises(ValueError, match="grid"):
        likelihood(model, sde, x, steps=8, grid="karras")


def test_negative_bits_per_dim_on_dequantized_data_is_an_error():
    """A wrong model (here a prior density far above 1) gives log p > 7 D ln 2: impossible for 8-bit
    data, so an error, not a number; the same run with a sane prior is a number."""
    mix, sde = analytic.grid2d(3, spacing=0.5, std=0.2), ss.VPSDE()
    k = torch.randint(0, 256, (4, 2), generator=torch.Generator().manual_seed(0))
    x = (k / 255.0 * 2 - 1).to(torch.float64)
    kw = dict(steps=8, data_range=(-1, 1), dequantize="uniform", tol=10.0)
    with warnings.catch_warnings():  # the user's tol holds with a data_range (it was once overwritten)
        warnings.simplefilter("error", LikelihoodAccuracyWarning)
        assert bool((likelihood(mix.score_model(sde), sde, x, **kw).bpd > 0).all())
    with pytest.raises(ValueError, match="negative bits/dim"):
        likelihood(mix.score_model(sde), sde, x, prior_logp=lambda z: z.new_full(z.shape[:1], 100.0), **kw)


def test_model_then_data_positional():
    """``likelihood(model, x, steps=K)``: a ScoreModel carries its SDE."""
    mix, sde = analytic.grid2d(), ss.VPSDE()
    sm = ss.ScoreModel(mix.score_model(sde), sde=sde, sample_shape=(2,))
    x = mix.sample(4, torch.Generator().manual_seed(0), dtype=torch.float64)
    with _no_fail():
        a = likelihood(sm, x, steps=12)
        b = likelihood(sm, sde, x, steps=12)
    torch.testing.assert_close(a.nll, b.nll)


def test_a_fresh_probe_per_node_is_unbiased_with_a_standard_error_that_bounds_its_spread():
    """The default (one Rademacher probe, fresh at every node): the mean over 128 repeats matches the exact trace's
    result within 3.5 standard errors, the reported standard error is at least the repeats' spread (it is a bound:
    0.85 leaves room for the spread's own 6 % noise) and at most 3x it, and the spread is below that of one probe
    kept along the path."""
    mix, sde = analytic.anisotropic(16, n_components=3, min_var=0.02), ss.VPSDE()
    x = mix.sample(4, torch.Generator().manual_seed(1), dtype=torch.float64)
    model = mix.score_model(sde)
    reps = x.repeat_interleave(128, 0)
    with _no_fail():
        exact = likelihood(model, sde, x, steps=16)
        h = likelihood(model, sde, reps, steps=16, trace="hutchinson", generator=torch.Generator().manual_seed(0))
        fixed = likelihood(model, sde, reps, steps=16, trace="hutchinson", fresh_probes=False,
                           generator=torch.Generator().manual_seed(0))
    assert h.info["probes"] == 1 and h.info["fresh_probes"] and bool(torch.isnan(fixed.trace_se_bpd).all())
    spread = h.bpd.reshape(4, 128).std(1)
    ratio = h.trace_se_bpd.reshape(4, 128).pow(2).mean(1).sqrt() / spread
    assert bool(((ratio >= 0.85) & (ratio <= 3.0)).all()), ratio.tolist()
    z = (h.bpd.reshape(4, 128).mean(1) - exact.bpd) / (spread / math.sqrt(128))
    assert bool((z.abs() <= 3.5).all()), z.tolist()
    assert bool((spread < fixed.bpd.reshape(4, 128).std(1)).all())
    with pytest.raises(ValueError, match="fresh_probes"):
        likelihood(model, sde, x, rtol=1e-3, atol=1e-3, trace="hutchinson", fresh_probes=True)


def test_bundled_digits_network_against_a_converged_reference():
    """The bundled 8x8 network on 4 held-out digits (dequantized x + u/8): steps=20 within its error
    estimate of dopri5 at rtol 1e-4 (0.002 bits/dim from rtol 1e-6; the same dequantization and probe, kept along
    the path by both: ``fresh_probes=False``)."""
    import scoresolve.io as sio
    from scoresolve.train.data import digits

    model = sio.load("digits")
    x = digits("test")[:4].to(torch.float32)
    x = x + torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) / 8
    kw = dict(trace="hutchinson", probes=1, data_range=None)
    ref = likelihood(model, x, rtol=1e-4, atol=1e-4, generator=torch.Generator().manual_seed(1), **kw)
    with _no_fail():
        r = likelihood(model, x, steps=20, fresh_probes=False, generator=torch.Generator().manual_seed(1), **kw)
    e = r.bpd - ref.bpd
    assert bool((e.abs() <= r.error_bpd).all()), (e.tolist(), r.error_bpd.tolist())
    assert abs(float(e.mean())) <= 0.03, e.tolist()
