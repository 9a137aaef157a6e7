r"""The budget method: the likelihood ODE in log-SNR time with the noise prediction, ``K`` evaluations
and an embedded error estimate. With :math:`\lambda = \log(\alpha/\sigma)`, :math:`\hat\epsilon = -\sigma s`,
:math:`m = \mathrm{tr}(-\sigma^2\nabla_x s)` and :math:`\tfrac12 g^2\,dt = -\sigma^2 d\lambda`,

.. math:: x_{\lambda'} = \tfrac{\alpha_{\lambda'}}{\alpha_\lambda}\Big(x_\lambda - \sigma_\lambda
          \int_\lambda^{\lambda'} e^{-(u-\lambda)}\hat\epsilon\,du\Big), \qquad
          \int_\epsilon^T \nabla\cdot F\,dt = D\log\tfrac{\alpha_T}{\alpha_\epsilon}
          + \int_{\lambda_T}^{\lambda_\epsilon} m\,d\lambda .

The drift's share is exact. The ``K`` nodes are uniform in :math:`v` with :math:`\lambda = c + w\sinh v`
(dense where :math:`e^{-\lambda}` is at the data's scale); polynomials in :math:`v` give an exponential Adams
predictor (order 3) and corrector (order 4) for :math:`x` in PEC mode (DPM-Solver / UniPC form, arXiv:2206.00927,
arXiv:2302.04867) and a 4-point quadrature of :math:`m`. Error estimate: the score-weighted predictor–corrector
gaps, summed in modulus, times ``GAP_SCALE / (K - 1)``, plus the 4- minus 3-point quadrature gap. A gradient
field (symmetric Jacobian) goes to :func:`.local.refit_adams`, gaps times ``LOCAL_GAP_SCALE / (K - 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..sde import SDE
from ..solvers.coefficients import weighted_lagrange_weights
from .field import Field

__all__ = ["BudgetSolution", "budget_logp", "log_snr_nodes", "quadrature_weights", "jacobian_asymmetry", "GAP_SCALE",
           "LOCAL_GAP_SCALE", "LOCAL_MIN_STEPS", "PREDICTOR_ORDER", "QUADRATURE_POINTS", "SYMMETRY_TOL"]

PREDICTOR_ORDER = 3  # the corrector has one more
QUADRATURE_POINTS = 4  # the embedded quadrature has one fewer
#: the summed predictor-corrector gaps times GAP_SCALE / (K - 1) bound the corrector's path error (docs/likelihood.md)
GAP_SCALE = 25.0
#: the nodes' warp lambda = WARP_CENTER + WARP_WIDTH sinh(v): spacing in lambda grows as sqrt(w^2 + (lambda - c)^2)
WARP_CENTER, WARP_WIDTH = 2.0, 5.0
#: the locally Gaussian path: its summed gaps times LOCAL_GAP_SCALE / (K - 1) bound its error (docs/likelihood.md)
LOCAL_GAP_SCALE = 6.0
#: the locally Gaussian path from this many evaluations (below it a rectified flow's frames, fitted far from T where
#: alpha -> 0, extrapolate badly: measured in docs/likelihood.md)
LOCAL_MIN_STEPS = 10
#: ||J - J^T|| / ||J|| (Frobenius, per sample) at or below which the score is taken for a gradient field: float32
#: rounding of an exact score gives about 1e-7, trained networks 0.03-0.6 (docs/likelihood.md)
SYMMETRY_TOL = 1e-4


def jacobian_asymmetry(jac: Tensor) -> Tensor:
    r"""Per sample, :math:`\|J - J^\top\|_F / \|J\|_F` of Jacobians ``(B, D, D)`` (0 for a gradient field)."""
    norm = jac.flatten(1).norm(dim=1)
    return (jac - jac.transpose(1, 2)).flatten(1).norm(dim=1) / norm.clamp_min(torch.finfo(jac.dtype).tiny)


def _lam(v: np.ndarray, center: float = WARP_CENTER, width: float = WARP_WIDTH) -> np.ndarray:
    return center + width * np.sinh(v)


def _dlam(v: np.ndarray) -> np.ndarray:
    return WARP_WIDTH * np.cosh(v)


def log_snr_nodes(lam_eps: float, lam_end: float, k: int, center: float = WARP_CENTER,
                  width: float = WARP_WIDTH) -> tuple[list[float], list[float]]:
    """The ``k`` nodes ``(v, lambda)`` from ``lam_eps`` down to ``lam_end``, uniform in ``v`` with
    ``lambda = center + width sinh(v)``."""
    ends = [math.asinh((lam - center) / width) for lam in (lam_eps, lam_end)]
    v = np.linspace(ends[0], ends[1], k)
    lam = _lam(v, center, width)
    lam[0], lam[-1] = lam_eps, lam_end
    return v.tolist(), lam.tolist()


@dataclass
class BudgetSolution:
    z: Tensor  # x_T
    delta: Tensor  # (B, P) per-probe integral of the divergence
    error: Tensor  # (B,) estimated solver error of log p, nats
    lam: list[float]
    jumps: Tensor | None = None  # (K-1, B) signed per-step estimates, nats
    quad_gap: Tensor | None = None  # (B,) signed 4- minus 3-point quadrature, nats
    #: (B, P) bound on the variance of ``delta`` over the probes, with a fresh probe at every node (else ``None``)
    trace_var: Tensor | None = None


def _stencil(n: int, q: int, k: int) -> range:
    """The ``q`` nodes nearest the interval ``[n, n+1]`` among ``0..k-1``."""
    start = min(max(n - (q - 2) // 2, 0), k - q)
    return range(start, start + q)


def quadrature(v: list[float], m: Tensor, q: int) -> Tensor:
    r""":math:`\int_{\lambda_{K-1}}^{\lambda_0} m\,d\lambda` from its node values ``m`` ``(K, ...)`` at the warped
    nodes ``v``, by the composite rule of ``q``-point Lagrange stencils in ``v``."""
    k = len(v)
    q = min(q, k)
    total = torch.zeros_like(m[0])
    for n in range(k - 1):
        st = _stencil(n, q, k)
        w = weighted_lagrange_weights([v[j] for j in st], v[n], v[n + 1], _dlam)
        total = total - sum(wj * m[j] for wj, j in zip(w, st, strict=True))
    return total


def quadrature_weights(v: list[float], q: int) -> Tensor:
    """``c`` ``(K,)`` such that :func:`quadrature` of node values ``m`` is ``sum_k c_k m_k``."""
    return quadrature(v, torch.eye(len(v), dtype=torch.float64)[:, None, :], q)[0]


def budget_logp(fld: Field, sde: SDE, x: Tensor, k: int, eps: float,
                draw: Callable[[], Tensor] | None = None, first: tuple[Tensor, Tensor] | None = None) -> BudgetSolution:
    r"""Integrate from ``x`` at ``eps`` to ``T`` with ``k`` evaluations (``k >= 2``). With ``draw`` (Hutchinson
    traces), every node after the first takes fresh probes ``draw()`` instead of the field's: the path of x does
    not depend on them and the quadrature of ``m`` stays unbiased, with independent node errors, so its variance
    is :math:`\sum_k c_k^2 \mathrm{Var}(m_k)` (bounded from the same products: ``trace_var``). ``first``: the
    score and the exact trace ``(B, 1)`` at ``(x, eps)`` if already evaluated."""
    b, d = x.shape[0], x[0].numel()
    t_eps, t_end = torch.tensor([eps], dtype=torch.float64), torch.tensor([sde.T], dtype=torch.float64)
    v_l, lam_l = log_snr_nodes(float(sde.log_snr(t_eps)), float(sde.log_snr(t_end)), k)
    ts = sde.t_from_log_snr(torch.tensor(lam_l, dtype=torch.float64))
    ts[0], ts[-1] = eps, sde.T
    t_l = ts.tolist()
    alpha = sde.alpha(ts).tolist()
    sig = sde.marginal_std(ts).tolist()

    variances = []

    def evaluate(i: int, xi: Tensor) -> tuple[Tensor, Tensor]:
        fld.score.step = i
        t = torch.full((b,), t_l[i], device=x.device, dtype=x.dtype)
        if i == 0 and first is not None:
            s, tr, var = first[0], first[1], torch.zeros_like(first[1])
        else:
            s, tr, var = fld.traces_with_variance(xi, t, probes=draw() if draw is not None and i > 0 else None)
        variances.append(var * sig[i] ** 4)
        eps_hat = -sig[i] * s
        m = -(sig[i] ** 2) * tr
        if not bool(torch.isfinite(m).all()):
            raise FloatingPointError(f"the trace of the score's Jacobian is NaN/inf at t={t_l[i]:.6g} (evaluation {i})")
        return eps_hat, m

    def advance(n: int, xn: Tensor, nodes: list[int]) -> Tensor:
        w = weighted_lagrange_weights(
            [v_l[j] for j in nodes], v_l[n], v_l[n + 1], lambda v: np.exp(lam_l[n] - _lam(v)) * _dlam(v)
        )
        inc = sum(wj * eps_hats[j] for wj, j in zip(w, nodes, strict=True))
        return (alpha[n + 1] / alpha[n]) * (xn - sig[n] * inc)

    e0, m0 = evaluate(0, x)
    eps_hats, ms = [e0], [m0]
    xn = x
    path_err = torch.zeros(b, device=x.device, dtype=x.dtype)
    jumps = []
    for n in range(k - 1):
        p = min(PREDICTOR_ORDER, n + 1)
        x_pred = advance(n, xn, list(range(n, n - p, -1)))
        e1, m1 = evaluate(n + 1, x_pred)
        eps_hats.append(e1)
        ms.append(m1)
        x_corr = advance(n, xn, list(range(n + 1, n - p, -1)))
        # a jump dx at t_{n+1} moves log p by about s . dx, with s = -eps_hat / sigma
        jump = -(e1 * (x_corr - x_pred)).reshape(b, -1).sum(1) / sig[n + 1]
        jumps.append(jump)
        path_err = path_err + jump.abs()  # a sum of moduli: the signed sum under-covers (measured)
        xn = x_corr
    m_all = torch.stack(ms)  # (K, B, P)
    q_hi = quadrature(v_l, m_all, QUADRATURE_POINTS)
    q_lo = quadrature(v_l, m_all, QUADRATURE_POINTS - 1)
    delta = d * math.log(alpha[-1] / alpha[0]) + q_hi
    quad_gap = (q_hi - q_lo).mean(1)
    error = path_err * (GAP_SCALE / (k - 1)) + quad_gap.abs()
    trace_var = None
    if draw is not None:
        c = quadrature_weights(v_l, QUADRATURE_POINTS).to(device=x.device, dtype=x.dtype)
        trace_var = torch.einsum("k,kbp->bp", c**2, torch.stack(variances))
    return BudgetSolution(z=xn, delta=delta, error=error, lam=lam_l, jumps=torch.stack(jumps), quad_gap=quad_gap,
                          trace_var=trace_var)
