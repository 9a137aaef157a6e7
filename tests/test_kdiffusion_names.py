"""Every k-diffusion ``sample_*`` sampler under its own name in ``scoresolve.adapters.kdiffusion``, checked against
k-diffusion's function on the exact denoiser of an analytic mixture (float64, shared noise), and the alias table
(``scoresolve.aliases``) through ``ss.sample``."""

from __future__ import annotations

import math

import pytest
import torch
from reference import EPS, problem, reference

import scoresolve as ss
from scoresolve import aliases, analytic
from scoresolve.adapters import kdiffusion as kd
from scoresolve.sampling import resolve_solver

torch.set_num_threads(1)

# the mathematics is the same: k-diffusion's result to 1e-5 (measured <= 5e-13 in float64)
SAME = [n for n in aliases.KDIFFUSION_SAMPLERS if n not in ("dpm_fast", "dpm_adaptive")]


@pytest.fixture(scope="module")
def ksampling():
    try:
        return kd.load_kdiffusion_sampling()[0]
    except ImportError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def D():
    gm = analytic.anisotropic(dim=4, n_components=3, seed=1)
    ve = ss.VESDE(sigma_min=1e-4, sigma_max=500.0)

    def denoiser(x, sigma):
        t = ve.t_from_sigma(sigma.to(torch.float64))
        return x + sigma.to(x.dtype)[:, None] ** 2 * gm.score(x, t, ve)

    return denoiser


def _karras(n, smin=0.002, smax=80.0, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


class _SharedNoise:
    """k-diffusion's ``noise_sampler`` drawing from the global RNG in our order. For ``dpmpp_sde`` (two calls per
    step: over the stage's interval, then over the whole step) it gives the second draw the Brownian-tree
    correlation with the first, as k-diffusion's default ``BrownianTreeNoiseSampler`` does."""

    def __init__(self, x):
        self.x, self.prev = x, None

    def __call__(self, sigma, sigma_next):
        sigma, sigma_next = float(sigma), float(sigma_next)
        z = torch.randn_like(self.x)
        if self.prev is not None and self.prev[0] == sigma:  # the whole step after its stage
            s_stage, z1 = self.prev[1], self.prev[2]
            w1, w2 = sigma - s_stage, s_stage - sigma_next
            z = (math.sqrt(w1) * z1 + math.sqrt(w2) * z) / math.sqrt(w1 + w2)
            self.prev = None
        else:
            self.prev = (sigma, sigma_next, z)
        return z


def test_every_k_diffusion_name_exists(ksampling):
    theirs = sorted(n[len("sample_") :] for n in dir(ksampling) if n.startswith("sample_"))
    assert set(theirs) <= set(aliases.KDIFFUSION_SAMPLERS), "a k-diffusion sampler without a name here"
    for name in aliases.KDIFFUSION_SAMPLERS:
        assert callable(getattr(kd, f"sample_{name}"))


@pytest.mark.parametrize("name", SAME)
@pytest.mark.parametrize("n", [4, 12])
def test_same_as_k_diffusion(ksampling, D, name, n):
    sigmas = _karras(n)
    x0 = torch.randn(16, 4, generator=torch.Generator().manual_seed(n), dtype=torch.float64) * sigmas[0]
    extra = {"noise_sampler": _SharedNoise(x0)} if "sde" in name else {}
    torch.manual_seed(7)
    ref = getattr(ksampling, f"sample_{name}")(D, x0.clone(), sigmas, disable=True, **extra)
    torch.manual_seed(7)
    calls = []
    ours = getattr(kd, f"sample_{name}")(D, x0.clone(), sigmas, disable=True, callback=calls.append)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert [c["i"] for c in calls] == list(range(n))


@pytest.mark.parametrize("name", ["euler", "heun", "dpm_2"])
def test_churn_same_as_k_diffusion(ksampling, D, name):
    """EDM churn on every step but the last (k-diffusion also churns the step onto 0; ours is plain Tweedie)."""
    sigmas = _karras(8)
    x0 = torch.randn(16, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * sigmas[0]
    opts = {"s_churn": 2.0, "s_tmin": float(sigmas[-2]) * 1.5}
    torch.manual_seed(3)
    ref = getattr(ksampling, f"sample_{name}")(D, x0.clone(), sigmas, disable=True, **opts)
    torch.manual_seed(3)
    ours = getattr(kd, f"sample_{name}")(D, x0.clone(), sigmas, **opts)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [4, 5, 6, 10])
def test_dpm_fast_same_as_k_diffusion(ksampling, D, n):
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(n), dtype=torch.float64) * 10
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # k-diffusion builds its log-SNR grid in the default dtype
    try:
        ref = ksampling.sample_dpm_fast(D, x.clone(), 0.01, 10.0, n, disable=True)
    finally:
        torch.set_default_dtype(default)
    torch.testing.assert_close(kd.sample_dpm_fast(D, x.clone(), 0.01, 10.0, n), ref, rtol=1e-5, atol=1e-5)


def test_dpm_adaptive_solves_the_same_ode(ksampling, D):
    """A documented difference (dopri5 per sample, not DPM-Solver-23): both land on the ODE's solution, ours
    within k-diffusion's own error at its default tolerances (measured 0.005 vs 0.033)."""
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 10
    exact = kd.sample_dpm_adaptive(D, x.clone(), 0.01, 10.0, rtol=1e-9, atol=1e-9)
    ref = ksampling.sample_dpm_adaptive(D, x.clone(), 0.01, 10.0, disable=True)
    ours, info = kd.sample_dpm_adaptive(D, x.clone(), 0.01, 10.0, return_info=True)
    assert (ours - exact).abs().max() <= (ref - exact).abs().max()
    assert info["nfe"] > 0


