"""Coefficients of the multistep and exponential-integrator solvers, one copy each (float64 Python floats).

- :func:`lagrange_integral_weights`: variable-step Adams weights :math:`\\int_a^b \\ell_j`;
- :func:`exp_lagrange_weights`: exponential Adams weights :math:`\\int_a^b e^{-(u-a)}\\ell_j(u)\\,du`
  (:func:`weighted_lagrange_weights` for any weight);
- :func:`phi_integrals`: :math:`\\int_0^h (1+\\eta)e^{-(1+\\eta)(h-u)}u^k\\,du`, ``k = 0, 1, 2`` (SDE-DPM-Solver++);
- :func:`unipc_b`: UniPC's :math:`\varphi_1`, :math:`b_k` and :math:`B(h)` (Zhao et al. 2023, arXiv:2302.04867).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["lagrange_integral_weights", "exp_lagrange_weights", "weighted_lagrange_weights", "phi_integrals", "unipc_b"]

#: 24-point Gauss-Legendre nodes and weights on [-1, 1], computed once (each call used to rebuild them)
_GAUSS_LEGENDRE_24 = np.polynomial.legendre.leggauss(24)


def lagrange_integral_weights(nodes: list[float], a: float, b: float) -> list[float]:
    r"""Weights :math:`w_j = \int_a^b \ell_j(u)\,du` of the Lagrange basis through ``nodes``.

    Computed in the scaled variable :math:`v = (u - a)/(b - a)` (nodes near 0, interval [0, 1]) so
    the Vandermonde system stays well conditioned; exact for polynomials of degree ``len(nodes)-1``.
    """
    H = b - a
    k = len(nodes)
    if k == 1:
        return [H]
    v = torch.tensor([(u - a) / H for u in nodes], dtype=torch.float64)
    V = torch.stack([v**p for p in range(k)], dim=0)  # V[p, j] = v_j^p
    rhs = torch.tensor([1.0 / (p + 1) for p in range(k)], dtype=torch.float64)  # ∫_0^1 v^p dv
    w = torch.linalg.solve(V, rhs)
    return (w * H).tolist()


def exp_lagrange_weights(nodes: list[float], a: float, b: float, rate: float = -1.0) -> list[float]:
    r"""Weights :math:`w_j = \int_a^b e^{r(u-a)}\ell_j(u)\,du` (``r = rate``) of the Lagrange basis through
    ``nodes`` (the exponential integrators' :math:`\varphi`-weights for any nodes; ``b < a`` allowed).

    Gauss–Legendre with 24 points: exact for the polynomial part, and to rounding for the
    exponential over intervals :math:`|b - a| \lesssim 8`.
    """
    return weighted_lagrange_weights(nodes, a, b, lambda u: np.exp(rate * (u - a)))


def weighted_lagrange_weights(
    nodes: list[float], a: float, b: float, weight: Callable[[np.ndarray], np.ndarray]
) -> list[float]:
    r"""Weights :math:`w_j = \int_a^b \omega(u)\ell_j(u)\,du` of the Lagrange basis through ``nodes`` for a
    smooth weight :math:`\omega` (``weight``, vectorised over numpy arrays); Gauss–Legendre, 24 points."""
    v, wq = _GAUSS_LEGENDRE_24
    u = a + (b - a) * (v + 1) / 2
    f = weight(u) * wq * (b - a) / 2
    out = []
    for j, nj in enumerate(nodes):
        ell = np.ones_like(u)
        for i, ni in enumerate(nodes):
            if i != j:
                ell *= (u - ni) / (nj - ni)
        out.append(float((f * ell).sum()))
    return out


def phi_integrals(h: float, eta: float) -> tuple[float, float, float]:
    r"""The weights :math:`I_k = \int_0^h (1+\eta) e^{-(1+\eta)(h-u)} u^k\,du`, ``k = 0, 1, 2``,
    computed without cancellation for small :math:`a = (1+\eta)h` (float64)."""
    c = 1.0 + eta
    a = c * h
    i0 = -math.expm1(-a)  # 1 - e^{-a}
    if a < 1e-3:
        # Taylor series of the two closed forms below (which cancel badly for small a)
        i1 = h * (a / 2 - a * a / 6 + a**3 / 24 - a**4 / 120)
        i2 = h * h * (a / 3 - a * a / 12 + a**3 / 60 - a**4 / 360)
    else:
        i1 = h * (1.0 - i0 / a)
        i2 = h * h * (1.0 - 2.0 / a + 2.0 * i0 / (a * a))
    return i0, i1, i2


def unipc_b(h: float, order: int, variant: str) -> tuple[float, list[float], float]:
    r"""``(phi_1, b, B_h)`` of UniPC with data prediction: :math:`hh = -h`,
    :math:`\varphi_1 = e^{hh}-1`, :math:`b_k = k!\,\varphi_{k+1}(hh)/B(h)` where
    :math:`\varphi_{k+1}` is built by :math:`\varphi_{k+1} = \varphi_k/hh - 1/k!`."""
    hh = -h
    phi1 = math.expm1(hh)
    Bh = hh if variant == "bh1" else phi1
    hk = phi1 / hh - 1.0
    fact = 1
    b = []
    for k in range(1, order + 1):
        b.append(hk * fact / Bh)
        fact *= k + 1
        hk = hk / hh - 1.0 / fact
    return phi1, b, Bh
