"""Predictor–corrector sampling against exact samples of the 64-D digits mixture.

Acceptance of the core issue: at the paper's settings (N = 1000 steps, snr = 0.16 — the value of the
paper's CIFAR-10 configurations for both VE and VP, ``configs/default_cifar10_configs.py``; 0.17 CelebA,
0.075 LSUN), the Fréchet distance of n samples to the exact moments is within 1.5× of the mean FD that
exact samples of the same size reach (the floor, 50 draws), and the mode weights agree within sampling
error. On this 64-D problem the floor is concentrated: over 200 exact draws of n = 1000, the 99th
percentile of FD / floor is 1.34 and the maximum 1.45, so a 1.5× bar separates a correct sampler from
a biased one. The default run covers the paper's own pairings; ``pytest -m slow`` runs all of them
under VE, VP and sub-VP.
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


def check_sampler(sde_name: str, predictor: str, corrector: str, n_corrector_steps: int = 1, seed: int = 1):
    gm = ss.analytic.digits()
    sde = SDES[sde_name]()
    x = ss.sample(gm.score_model(sde), sde, solver="pc", steps=1000, batch_size=N_SAMPLES, predictor=predictor,
                  corrector=corrector, snr=0.16, n_corrector_steps=n_corrector_steps,
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


@pytest.mark.slow
@pytest.mark.parametrize("sde_name,predictor,corrector", [a for a in ALL if a not in PAPER_PAIRINGS])
def test_every_pairing(sde_name, predictor, corrector):
    # corrector-only sampling uses two corrector steps per level (the paper's C2000 row of Table 1).
    # Measured (docs/core.md): every pairing with a predictor passes; corrector-only fails the 1.5x bar under
    # VP with annealed_langevin (1.71x) and under sub-VP (2.25x, 3.09x). The bar is kept as the issue set it.
    check_sampler(sde_name, predictor, corrector, n_corrector_steps=2 if predictor == "none" else 1)
