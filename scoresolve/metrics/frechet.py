r"""Fréchet distance between Gaussians fitted to samples, and its floor.

:math:`FD = \lVert\mu_1-\mu_2\rVert^2 + \mathrm{tr}(\Sigma_1+\Sigma_2-2(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2})^{1/2})`
(Fréchet 1957; Heusel et al. 2017, arXiv:1706.08500 for FID). Computed in float64 with symmetric
eigendecompositions, which are stable where ``scipy.linalg.sqrtm`` of a non-symmetric product is not.

Even exact samples of size ``n`` score ``FD > 0`` against the exact moments; :func:`frechet_floor`
estimates that floor, so results read as "FD / floor" (1.0 is perfect).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["gaussian_moments", "frechet_distance", "frechet_to_moments", "frechet_floor", "mode_weights"]


def gaussian_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Sample mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``x`` ``(n, *dims)``, in float64."""
    xf = x.reshape(x.shape[0], -1).to(torch.float64)
    mean = xf.mean(0)
    c = xf - mean
    return mean, c.T @ c / (xf.shape[0] - 1)


def _sqrt_psd(a: Tensor) -> Tensor:
    w, v = torch.linalg.eigh(0.5 * (a + a.T))
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """Fréchet (2-Wasserstein) distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``."""
    mu1, mu2, cov1, cov2 = (v.to(torch.float64).cpu() for v in (mu1, mu2, cov1, cov2))
    s1 = _sqrt_psd(cov1)
    cross = torch.linalg.eigvalsh(s1 @ cov2 @ s1).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * cross)


def frechet_to_moments(x: Tensor, mean: Tensor, cov: Tensor) -> float:
    """Fréchet distance between the Gaussian fitted to samples ``x`` and exact moments."""
    m, c = gaussian_moments(x)
    return frechet_distance(m, c, mean, cov)


def frechet_floor(
    sampler: Callable[[int, torch.Generator], Tensor],
    mean: Tensor,
    cov: Tensor,
    n: int,
    draws: int = 50,
    seed: int = 12345,
) -> tuple[float, float]:
    """Mean and standard error of the FD that ``draws`` independent exact samples of size ``n``
    reach against the exact moments (estimate floors from ≥ 50 draws: a handful is biased low
    by the noise of the minimum-like statistic).

    ``sampler(n, generator)`` must return ``n`` exact samples.
    """
    g = torch.Generator().manual_seed(seed)
    vals = torch.tensor([frechet_to_moments(sampler(n, g), mean, cov) for _ in range(draws)], dtype=torch.float64)
    return float(vals.mean()), float(vals.std() / draws**0.5)


def mode_weights(labels: Tensor, n_components: int) -> Tensor:
    """Fraction of samples per component (``labels`` from e.g. ``GaussianMixture.labels``)."""
    return torch.bincount(labels.reshape(-1).cpu(), minlength=n_components).to(torch.float64) / labels.numel()
