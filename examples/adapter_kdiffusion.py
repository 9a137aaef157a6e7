"""k-diffusion interop, both directions, offline in a few seconds.

1. A k-diffusion-style denoiser D(x, sigma) (here the exact denoiser of a small Gaussian mixture, standing in
   for e.g. a `k_diffusion.external.CompVisDenoiser`) becomes a scoresolve ScoreModel: every scoresolve solver
   runs on it.
2. scoresolve solvers are called with k-diffusion's convention `sample_*(model, x, sigmas, ...)`; if
   k-diffusion is installed (`pip install --no-deps k-diffusion`), DPM-Solver++(2M) is compared with its own.

Run: python examples/adapter_kdiffusion.py
"""

from __future__ import annotations

import torch

import scoresolve as ss
from scoresolve.adapters.kdiffusion import from_kdiffusion, kdiffusion_sampler, sample_dpmpp_2m

torch.set_num_threads(1)
gm = ss.analytic.grid2d(n=3)  # 9 small modes in 2-D
ve = ss.VESDE(sigma_min=1e-3, sigma_max=100.0)


def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Exact E[x0 | x0 + sigma n = x] (Tweedie), as a trained k-diffusion model would approximate it."""
    t = ve.t_from_sigma(sigma.to(torch.float64))
    return (x + sigma[:, None] ** 2 * gm.score(x.double(), t, ve)).to(x.dtype)


# 1. their model, our solvers
model = from_kdiffusion(denoiser, sigma_min=0.002, sigma_max=80.0, sample_shape=(2,))
res = ss.sample(
    model,
    solver="dpmpp_2m",
    nfe=20,
    batch_size=2000,
    grid="karras",
    return_result=True,
    generator=torch.Generator().manual_seed(0),
)
mean, cov = gm.moments()
fd = ss.metrics.frechet_to_moments(res.samples.double(), mean, cov)
print(f"scoresolve dpmpp_2m on a k-diffusion denoiser: NFE={res.nfe}, Frechet distance to the exact mixture {fd:.4f}")

# 2. our solvers, their calling convention
n = 20
ramp = torch.linspace(0, 1, n, dtype=torch.float64)
sigmas = (80.0 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])  # k-diffusion's get_sigmas_karras(n, 0.002, 80)
x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * sigmas[0]
ours = sample_dpmpp_2m(denoiser, x.clone(), sigmas, disable=True)
sample_pc = kdiffusion_sampler("pc", predictor="ancestral_sampling", corrector="none")
anc = sample_pc(denoiser, x.clone(), sigmas, generator=torch.Generator().manual_seed(2))
print(f"sample_dpmpp_2m (scoresolve, k-diffusion convention): FD {ss.metrics.frechet_to_moments(ours, mean, cov):.4f}")
print(f"sample_pc (ancestral, k-diffusion convention):        FD {ss.metrics.frechet_to_moments(anc, mean, cov):.4f}")
try:
    from k_diffusion.sampling import sample_dpmpp_2m as k_dpmpp_2m
except Exception:  # k-diffusion missing, or its package import needs torchvision
    k_dpmpp_2m = None
if k_dpmpp_2m is not None:
    ref = k_dpmpp_2m(denoiser, x.clone(), sigmas, disable=True)
    print(f"max |scoresolve - k-diffusion| = {float((ours - ref).abs().max()):.2e}")
else:
    print("(k-diffusion not importable here: see tests/test_adapters_kdiffusion.py for the comparison)")
