"""k-diffusion adapter: denoiser -> score model, and scoresolve solvers under k-diffusion's sample_* convention.

The reference is k-diffusion's own ``k_diffusion/sampling.py`` (``pip install --no-deps k-diffusion``). Importing
the ``k_diffusion`` package pulls in torchvision/skimage; ``sampling.py`` itself needs only torch, scipy,
torchsde, torchdiffeq, tqdm and ``utils.append_dims``, so when the package import fails we load that one file
under a stub package (test-only; nothing of theirs is copied into scoresolve).
"""

from __future__ import annotations

import pytest
import torch

import scoresolve as ss
from scoresolve import analytic
from scoresolve.adapters import kdiffusion as kd

torch.set_num_threads(1)


def _load_k_sampling():
    from scoresolve.adapters.kdiffusion import load_kdiffusion_sampling

    try:
        return load_kdiffusion_sampling()[0]
    except ImportError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def ksampling():
    return _load_k_sampling()


@pytest.fixture(scope="module")
def mixture():
    return analytic.anisotropic(dim=4, n_components=3, seed=1)


def _denoiser(gm, dtype=torch.float64):
    """Exact EDM denoiser of the mixture: D(x, sigma) = x + sigma^2 grad log p_sigma(x) (VE, Tweedie)."""
    ve = ss.VESDE(sigma_min=1e-4, sigma_max=500.0)

    def D(x, sigma, scale=None):
        t = ve.t_from_sigma(sigma.to(torch.float64))
        s = gm.score(x.to(torch.float64), t, ve)
        out = x.to(torch.float64) + sigma.to(torch.float64)[:, None] ** 2 * s
        if scale is not None:
            out = out * scale
        return out.to(x.dtype)

    D.sigma_min, D.sigma_max = torch.tensor(0.002), torch.tensor(80.0)
    return D