def test_ddim_eta_zero_is_euler_and_eta_one_is_ancestral(D):
    sigmas = _karras(6)
    x0 = torch.randn(8, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * sigmas[0]
    torch.testing.assert_close(kd.sample_ddim(D, x0, sigmas), kd.sample_euler(D, x0, sigmas), rtol=0, atol=1e-12)
    torch.manual_seed(0)
    a = kd.sample_ddim(D, x0, sigmas, eta=1.0)
    torch.manual_seed(0)
    torch.testing.assert_close(a, kd.sample_euler_a(D, x0, sigmas), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["euler_a", "dpmpp_2m_sde", "ddim", "lms", "DPM++ 2M Karras", "heun", "dpmpp_sde"])
def test_sample_accepts_aliases_and_reaches_the_mixture(name):
    """Through ss.sample on a VP SDE: the alias runs its solver and the samples have the mixture's mean
    (within 5 standard errors + the discretisation bias allowance 0.1)."""
    gm = analytic.anisotropic(dim=4, n_components=3, seed=1)
    sde = ss.VPSDE()
    res = ss.sample(gm.score_model(sde), sde, solver=name, nfe=40, shape=(512, 4), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0), return_result=True)
    mean, cov = gm.moments()
    se = cov.diagonal().sqrt() / 512**0.5
    assert ((res.samples.mean(0) - mean).abs() < 5 * se + 0.1).all()
    assert torch.isfinite(res.samples).all()


def test_alias_grid_and_options_and_user_wins():
    assert aliases.resolve("DPM++ 2M Karras") == ("dpmpp_2m", {}, "karras")
    assert aliases.resolve("dpm++-2m-KARRAS")[2] == "karras"
    assert aliases.resolve("ddim", {"eta": 0.5}) == ("euler_ancestral", {"eta": 0.5}, "uniform")
    assert aliases.resolve("EulerAncestralDiscreteScheduler")[0] == "euler_ancestral"
    listing = ss.solvers()
    assert "DPM++ 2M Karras" in listing and "euler_a" in listing and listing["euler_a"].startswith("alias of")


@pytest.mark.parametrize(
    "typo, kind", [("euler_ancestal", True), ("dpmpp_2m_sdee", True), ("heun_a", True), ("eulr", False),
                   ("ddimm", False)]
)
def test_did_you_mean_keeps_the_kind(typo, kind):
    with pytest.raises(ss.UnknownNameError, match="Did you mean") as e:
        ss.sample(lambda x, t: -x, ss.VPSDE(), solver=typo, steps=2, shape=(2, 2))
    suggestion = str(e.value).split("Did you mean '")[1].split("'")[0]
    assert aliases.is_stochastic(suggestion) is kind, suggestion


def test_every_alias_names_a_solver_that_accepts_its_options():
    from scoresolve.sampling import resolve_solver

    for a in aliases.ALIASES:
        resolve_solver(a.solver, dict(a.options))
        assert a.grid is None or a.grid in ss.GRIDS


# (name, options, order of the probability-flow ODE solution): the declared order, or for the ancestral/SDE
# samplers with eta=0 the order of their deterministic update
# euler, heun, dpm_2 and lms (orders 4 and 3) are in tests/test_order.py with every registered deterministic solver;
# here the stochastic ones made deterministic (eta=0), which then follow the PF-ODE at second order
ODE_ORDERS = [
    ("dpmpp_2s_ancestral", {"eta": 0.0}, 2.0),
    ("dpmpp_sde", {"eta": 0.0}, 2.0),
]


@pytest.mark.parametrize("name,opts,expected", ODE_ORDERS, ids=[f"{n}-{o}" for n, o, _ in ODE_ORDERS])
def test_empirical_order(name, opts, expected):
    """Slope of log2(RMSE) against the tight dopri5 solution of tests/reference.py: measured 1.94 (2S and SDE with
    eta=0) between 100 and 200 steps (200 -> 400: 1.97); the bar is ±0.3."""
    gm, sde, x_T = problem()
    ref = reference()
    solver = resolve_solver(name, dict(opts))
    errs = []
    for k in (100, 200):
        x = ss.sample(lambda x, t: gm.score(x, t, sde), sde, solver=solver, steps=k, x_T=x_T, eps=EPS, grid="log_snr",
                      final="none")
        errs.append((x - ref).pow(2).mean().sqrt().item())
    slope = math.log2(errs[0] / errs[1])
    assert abs(slope - (expected or solver.order)) <= 0.3, (errs, slope)


def test_lcm_jumps_to_the_denoiser_and_renoises(D):
    sigmas = torch.tensor([10.0, 1.0, 0.1, 0.0], dtype=torch.float64)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 10
    torch.manual_seed(4)
    ours = kd.sample_lcm(D, x.clone(), sigmas)
    torch.manual_seed(4)
    y = x.clone()
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        y = D(y, s.expand(8))
        if s_next > 0:
            y = y + s_next * torch.randn_like(y)
    torch.testing.assert_close(ours, y, rtol=1e-12, atol=1e-12)
