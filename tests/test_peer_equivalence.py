"""Where our algorithm is a peer's, the same prior noise gives the same samples (float64, 1e-5).

- DPM-Solver++(2M) vs k-diffusion's ``sample_dpmpp_2m`` on its Karras sigmas (ending in 0): our
  ``dpmpp_2m`` with ``final="tweedie"`` on the grid of those sigmas (the final 0 is our jump to 0, taken
  as the peers take it: the denoiser at the last sigma; our ``final="zero"`` extrapolates it to 0 instead).
- UniPC (bh2, order 2, corrector, lower-order final) vs diffusers' ``UniPCMultistepScheduler`` on its
  discrete DDPM schedule: our grid is the continuous VP time with the same log-SNR as each of its
  timesteps, and both are driven by the exact noise prediction of a Gaussian mixture at that time.

Both peers are optional (the ``bench`` extra); the tests skip when they are missing. k-diffusion's
package import needs torchvision/skimage, so its ``sampling.py`` is loaded alone (test-only).
"""

from __future__ import annotations

import pytest
import torch

import scoresolve as ss


def _load_k_sampling():
    from scoresolve.adapters.kdiffusion import load_kdiffusion_sampling

    try:
        return load_kdiffusion_sampling()[0]
    except ImportError as e:
        pytest.skip(str(e))


def _mixture():
    return ss.analytic.anisotropic(dim=4, n_components=3, seed=4)


@pytest.mark.parametrize("n", [5, 10, 25])
def test_dpmpp_2m_matches_k_diffusion(n):
    ks = _load_k_sampling()
    gm = _mixture()
    sde = ss.VESDE(sigma_min=0.001, sigma_max=200.0)
    sigmas = ks.get_sigmas_karras(n, 0.01, 80.0, rho=7.0, device="cpu").to(torch.float64)

    def denoiser(x, sigma):
        t = sde.t_from_sigma(sigma.to(torch.float64)).expand(x.shape[0])
        return x + sigma.reshape(-1, 1) ** 2 * gm.score(x, t, sde)

    x0 = torch.randn(32, 4, generator=torch.Generator().manual_seed(n), dtype=torch.float64) * sigmas[0]
    ref = ks.sample_dpmpp_2m(denoiser, x0.clone(), sigmas, disable=True)
    grid = sde.t_from_sigma(sigmas[:-1])
    ours = ss.sample(lambda x, t: gm.score(x, t, sde), sde, solver="dpmpp_2m", grid=grid, x_T=x0.clone(),
                     final="tweedie", return_result=True)
    assert ours.nfe == n
    torch.testing.assert_close(ours.samples, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [5, 10, 20])
def test_unipc_matches_diffusers(n):
    diffusers = pytest.importorskip("diffusers")
    gm = _mixture()
    sde = ss.VPSDE(beta_max=21.0)  # T = 1 must reach the noisiest discrete timestep (999)
    sched = diffusers.UniPCMultistepScheduler(num_train_timesteps=1000, solver_order=2, solver_type="bh2",
                                              predict_x0=True, lower_order_final=True, final_sigmas_type="zero")
    sched.set_timesteps(n)
    acp = sched.alphas_cumprod.to(torch.float64)

    def t_of(step):  # continuous VP time with the log-SNR of a discrete timestep
        a = acp[int(step)]
        return sde.t_from_log_snr(0.5 * torch.log(a / (1 - a)).reshape(1))

    def eps_fn(x, t):
        return -sde.marginal_std(t).reshape(-1, 1) * gm.score(x, t, sde)

    x_T = torch.randn(32, 4, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    x = x_T.clone()
    for step in sched.timesteps:
        t = t_of(step).expand(x.shape[0])
        x = sched.step(eps_fn(x, t), step, x).prev_sample
    grid = torch.cat([t_of(s) for s in sched.timesteps])
    # diffusers starts from x_T at its first timestep with the same scale: VP prior N(0, I)
    ours = ss.sample(lambda x, t: gm.score(x, t, sde), sde, solver="unipc", grid=grid, x_T=x_T.clone(),
                     final="tweedie", return_result=True)
    assert ours.nfe == n
    torch.testing.assert_close(ours.samples, x, rtol=1e-5, atol=1e-5)
