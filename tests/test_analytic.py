"""The analytic Gaussian mixtures: score = ∇ log p_t, exact moments, exact conditionals."""

from __future__ import annotations

import math

import pytest
import torch

import scoresolve as ss

T64 = torch.float64


@pytest.mark.parametrize("problem", ["grid2d", "anisotropic", "digits"])
def test_score_is_grad_log_prob(problem, any_sde):
    gm = getattr(ss.analytic, problem)()
    g = torch.Generator().manual_seed(0)
    x = gm.sample(16, g, dtype=T64)
    t = torch.rand(16, generator=g, dtype=T64) * 0.999 + 1e-3
    xt = any_sde.alpha(t).reshape(-1, *[1] * (x.ndim - 1)) * x + any_sde.bcast(any_sde.marginal_std(t), x) * 0.3
    xg = xt.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(xg, t, any_sde).sum(), xg)
    assert torch.allclose(gm.score(xt, t, any_sde), grad, rtol=1e-8, atol=1e-8)


def test_log_prob_matches_torch_distributions():
    gm = ss.analytic.anisotropic(4, 3, seed=2)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(gm.weights), torch.distributions.MultivariateNormal(gm.means, gm.covs)
    )
    x = gm.sample(50, torch.Generator().manual_seed(1), dtype=T64)
    assert torch.allclose(gm.log_prob(x), mix.log_prob(x), rtol=1e-10)
    # under an SDE at time t: components N(α μ, α² Σ + σ² I)
    sde, t = ss.VPSDE(), 0.3
    a, s = sde.alpha(torch.tensor(t, dtype=T64)), sde.marginal_std(torch.tensor(t, dtype=T64))
    mix_t = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(gm.weights),
        torch.distributions.MultivariateNormal(a * gm.means, a**2 * gm.covs + s**2 * torch.eye(4, dtype=T64)),
    )
    assert torch.allclose(gm.log_prob(x, t, sde), mix_t.log_prob(x), rtol=1e-10)


@pytest.mark.parametrize("t", [None, 0.4])
def test_moments_match_monte_carlo(t):
    gm = ss.analytic.anisotropic(6, 4, seed=3)
    sde = ss.VESDE(0.01, 5.0) if t is not None else None
    mean, cov = gm.moments(sde, t)
    n = 200_000
    x = gm.sample(n, torch.Generator().manual_seed(0), sde=sde, t=t, dtype=T64)
    sd = cov.diagonal().sqrt()
    assert ((x.mean(0) - mean).abs() < 4.5 * sd / math.sqrt(n)).all()
    emp = torch.cov(x.T)
    # std of a covariance entry ≈ sqrt((C_ii C_jj + C_ij²)/n)
    se = ((cov.diagonal()[:, None] * cov.diagonal()[None] + cov**2) / n).sqrt()
    assert ((emp - cov).abs() < 5 * se).all()


def test_condition_is_exact():
    """log p(x_m | x_o) = log p(x) − log p_o(x_o), with p_o the mixture of observed marginals."""
    gm = ss.analytic.anisotropic(5, 3, seed=4)
    obs = torch.tensor([True, False, True, False, False])
    x = gm.sample(8, torch.Generator().manual_seed(0), dtype=T64)
    y = x[0]
    cond = gm.condition(obs, y)
    marg = ss.analytic.GaussianMixture(gm.weights, gm.means[:, obs], gm.covs[:, obs][:, :, obs])
    xm = x[:, ~obs]
    full = torch.cat([y[obs].expand(8, 2), xm], 1)
    order = torch.cat([torch.nonzero(obs)[:, 0], torch.nonzero(~obs)[:, 0]])
    xfull = torch.empty_like(full)
    xfull[:, order] = full
    expect = gm.log_prob(xfull) - marg.log_prob(y[obs][None])
    assert torch.allclose(cond.log_prob(xm), expect, rtol=1e-9)
    with pytest.raises(ValueError, match="observed"):
        gm.condition(torch.zeros(5, dtype=torch.bool), y)


def test_digits_problem_shape():
    gm = ss.analytic.digits()
    assert gm.dim == 64 and gm.event_shape == (1, 8, 8) and gm.n_components == 10
    x = gm.sample(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 8, 8) and x.dtype == torch.float32
    assert gm.score(x, torch.full((4,), 0.5), ss.VPSDE()).shape == x.shape


def test_cache_filled_in_inference_mode_still_supports_autograd():
    gm = ss.analytic.anisotropic(3, 2, seed=5)
    with torch.inference_mode():
        gm.log_prob(torch.zeros(2, 3))
    x = torch.zeros(2, 3, requires_grad=True)
    (g,) = torch.autograd.grad(gm.log_prob(x).sum(), x)
    assert torch.allclose(g, gm.score(x.detach()))
