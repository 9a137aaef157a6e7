r"""Gaussian mixtures with an exact score, density and sampler under every linear SDE.

A mixture :math:`p_0 = \sum_k \pi_k N(\mu_k, \Sigma_k)` pushed through the perturbation kernel
:math:`N(\alpha_t x_0, \sigma_t^2 I)` stays a mixture:

.. math:: p_t = \sum_k \pi_k N(\alpha_t\mu_k,\ \alpha_t^2\Sigma_k + \sigma_t^2 I),

so :math:`\log p_t`, :math:`\nabla\log p_t` and exact samples are closed-form at every ``t``. With
:math:`\Sigma_k = U_k \mathrm{diag}(\lambda_k) U_k^\top` the perturbed covariance is
:math:`U_k \mathrm{diag}(\alpha_t^2\lambda_k + \sigma_t^2) U_k^\top`, so one eigendecomposition per
component serves every ``t``. This is the ground truth of scoresolve's tests and benchmarks.

Ready-made problems: :func:`digits` (64-D, fitted to the 8×8 digits, shipped with the
package), :func:`anisotropic` (random thin-direction mixtures), :func:`grid2d` (many small 2-D modes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from .models import ScoreModel, from_velocity
from .sde import SDE, RectifiedFlow

__all__ = ["GaussianMixture", "digits", "anisotropic", "grid2d", "gaussian"]

_DATA = Path(__file__).parent / "data"
_UNIT_INTERPOLANT = RectifiedFlow()  # shift 1: its clock is the interpolant time


class GaussianMixture:
    """A Gaussian mixture in ``D = prod(event_shape)`` dimensions (parameters kept in float64).

    Args:
        weights: ``(K,)`` mixing weights (normalised here).
        means: ``(K, D)``.
        covs: ``(K, D, D)`` symmetric positive-definite covariances.
        event_shape: the shape of one sample (default ``(D,)``), e.g. ``(1, 8, 8)``.
        name: a label used in reports.
    """

    def __init__(
        self,
        weights: Tensor | Sequence[float],
        means: Tensor,
        covs: Tensor,
        event_shape: Sequence[int] | None = None,
        name: str = "mixture",
    ) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        cov = torch.as_tensor(covs, dtype=torch.float64)
        if mu.ndim != 2 or cov.shape != (mu.shape[0], mu.shape[1], mu.shape[1]) or w.shape != (mu.shape[0],):
            raise ValueError(
                f"expected weights (K,), means (K, D), covs (K, D, D); got {tuple(w.shape)}, "
                f"{tuple(mu.shape)}, {tuple(cov.shape)}"
            )
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError("mixture weights must be non-negative with a positive sum")
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        evals, evecs = torch.linalg.eigh(cov)
        if (evals <= 0).any():
            raise ValueError("mixture covariances must be positive definite")
        self.weights = w / w.sum()
        self.means = mu
        self.covs = cov
        self.evals, self.evecs = evals, evecs
        self.dim = mu.shape[1]
        self.event_shape = tuple(event_shape) if event_shape is not None else (self.dim,)
        if math.prod(self.event_shape) != self.dim:
            raise ValueError(f"event_shape {self.event_shape} does not hold {self.dim} dimensions")
        self.name = name
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, ...]] = {}

    @property
    def n_components(self) -> int:
        return self.weights.numel()

    def __repr__(self) -> str:
        return f"GaussianMixture({self.name!r}, K={self.n_components}, D={self.dim}, event_shape={self.event_shape})"

    # --- parameters on a device/dtype -----------------------------------------------------------
    def _params(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
        key = (device, dtype)
        if key not in self._cache:
            # normal tensors even when first filled inside inference_mode, so autograd can use them later
            with torch.inference_mode(False):
                params = (self.weights.log(), self.means, self.evals, self.evecs)
                self._cache[key] = tuple(p.to(device=device, dtype=dtype).clone() for p in params)
        return self._cache[key]

    def _coefs(self, x: Tensor, t: Tensor | float | None, sde: SDE | None) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        if t is None:
            if sde is not None:
                raise ValueError("pass t together with sde")
            return x.new_ones(b), x.new_zeros(b)
        if sde is None:
            raise ValueError("t needs the sde it refers to")
        tt = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        tt = tt.expand(b) if tt.ndim == 0 else tt
        return sde.alpha(tt), sde.marginal_std(tt)

    def _component_terms(self, x: Tensor, t: Tensor | float | None, sde: SDE | None):
        logw, mu, lam, U = self._params(x.device, x.dtype)
        a, s = self._coefs(x, t, sde)
        xf = x.reshape(x.shape[0], -1)
        if xf.shape[1] != self.dim:
            raise ValueError(f"x has {xf.shape[1]} dimensions per sample, the mixture {self.dim}")
        diff = xf[:, None, :] - a[:, None, None] * mu[None]  # (B, K, D)
        y = torch.einsum("bkd,kde->bke", diff, U)  # coordinates in each component's eigenbasis
        v = a[:, None, None] ** 2 * lam[None] + s[:, None, None] ** 2  # (B, K, D)
        lognorm = -0.5 * (torch.log(2 * math.pi * v).sum(-1) + (y**2 / v).sum(-1))  # (B, K)
        return logw[None] + lognorm, y, v, U

    # --- densities ------------------------------------------------------------------------------
    def log_prob(self, x: Tensor, t: Tensor | float | None = None, sde: SDE | None = None) -> Tensor:
        """Exact :math:`\\log p_t(x)` (``t=None``: the data density :math:`p_0`) → ``(B,)``."""
        logits, *_ = self._component_terms(x, t, sde)
        return torch.logsumexp(logits, dim=1)

    def responsibilities(self, x: Tensor, t: Tensor | float | None = None, sde: SDE | None = None) -> Tensor:
        """Posterior component probabilities :math:`p(k \\mid x_t)` → ``(B, K)``."""
        logits, *_ = self._component_terms(x, t, sde)
        return torch.softmax(logits, dim=1)

    def labels(self, x: Tensor) -> Tensor:
        """Most likely component of each sample under :math:`p_0` → ``(B,)`` long."""
        return self.responsibilities(x).argmax(dim=1)

    def score(self, x: Tensor, t: Tensor | float | None = None, sde: SDE | None = None) -> Tensor:
        """Exact :math:`\\nabla_x \\log p_t(x)`, shape of ``x``."""
        logits, y, v, U = self._component_terms(x, t, sde)
        r = torch.softmax(logits, dim=1)
        comp = -torch.einsum("bke,kde->bkd", y / v, U)  # each component's score
        return torch.einsum("bk,bkd->bd", r, comp).reshape(x.shape)

    def score_model(self, sde: SDE) -> ScoreModel:
        """This mixture's exact score under ``sde`` as a :class:`~scoresolve.ScoreModel`."""
        return ScoreModel(lambda x, t: self.score(x, t, sde), sde=sde, sample_shape=self.event_shape, name=self.name)

    def denoise(self, x: Tensor, t: Tensor | float, sde: SDE) -> Tensor:
        r"""Exact :math:`E[x_0 \mid x_t]`: per component
        :math:`\mu_k + \alpha_t\Sigma_k(\alpha_t^2\Sigma_k + \sigma_t^2 I)^{-1}(x - \alpha_t\mu_k)`, weighted by
        the responsibilities. No division by :math:`\alpha_t`, so it holds at :math:`\alpha_t = 0` too."""
        logits, y, v, U = self._component_terms(x, t, sde)
        r = torch.softmax(logits, dim=1)
        _, mu, lam, _ = self._params(x.device, x.dtype)
        a, _ = self._coefs(x, t, sde)
        comp = mu[None] + torch.einsum("bke,kde->bkd", a[:, None, None] * lam[None] / v * y, U)
        return torch.einsum("bk,bkd->bd", r, comp).reshape(x.shape)

    def velocity(self, x: Tensor, t: Tensor | float, sde: SDE) -> Tensor:
        r"""Exact flow-matching velocity :math:`E[\varepsilon - x_0 \mid x_t]` (what
        :func:`~scoresolve.from_velocity` expects), with :math:`\varepsilon = (x_t - \alpha_t x_0)/\sigma_t`."""
        x0 = self.denoise(x, t, sde)
        a, s = self._coefs(x, t, sde)
        a, s = SDE.bcast(a, x), SDE.bcast(s, x)
        return (x - a * x0) / s - x0

    def velocity_model(self, sde: SDE) -> ScoreModel:
        r"""This mixture's exact velocity as a flow model (:func:`~scoresolve.from_velocity`) of ``sde``.

        The network is called with the interpolant time :math:`\tau = \sigma/(\alpha+\sigma)`; under a
        :class:`~scoresolve.RectifiedFlow` that is the process's own :math:`\sigma`, and
        :math:`x/(\alpha+\sigma) = x`, so the exact velocity is evaluated on the unit interpolant."""

        def v(x: Tensor, tau: Tensor) -> Tensor:
            return self.velocity(x, tau, _UNIT_INTERPOLANT)

        return from_velocity(v, sde, sample_shape=self.event_shape, name=self.name)

    def component_log_prob(self, x: Tensor, t: Tensor | float | None = None, sde: SDE | None = None) -> Tensor:
        """:math:`\\log \\pi_k + \\log N_k(x)` under :math:`p_t` → ``(B, K)``."""
        return self._component_terms(x, t, sde)[0]

    # --- moments and sampling -----------------------------------------------------------------
    def moments(self, sde: SDE | None = None, t: float | None = None) -> tuple[Tensor, Tensor]:
        """Exact mean ``(D,)`` and covariance ``(D, D)`` of :math:`p_0` (or :math:`p_t`), float64."""
        a, s = 1.0, 0.0
        if sde is not None:
            tt = torch.tensor(float(t if t is not None else 0.0), dtype=torch.float64)
            a, s = float(sde.alpha(tt)), float(sde.marginal_std(tt))
        w = self.weights
        m = a * self.means
        mean = w @ m
        second = torch.einsum("k,kde->de", w, a**2 * self.covs + m[:, :, None] * m[:, None, :])
        cov = second - mean[:, None] * mean[None, :] + s**2 * torch.eye(self.dim, dtype=torch.float64)
        return mean, cov

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        sde: SDE | None = None,
        t: float | None = None,
        return_labels: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Exact samples of :math:`p_0` (or :math:`p_t` with ``sde`` and ``t``), ``(n, *event_shape)``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + torch.einsum("nde,ne->nd", self.evecs[k], self.evals[k].sqrt() * z)
        if sde is not None:
            tt = torch.tensor(float(t if t is not None else 0.0), dtype=torch.float64)
            z2 = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
            x = sde.alpha(tt) * x + sde.marginal_std(tt) * z2
        x = x.reshape(n, *self.event_shape).to(dtype)
        return (x, k) if return_labels else x

    # --- conditioning -------------------------------------------------------------------------
    def condition(self, observed: Tensor, y: Tensor) -> GaussianMixture:
        r"""The exact conditional of the unobserved coordinates given ``x[observed] = y``.

        For each component, with ``o`` observed and ``m`` missing coordinates:
        weight :math:`\propto \pi_k N(y; \mu_{k,o}, S_{k,oo})`, mean
        :math:`\mu_{k,m} + S_{k,mo}S_{k,oo}^{-1}(y-\mu_{k,o})`, covariance
        :math:`S_{k,mm} - S_{k,mo}S_{k,oo}^{-1}S_{k,om}`.

        Args:
            observed: boolean mask over the ``D`` (flattened) coordinates, or of ``event_shape``.
            y: the observed values: either ``observed.sum()`` values or a full vector/tensor from
                which the observed entries are taken.
        Returns:
            A mixture over the ``D - observed.sum()`` missing coordinates (in flattened order).
        """
        o = torch.as_tensor(observed, dtype=torch.bool).reshape(-1).cpu()
        if o.numel() != self.dim:
            raise ValueError(f"observed mask has {o.numel()} entries, the mixture {self.dim} dimensions")
        if not o.any() or o.all():
            raise ValueError("observed must mark at least one and not all coordinates")
        yv = torch.as_tensor(y, dtype=torch.float64).reshape(-1).cpu()
        if yv.numel() == self.dim:
            yv = yv[o]
        if yv.numel() != int(o.sum()):
            raise ValueError(f"y has {yv.numel()} values for {int(o.sum())} observed coordinates")
        m = ~o
        S = self.covs
        Soo, Smo, Smm = S[:, o][:, :, o], S[:, m][:, :, o], S[:, m][:, :, m]
        L = torch.linalg.cholesky(Soo)
        r = (yv[None] - self.means[:, o])[..., None]  # (K, Do, 1)
        sol = torch.cholesky_solve(r, L)  # S_oo^{-1} (y - mu_o)
        means = self.means[:, m] + (Smo @ sol)[..., 0]
        covs = Smm - Smo @ torch.cholesky_solve(Smo.transpose(-1, -2), L)
        maha = (r[..., 0] * sol[..., 0]).sum(-1)
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        logw = self.weights.log() - 0.5 * (maha + logdet + int(o.sum()) * math.log(2 * math.pi))
        return GaussianMixture(torch.softmax(logw, 0), means, covs, name=f"{self.name}|observed")


