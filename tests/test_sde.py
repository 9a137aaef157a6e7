"""The SDEs against their defining equations (Song et al. 2021) and Monte-Carlo simulation."""

from __future__ import annotations

import math

import pytest
import torch

import scoresolve as ss

T64 = torch.float64


def ts(n=9):
    return torch.linspace(1e-3, 1.0, n, dtype=T64)


def test_paper_formulas():
    t = ts()
    ve = ss.VESDE(0.01, 50.0)
    assert torch.allclose(ve.marginal_std(t), 0.01 * (50 / 0.01) ** t)
    assert torch.allclose(ve.diffusion(t), ve.marginal_std(t) * math.sqrt(2 * math.log(50 / 0.01)))
    vp = ss.VPSDE(0.1, 20.0)
    log_alpha = -0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1
    assert torch.allclose(vp.alpha(t), log_alpha.exp())
    assert torch.allclose(vp.marginal_std(t), (1 - (2 * log_alpha).exp()).sqrt())
    assert torch.allclose(vp.diffusion(t), (0.1 + t * 19.9).sqrt())
    sub = ss.SubVPSDE(0.1, 20.0)
    assert torch.allclose(sub.marginal_std(t), 1 - (2 * log_alpha).exp())
    B = 0.1 * t + 0.5 * t**2 * 19.9
    assert torch.allclose(sub.diffusion(t), ((0.1 + 19.9 * t) * (1 - torch.exp(-2 * B))).sqrt())
    assert ve.prior_std == 50.0 and vp.prior_std == 1.0 and sub.prior_std == 1.0


def test_moment_odes(any_sde):
    """For dx = h x dt + g dw: dα/dt = h α and dσ²/dt = 2 h σ² + g² (checked by autograd)."""
    t = ts().requires_grad_(True)
    a = any_sde.alpha(t)
    v = any_sde.marginal_std(t) ** 2
    da = torch.autograd.grad(a.sum(), t)[0] if a.requires_grad else torch.zeros_like(t)  # VE: α ≡ 1
    (dv,) = torch.autograd.grad(v.sum(), t)
    h, g = any_sde.drift_coef(t), any_sde.diffusion(t)
    assert torch.allclose(da, h * a, rtol=1e-9, atol=1e-12)
    if isinstance(any_sde, ss.VESDE):
        # the paper's VE marginal std includes sigma_min at t = 0 (data smoothed by it): dσ²/dt = g² still holds
        assert torch.allclose(dv, g**2, rtol=1e-9)
    else:
        assert torch.allclose(dv, 2 * h * v + g**2, rtol=1e-9, atol=1e-12)


def test_log_snr_inverse(any_sde):
    t = ts(17)
    lam = any_sde.log_snr(t)
    assert (lam[1:] < lam[:-1]).all()
    assert torch.allclose(any_sde.t_from_log_snr(lam), t, rtol=1e-9, atol=1e-12)
    # the generic bisection agrees with the closed form
    assert torch.allclose(ss.SDE.t_from_log_snr(any_sde, lam), t, rtol=1e-9, atol=1e-12)
    assert torch.allclose(any_sde.t_from_sigma(any_sde.sigma(t)), t, rtol=1e-9, atol=1e-12)
    assert torch.allclose(ss.SDE.t_from_sigma(any_sde, any_sde.sigma(t)), t, rtol=1e-9, atol=1e-12)


def test_alpha_sigma_is_alpha_and_sigma_to_the_bit(any_sde):
    """The grid's intervals take both from one call; the overrides must not change a digit."""
    t = ts(33)
    a, s = any_sde.alpha_sigma(t)
    assert torch.equal(a, any_sde.alpha(t)) and torch.equal(s, any_sde.sigma(t))


def test_transition_composes(any_sde):
    u, s, t = (torch.tensor(v, dtype=T64) for v in (0.1, 0.4, 0.9))
    a_ts, b_ts = any_sde.transition(t, s)
    a_su, b_su = any_sde.transition(s, u)
    a_tu, b_tu = any_sde.transition(t, u)
    assert torch.allclose(a_ts * a_su, a_tu)
    assert torch.allclose(a_ts**2 * b_su**2 + b_ts**2, b_tu**2)


def test_discretize_matches_ddpm_and_smld():
    t, s = torch.tensor([0.5], dtype=T64), torch.tensor([0.499], dtype=T64)
    x = torch.randn(1, 3, dtype=T64)
    ve = ss.VESDE()
    f, G = ve.discretize(x, t, s)
    assert torch.allclose(f, torch.zeros_like(x))
    assert torch.allclose(G, (ve.marginal_std(t) ** 2 - ve.marginal_std(s) ** 2).sqrt())
    vp = ss.VPSDE()
    f, G = vp.discretize(x, t, s)
    beta = 1 - vp.alpha(t) ** 2 / vp.alpha(s) ** 2
    assert torch.allclose(f, ((1 - beta).sqrt() - 1) * x)
    assert torch.allclose(G, beta.sqrt())
    # exactly 1 − exp(−∫_s^t β), ≈ the paper's β(t)Δt for small steps
    assert torch.allclose(beta, -torch.expm1(-(vp.int_beta(t) - vp.int_beta(s))), rtol=1e-12)
    assert torch.allclose(beta, vp.beta(t) * 0.001, rtol=1e-2)


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_marginal_matches_monte_carlo(name):
    """Simulate the forward SDE with fine Euler–Maruyama from a fixed x0; compare mean and std at t."""
    from conftest import SDES

    sde = SDES[name]()
    g = torch.Generator().manual_seed(0)
    n, steps, t_end, t0 = 20000, 400, 0.6, 0.0
    x0 = torch.tensor([1.5, -0.5], dtype=T64)
    x = x0.expand(n, 2).clone()
    if isinstance(sde, ss.VESDE):  # the VE kernel starts from data smoothed by sigma_min
        x = x + sde.sigma_min * torch.randn(n, 2, generator=g, dtype=T64)
    grid = torch.linspace(t0, t_end, steps + 1, dtype=T64)
    for i in range(steps):
        t, dt = grid[i], grid[i + 1] - grid[i]
        tm = t + 0.5 * dt  # midpoint coefficients: weak order 2 for this linear SDE's moments
        x = x + sde.drift_coef(tm) * x * dt + sde.diffusion(tm) * dt.sqrt() * torch.randn(n, 2, generator=g, dtype=T64)
    tt = torch.tensor(t_end, dtype=T64)
    mean, std = sde.marginal(x0, tt)
    se_mean = std / math.sqrt(n)
    assert ((x.mean(0) - mean).abs() < 4 * se_mean).all()
    # std of the sample std ≈ std / sqrt(2n)
    assert ((x.std(0) - std).abs() < 4 * std / math.sqrt(2 * n) + 2e-3 * std).all()


def test_prior(any_sde):
    z = any_sde.prior_sample((4000, 3), generator=torch.Generator().manual_seed(0), dtype=T64)
    assert abs(z.std().item() / any_sde.prior_std - 1) < 0.03
    lp = any_sde.prior_logp(z[:5])
    ref = torch.distributions.Normal(0.0, any_sde.prior_std).log_prob(z[:5]).sum(-1)
    assert torch.allclose(lp, ref)


def test_bad_parameters():
    with pytest.raises(ValueError, match="sigma_min"):
        ss.VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="beta_min"):
        ss.VPSDE(beta_min=5.0, beta_max=1.0)


def test_config_roundtrip(any_sde):
    cfg = any_sde.config()
    cls = getattr(ss, cfg.pop("type"))
    assert cls(**cfg) == any_sde
