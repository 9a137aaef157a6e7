r"""A Gaussian fit :math:`N(m, C)` of the data and the exact probability-flow ODE flow of that Gaussian.

In the EDM variables (:math:`y = x/\alpha_t`, :math:`\tilde\sigma = \sigma_t/\alpha_t`) the PF-ODE of a
Gaussian with :math:`C = V\,\mathrm{diag}(c)\,V^\top` has the closed-form solution

.. math:: y(\tilde\sigma_1) = m + V\,\mathrm{diag}\Big(\sqrt{\tfrac{c + \tilde\sigma_1^2}
          {c + \tilde\sigma_0^2}}\Big)V^\top\,(y(\tilde\sigma_0) - m),

used as the analytical first interval of the budgeted solvers (no evaluation).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor

__all__ = ["GaussianFit", "as_gaussian_fit"]


class GaussianFit:
    r"""A Gaussian :math:`N(m, C)` of the data (flattened), for the analytical first step.

    Args:
        mean: ``(D,)`` (or any shape with ``D`` elements, or a scalar).
        cov: ``(D, D)`` symmetric PSD matrix, ``(D,)`` variances (diagonal) or a scalar variance.
        name: where the moments come from, named in error messages: ``"gaussian_prior"`` (a solver's
            option) or ``"data_moments"`` (a :class:`~scoresolve.ScoreModel`'s, whose fit calibration
            records with kind ``"model"``).

    Stored as float64 ``mean``, eigenvalues ``c`` (clamped at 0) and eigenvectors ``V`` (``None``
    for a diagonal covariance). ``digest`` (16 hex digits of a SHA-1 of the values) identifies it in
    calibration fingerprints.
    """

    def __init__(self, mean: Tensor | float, cov: Tensor | float, name: str = "gaussian_prior") -> None:
        try:
            m = torch.as_tensor(mean, dtype=torch.float64).detach().cpu()
            C = torch.as_tensor(cov, dtype=torch.float64).detach().cpu()
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name}: mean and cov must be tensors, arrays or numbers ({e})") from None
        if not (bool(torch.isfinite(m).all()) and bool(torch.isfinite(C).all())):
            raise ValueError(f"{name}: mean and cov must be finite")
        if C.ndim == 2:
            if C.shape[0] != C.shape[1]:
                raise ValueError(f"{name}: cov must be (D, D), (D,) or a scalar, got shape {tuple(C.shape)}")
            d = C.shape[0]
            c, V = torch.linalg.eigh((C + C.T) / 2)
        elif C.ndim <= 1:
            d = C.numel() if C.ndim == 1 else m.numel()
            c, V = C.reshape(-1).expand(d).clone(), None
        else:
            raise ValueError(f"{name}: cov must be (D, D), (D,) or a scalar, got shape {tuple(C.shape)}")
        if d < 1:
            raise ValueError(f"{name}: the moments are empty (dimension 0)")
        if m.numel() == 1:
            m = m.reshape(1).expand(d).clone()
        m = m.reshape(-1)
        if m.numel() != d:
            raise ValueError(f"{name}: mean has {m.numel()} elements but cov is for dimension {d}")
        if float(c.min()) < -1e-6 * max(float(c.abs().max()), 1.0):
            raise ValueError(
                f"{name}: cov must be positive semi-definite (smallest eigenvalue {float(c.min()):.3g})"
            )
        self.mean, self.c, self.V, self.dim, self.name = m, c.clamp_min(0.0), V, d, name
        h = hashlib.sha1(m.numpy().tobytes())
        h.update(C.numpy().tobytes())
        self.digest = h.hexdigest()[:16]

    def _to(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        return (self.mean.to(y), self.c.to(y), None if self.V is None else self.V.to(y))

    def flow(self, y: Tensor, s0: float, s1: float) -> tuple[Tensor, Tensor]:
        r"""Exact Gaussian PF-ODE flow of ``y`` (batch first) from :math:`\tilde\sigma_0` to
        :math:`\tilde\sigma_1`, and the Gaussian direction :math:`d_G = (y - D_G)/\tilde\sigma_0` at the start."""
        shape = y.shape
        yf = y.reshape(shape[0], -1)
        if yf.shape[1] != self.dim:
            raise ValueError(f"{self.name} is for dimension {self.dim}, the samples have {yf.shape[1]}")
        m, c, V = self._to(yf)
        e = yf - m
        if V is not None:
            e = e @ V
        ratio = torch.sqrt((c + s1 * s1) / (c + s0 * s0))
        dG = s0 * e / (c + s0 * s0)
        y1, d0 = e * ratio, dG
        if V is not None:
            y1, d0 = y1 @ V.T, d0 @ V.T
        return (y1 + m).reshape(shape), d0.reshape(shape)


def as_gaussian_fit(value: Any, name: str = "gaussian_prior") -> GaussianFit:
    """A :class:`GaussianFit` from a fit or a ``(mean, cov)`` pair (TypeError otherwise)."""
    if isinstance(value, GaussianFit):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return GaussianFit(*value, name=name)
    raise TypeError(f"{name} must be None, 'estimate' or a (mean, cov) pair of the data's moments")