# --- ready-made problems ----------------------------------------------------------------------
@cache
def digits() -> GaussianMixture:
    """A 10-component full-covariance mixture in 64 dimensions fitted to the 8×8 digits (UCI optdigits, shipped).

    Data scaled to ``[-1, 1]`` (``x / 8 - 1``); event shape ``(1, 8, 8)``. Fitted once by
    ``python -m scoresolve.data.fit_digits_mixture`` (EM, ``reg_covar=1e-3``, seed 0) and shipped as
    ``scoresolve/data/digits_gmm.safetensors``: no download, no scikit-learn at run time.
    """
    from safetensors.torch import load_file

    p = load_file(str(_DATA / "digits_gmm.safetensors"))
    return GaussianMixture(p["weights"], p["means"], p["covs"], event_shape=(1, 8, 8), name="digits")


def anisotropic(
    dim: int = 16,
    n_components: int = 8,
    seed: int = 0,
    spread: float = 3.0,
    min_var: float = 1e-3,
    max_var: float = 0.5,
) -> GaussianMixture:
    """A random mixture with thin directions: means drawn from ``N(0, spread²/2 · I)``, random
    rotations, covariance eigenvalues log-uniform in ``[min_var, max_var]``, weights uniform in
    ``[0.5, 1.5]`` (normalised); deterministic given ``seed``."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n_components, dim, generator=g, dtype=torch.float64) * spread / math.sqrt(2)
    q, _ = torch.linalg.qr(torch.randn(n_components, dim, dim, generator=g, dtype=torch.float64))
    u = torch.rand(n_components, dim, generator=g, dtype=torch.float64)
    lam = torch.exp(math.log(min_var) + u * (math.log(max_var) - math.log(min_var)))
    covs = q @ torch.diag_embed(lam) @ q.transpose(-1, -2)
    w = 0.5 + torch.rand(n_components, generator=g, dtype=torch.float64)
    return GaussianMixture(w, means, covs, name=f"anisotropic{dim}d")


def grid2d(n: int = 5, spacing: float = 1.0, std: float = 0.05) -> GaussianMixture:
    """``n × n`` equally weighted isotropic 2-D modes on a square grid centred at 0."""
    c = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * spacing
    means = torch.cartesian_prod(c, c)
    covs = torch.eye(2, dtype=torch.float64).expand(n * n, 2, 2) * std**2
    return GaussianMixture(torch.ones(n * n), means, covs, name=f"grid2d_{n}x{n}")


def gaussian(mean: Tensor, cov: Tensor) -> GaussianMixture:
    """A single Gaussian as a one-component mixture."""
    mean = torch.as_tensor(mean, dtype=torch.float64)
    return GaussianMixture(torch.ones(1), mean[None], torch.as_tensor(cov, dtype=torch.float64)[None], name="gaussian")