def test_from_kdiffusion_matches_exact_score_ve_and_vp(mixture):
    D = _denoiser(mixture)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    t = torch.rand(16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.98 + 0.01
    m = kd.from_kdiffusion(D)  # range read from the model's attributes
    assert isinstance(m.sde, ss.VESDE) and m.sde.sigma_min == pytest.approx(0.002) and m.sde.sigma_max == 80.0
    torch.testing.assert_close(m(x, t), mixture.score(x, t, m.sde), rtol=1e-9, atol=1e-9)
    vp = ss.VPSDE()
    mv = kd.from_kdiffusion(D, sde=vp)  # denoiser sees x/alpha and sigma/alpha
    torch.testing.assert_close(mv(x, t), mixture.score(x, t, vp), rtol=1e-9, atol=1e-9)


def test_from_kdiffusion_errors_and_extra_args(mixture):
    D = _denoiser(mixture)
    with pytest.raises(ValueError, match="sigma_min"):
        kd.from_kdiffusion(lambda x, s: x)
    with pytest.raises(ValueError, match="not both"):
        kd.from_kdiffusion(D, sigma_min=0.1, sde=ss.VPSDE())
    with pytest.raises(ValueError, match="sigma_max"):
        kd.from_kdiffusion(lambda x, s: x, sigma_min=0.1, sigma_max=-1)
    x = torch.randn(3, 4, dtype=torch.float64)
    t = torch.full((3,), 0.5, dtype=torch.float64)
    m1 = kd.from_kdiffusion(D, extra_args={"scale": 2.0})
    m0 = kd.from_kdiffusion(D)
    # with D scaled by 2: score' = (2D - x)/s^2 = 2 score + x/s^2
    s2 = m0.sde.marginal_std(t)[:, None] ** 2
    torch.testing.assert_close(m1(x, t), 2 * m0(x, t) + x / s2, rtol=1e-10, atol=1e-10)


def _karras(n, smin=0.002, smax=80.0, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


def test_ancestral_round_trip_matches_k_diffusion_sample_euler_ancestral(ksampling, mixture):
    """pc(ancestral_sampling, no corrector) under VE is k-diffusion's Euler-ancestral (eta=1) step for step:
    same mean (sigma_next^2/sigma^2) x + (1 - sigma_next^2/sigma^2) D and noise std; the global RNG is shared."""
    D = _denoiser(mixture)
    sigmas = _karras(12)
    x0 = torch.randn(32, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * sigmas[0]
    torch.manual_seed(123)
    ref = ksampling.sample_euler_ancestral(D, x0.clone(), sigmas, disable=True)
    torch.manual_seed(123)
    calls = []
    ours = kd.sample_scoresolve(
        D,
        x0.clone(),
        sigmas,
        solver="pc",
        predictor="ancestral_sampling",
        corrector="none",
        disable=True,
        callback=calls.append,
    )
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    assert len(calls) == len(sigmas) - 1
    assert [c["i"] for c in calls] == list(range(len(sigmas) - 1))
    # the same through the sample_<name> factory
    torch.manual_seed(123)
    ours2 = kd.kdiffusion_sampler("pc", predictor="ancestral_sampling", corrector="none")(D, x0.clone(), sigmas)
    torch.testing.assert_close(ours2, ref, rtol=1e-10, atol=1e-10)


def test_final_denoise_equals_last_k_step(ksampling, mixture):
    """With sigmas [s0, 0] every k-diffusion sampler returns D(x, s0); so does ours (one evaluation)."""
    D = _denoiser(mixture)
    sig = torch.tensor([3.0, 0.0], dtype=torch.float64)
    x = torch.randn(8, 4, dtype=torch.float64) * 3
    ref = ksampling.sample_euler(D, x.clone(), sig, disable=True)
    torch.testing.assert_close(kd.sample_scoresolve(D, x.clone(), sig, solver="pc"), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif("dpmpp_2m" not in ss.SOLVERS, reason="solver dpmpp_2m not registered yet")
def test_dpmpp_2m_round_trip_matches_k_diffusion(ksampling, mixture):
    """Our DPM-Solver++(2M) through the k-diffusion convention is k-diffusion's sample_dpmpp_2m on the same
    sigmas (Karras grid ending in 0) in float64: measured max |diff| <= 5e-13; the bar is 1e-9."""
    D = _denoiser(mixture)
    for n in (5, 10, 25, 100):
        sigmas = _karras(n)
        x0 = torch.randn(32, 4, generator=torch.Generator().manual_seed(n), dtype=torch.float64) * sigmas[0]
        ref = ksampling.sample_dpmpp_2m(D, x0.clone(), sigmas, disable=True)
        ours = kd.sample_dpmpp_2m(D, x0.clone(), sigmas, disable=True)
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


def test_module_getattr_and_errors(mixture):
    assert kd.sample_pc.__name__ == "sample_pc"
    with pytest.raises(AttributeError):
        kd.sample_no_such_solver  # noqa: B018
    with pytest.raises(ss.UnknownNameError):
        kd.kdiffusion_sampler("no_such_solver")
    D = _denoiser(mixture)
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="strictly decreasing"):
        kd.sample_scoresolve(D, x, torch.tensor([1.0, 2.0, 0.0]), solver="pc")
    with pytest.raises(ValueError, match="positive except"):
        kd.sample_scoresolve(D, x, torch.tensor([1.0, -0.5]), solver="pc")
    with pytest.raises(TypeError, match="floating-point"):
        kd.sample_scoresolve(D, torch.zeros(2, 4, dtype=torch.long), torch.tensor([1.0, 0.0]), solver="pc")
    for fn, args in ((kd.sample_dpm_fast, (6,)), (kd.sample_dpm_adaptive, ())):  # the range-signature samplers
        name = fn.__name__
        with pytest.raises(ValueError, match=f"{name} needs sigma_min < sigma_max"):
            fn(D, x, 2.0, 1.0, *args)
        with pytest.raises(ValueError, match=f"{name}: eta > 0"):
            fn(D, x, 0.1, 1.0, *args, eta=1.0)
        with pytest.raises(TypeError, match=f"{name}: noise_sampler= is not supported"):
            fn(D, x, 0.1, 1.0, *args, noise_sampler=object())


def test_sde_and_grid_reproduce_sigmas():
    sigmas = _karras(7)
    sde = kd.sde_for_sigmas(sigmas)
    grid = kd.sigmas_to_grid(sigmas, sde)
    assert grid[0] == sde.T and grid[-1] > 0
    torch.testing.assert_close(sde.sigma(grid), sigmas[:-1], rtol=1e-13, atol=0)


def test_pc_sampler_through_k_convention_reaches_the_mixture(mixture):
    """Distribution check: 512 samples with the full PC sampler via the k-diffusion convention land within
    4 standard errors of the mixture mean (per coordinate)."""
    D = _denoiser(mixture)
    sigmas = _karras(60, smin=0.01, smax=50.0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(512, 4, generator=g, dtype=torch.float64) * sigmas[0]
    out = kd.sample_scoresolve(D, x0, sigmas, solver="pc", snr=0.16, generator=g)
    mean, cov = mixture.moments()
    se = cov.diagonal().sqrt() / 512**0.5
    assert ((out.mean(0) - mean).abs() < 4 * se + 0.02).all()
