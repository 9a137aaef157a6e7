"""Predictor–corrector sampling against exact samples of the 64-D digits mixture.

Acceptance of the core issue: at the paper's settings (N = 1000 steps, snr = 0.16 — the value of the
paper's CIFAR-10 configurations for both VE and VP, ``configs/default_cifar10_configs.py``; 0.17 CelebA,
0.075 LSUN), the Fréchet distance of n samples to the exact moments is within 1.5× of the mean FD that
exact samples of the same size reach (the floor, 50 draws), and the mode weights agree within sampling
error. On this 64-D problem the floor is concentrated: over 200 exact draws of n = 1000, the 99th
percentile of FD / floor is 1.34 and the maximum 1.45, so a 1.5× bar separates a correct sampler from
a biased one. The default run covers the paper's own pairings; ``pytest -m slow`` runs all of them
under VE, VP and sub-VP, corrector-only sampling at the settings of the paper's code for it (below).
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import SDES, exact_floor

import scoresolve as ss
from scoresolve.metrics import frechet_to_moments, mode_weights

N_SAMPLES = 1000


@functools.cache
def reference_mode_weights(n_ref: int = 40_000) -> torch.Tensor:
    gm = ss.analytic.digits()
    x = gm.sample(n_ref, torch.Generator().manual_seed(777), dtype=torch.float64)
    return mode_weights(gm.labels(x), gm.n_components)


def check_sampler(sde_name: str, predictor: str, corrector: str, n_corrector_steps: int = 1, seed: int = 1,
                  snr: float = 0.16):
    gm = ss.analytic.digits()
    sde = SDES[sde_name]()
    x = ss.sample(gm.score_model(sde), sde, solver="pc", steps=1000, batch_size=N_SAMPLES, predictor=predictor,
                  corrector=corrector, snr=snr, n_corrector_steps=n_corrector_steps,
                  generator=torch.Generator().manual_seed(seed))
    assert torch.isfinite(x).all()
    mean, cov = gm.moments()
    ratio = frechet_to_moments(x, mean, cov) / exact_floor("digits", N_SAMPLES)
    assert ratio <= 1.5, f"FD / floor = {ratio:.3f} for {sde_name} {predictor}+{corrector}"
    w = mode_weights(gm.labels(x.double()), gm.n_components)
    ref = reference_mode_weights()
    se = (ref * (1 - ref) * (1 / N_SAMPLES + 1 / 40_000)).sqrt()
    z = ((w - ref) / se).abs()
    # 10 components: |z| < 4 each (family-wise false alarm ≈ 6e-4)
    assert (z < 4).all(), f"mode weights {w.tolist()} vs {ref.tolist()} (|z| = {z.tolist()})"
    return ratio


PAPER_PAIRINGS = [
    ("ve", "reverse_diffusion", "langevin"),  # configs/ve/*: the paper's PC sampler
    ("vp", "reverse_diffusion", "langevin"),  # Table 1, PC1000 for DDPM
    ("vp", "euler_maruyama", "none"),  # configs/vp/*_continuous
    ("vp", "ancestral_sampling", "none"),  # configs/vp/ddpm/*
    ("ve", "ancestral_sampling", "none"),  # SMLD ancestral sampling
]


@pytest.mark.parametrize("sde_name,predictor,corrector", PAPER_PAIRINGS)
def test_paper_pairings(sde_name, predictor, corrector):
    check_sampler(sde_name, predictor, corrector)


ALL = [
    (s, p, c)
    for s in ("ve", "vp", "subvp")
    for p in ("euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none")
    for c in ("langevin", "annealed_langevin", "none")
    if p != "none" or c != "none"
]


# Corrector-only sampling (predictor "none") at the settings the paper's code uses for it:
# - langevin: the "C2000" rows of the paper's Table 1 (arXiv:2011.13456): the Langevin corrector alone, two
#   steps on each of the 1000 noise levels, snr 0.16 as in configs/default_cifar10_configs.py.
# - annealed_langevin: the released corrector-only configurations of the NCSN-style sampler
#   (yang-song/score_sde_pytorch configs/ncsnv2/cifar10.py and configs/ve/ncsn/cifar10_124.py: predictor
#   "none", corrector "ald", n_steps_each=5, snr=0.176, i.e. NCSNv2's step 6.2e-6 * sigma_i^2 / sigma_L^2).
#   At snr 0.16 with two steps it misses the bar under VP (1.71x, docs/core.md).
CORRECTOR_ONLY = {"langevin": {"snr": 0.16, "n_corrector_steps": 2},
                  "annealed_langevin": {"snr": 0.176, "n_corrector_steps": 5}}

# Sub-VP corrector-only sampling misses the 1.5x bar at these settings (2.25x langevin, 2.08x annealed; docs/core.md):
# its noise level sigma_t = 1 - alpha_t^2 is far below VP's while the mean coefficient grows, so Langevin steps of
# size ~ sigma_t^2 cannot widen the wide directions in time (their variance ends at 0.78-0.87 of the exact one). The
# issue's bar covers VE and VP, and the paper reports no sub-VP corrector-only result (its code cannot run a
# corrector under sub-VP: score_sde_pytorch issue #8). Strict: a pass here means the docs need updating.
SUBVP_CORRECTOR_ONLY = pytest.mark.xfail(strict=True, raises=AssertionError,
                                         reason="sub-VP corrector-only sampling: 2.1-2.3x the floor (docs/core.md)")


def _pairing(s, p, c):
    return pytest.param(s, p, c, marks=SUBVP_CORRECTOR_ONLY) if (s, p) == ("subvp", "none") else (s, p, c)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name,predictor,corrector", [_pairing(*a) for a in ALL if a not in PAPER_PAIRINGS])
def test_every_pairing(sde_name, predictor, corrector):
    # measured FD / floor (docs/core.md): 0.75-1.16x with a predictor; corrector-only VE 1.16x / 0.84x,
    # VP 1.47x / 1.06x (langevin / annealed_langevin).
    opts = CORRECTOR_ONLY[corrector] if predictor == "none" else {}
    check_sampler(sde_name, predictor, corrector, **opts)


def test_corrector_step_sizes():
    """The correctors' step sizes are those of the paper's code: Langevin 2 alpha (r |z| / |s|)^2 per sample with
    alpha = 1 - beta_i (VP; 1 for VE), annealed Langevin 2 alpha (r sigma_t)^2 = NCSNv2's 6.2e-6 sigma^2 / 0.01^2."""
    from scoresolve.solvers.correctors import AnnealedLangevin, Langevin

    g = torch.Generator().manual_seed(0)
    x, s, z = (torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    s[1] *= 10  # per-sample norms: a batch mean would give sample 1 the others' step
    vp, ve = SDES["vp"](), SDES["ve"]()
    n, t_from, t = 1000, torch.full((3,), 0.501, dtype=torch.float64), torch.full((3,), 0.5, dtype=torch.float64)
    beta_i = (vp.beta_min + 0.5 * (vp.beta_max - vp.beta_min)) / n  # DDPM beta of the level, N = 1000
    ratio = z.flatten(1).norm(dim=1) / s.flatten(1).norm(dim=1)
    for sde, alpha in ((vp, 1 - beta_i), (ve, 1.0)):
        eps = Langevin().step_size(sde, x, s, z, t, t_from, 0.16)
        torch.testing.assert_close(eps, 2 * alpha * (0.16 * ratio) ** 2, rtol=1e-4, atol=0)
    eps = AnnealedLangevin().step_size(ve, x, s, z, t, t_from, 0.176)
    torch.testing.assert_close(eps, 6.2e-6 * ve.marginal_std(t) ** 2 / 0.01**2, rtol=1e-3, atol=0)
    eps = AnnealedLangevin().step_size(vp, x, s, z, t, t_from, 0.16)
    torch.testing.assert_close(eps, 2 * (1 - beta_i) * (0.16 * vp.marginal_std(t)) ** 2, rtol=1e-4, atol=0)
