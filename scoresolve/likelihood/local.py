"""Local Gaussian preconditioning of the likelihood ODE (exact trace only): each sample's locally
Gaussian coordinates read off the score's Jacobian, fitted once (Runge–Kutta) or re-fitted at every
evaluation (Adams PEC). An exact change of variables; a poor fit costs accuracy, never correctness.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..sde import SDE
from ..solvers.base import CountedScore
from ..solvers.coefficients import lagrange_integral_weights
from .field import ADAMS_ORDER, Field, State, adams_update, integrate_on_grid

__all__ = ["LocalFrame", "preconditioned_fixed_step", "refit_adams"]


class LocalFrame:
    r"""Locally Gaussian coordinates of a batch, read off one evaluation: the score :math:`s` and its
    Jacobian :math:`J` at :math:`(x, t_0)`.

    If the data were locally Gaussian, :math:`N(\mu, \Sigma)`, then :math:`-J^{-1} = \alpha^2\Sigma +
    \sigma^2 I =: V` and :math:`\alpha\mu = x + V s`; with :math:`\Sigma = U\,\mathrm{diag}(\lambda)\,U^\top`
    (from the symmetric part of :math:`J`; :math:`\lambda` clipped to ``[1e-12, LAMBDA_MAX]``, which
    also covers non-log-concave directions) every trajectory of that Gaussian's probability flow is
    :math:`x_t = \alpha_t\mu + U\,\mathrm{diag}(v_t)^{1/2} y` with :math:`v_t = \alpha_t^2\lambda + \sigma_t^2`
    and **constant** :math:`y`. In :math:`y` the probability-flow ODE and its divergence read

    .. math:: \dot y = \mathrm{diag}(v)^{-1/2} U^\top (F(x, t) - F_G(x, t)), \qquad
              \nabla\cdot F = \tfrac12 \textstyle\sum_i \dot{\ln v_i} + (\nabla\cdot F - \nabla\cdot F_G),

    with :math:`F_G(x, t) = h\alpha\mu + U\,\mathrm{diag}(\tfrac12\dot{\ln v})\,U^\top(x - \alpha\mu)` the
    Gaussian's drift and :math:`\dot{\ln v} = 2h + g^2/v` (the variance ODE of a linear SDE): only the
    non-Gaussian residual is left to the numerical steps, and the Gaussian part of the log-density,
    :math:`\tfrac12\sum_i \ln(v_{i}(t_1)/v_{i}(t_0))`, is exact. The change of variables is exact for any
    :math:`\mu, U, \lambda`: a poor fit costs accuracy, never correctness. Per sample: no coupling.
    """

    LAMBDA_MAX = 1e4

    def __init__(self, sde: SDE, x: Tensor, t0: Tensor, s: Tensor, jac: Tensor) -> None:
        b, d = x.shape[0], x[0].numel()
        self.sde, self.b, self.d = sde, b, d
        a0, sg0 = sde.alpha(t0), sde.marginal_std(t0)
        ev, self.U = torch.linalg.eigh(-0.5 * (jac + jac.transpose(1, 2)))
        vv = 1.0 / ev.clamp_min(1e-12)
        self.lam = ((vv - sg0[:, None] ** 2) / a0[:, None] ** 2).clamp(1e-12, self.LAMBDA_MAX)
        v0 = self.v(t0)
        self.mu = (x.reshape(b, d) + self._rot(self._rot_t(s.reshape(b, d)) * v0)) / a0[:, None]

    def _rot(self, z: Tensor) -> Tensor:
        return torch.einsum("bij,bj->bi", self.U, z)

    def _rot_t(self, z: Tensor) -> Tensor:
        return torch.einsum("bji,bj->bi", self.U, z)

    def v(self, t: Tensor) -> Tensor:
        return self.sde.alpha(t)[:, None] ** 2 * self.lam + self.sde.marginal_std(t)[:, None] ** 2

    def to_y(self, t: Tensor, x: Tensor) -> Tensor:
        return self._rot_t(x.reshape(self.b, self.d) - self.sde.alpha(t)[:, None] * self.mu) / self.v(t).sqrt()

    def to_x(self, t: Tensor, y: Tensor) -> Tensor:
        return self.sde.alpha(t)[:, None] * self.mu + self._rot(self.v(t).sqrt() * y)

    def gaussian_logdet(self, t0: Tensor, t1: Tensor) -> Tensor:
        r""":math:`\int_{t_0}^{t_1}\nabla\cdot F_G\,dt` (independent of the path)."""
        return 0.5 * (torch.log(self.v(t1)) - torch.log(self.v(t0))).sum(1)

    def residual(self, t: Tensor, x: Tensor, dx: Tensor, div: Tensor) -> State:
        """``(dy/dt, div F - div F_G)`` at ``(x, t)`` from the field's values ``dx = F``, ``div``."""
        a, h, g2 = self.sde.alpha(t), self.sde.drift_coef(t), self.sde.diffusion(t) ** 2
        v = self.v(t)
        dlnv = 2 * h[:, None] + g2[:, None] / v
        dev = x.reshape(self.b, self.d) - a[:, None] * self.mu
        fg = (h * a)[:, None] * self.mu + self._rot(0.5 * dlnv * self._rot_t(dev))
        return self._rot_t(dx.reshape(self.b, self.d) - fg) / v.sqrt(), div - 0.5 * dlnv.sum(1)


def preconditioned_fixed_step(
    fld: Field, sde: SDE, x: Tensor, times: Tensor, method: str, counted: CountedScore
) -> tuple[State, Tensor]:
    r"""Fixed-step Runge–Kutta for the likelihood ODE in the locally Gaussian coordinates
    (:class:`LocalFrame`) of the start :math:`(x, \epsilon)`. The first Runge–Kutta stage reuses
    the evaluation that gave the frame; :math:`\log p_\epsilon(x) = \log p_T(x_T) + r_T + \tfrac12\sum_i
    \ln(v_{i,T}/v_{i,\epsilon})`. Returns ``((x_T, r_T), log-det term)``."""
    b = x.shape[0]
    g = times.to(x.device)
    t0 = g[0].expand(b).to(x.dtype)
    counted.step = 0
    s0, jac = fld.score_and_jacobian(t0, x)
    fld.first = (s0, jac.diagonal(dim1=1, dim2=2).sum(1))
    frame = LocalFrame(sde, x, t0, s0, jac)

    def f(t: Tensor, yy: State) -> State:
        xt = frame.to_x(t, yy[0]).reshape(x.shape)
        return frame.residual(t, xt, *fld(t, (xt, yy[1])))

    y: State = (frame.to_y(t0, x), torch.zeros(b, device=x.device, dtype=x.dtype))
    y = integrate_on_grid(f, times, y, method, counted)
    tT = g[-1].expand(b).to(x.dtype)
    return (frame.to_x(tT, y[0]).reshape(x.shape), y[1]), frame.gaussian_logdet(t0, tT)


def refit_adams(fld: Field, sde: SDE, x: Tensor, times: Tensor, counted: CountedScore, *, correct_last: bool = False,
                first: tuple[Tensor, Tensor] | None = None) -> tuple[State, Tensor, Tensor]:
    r"""``method="adams"`` with ``precondition="local"``: Adams predictor–corrector in locally
    Gaussian coordinates **re-fitted at every evaluation** (:class:`LocalFrame`; the exact trace
    computes the full Jacobian anyway, so a new frame costs no evaluation).

    Step :math:`t_n \to t_{n+1}` in the frame fitted at the last evaluation: the residual field
    (zero at the fit point) is extrapolated from the stored evaluations by Adams–Bashforth of order
    :data:`ADAMS_ORDER` (P), evaluated once at the predicted point (E, which also gives the next
    frame), and the step is redone with Adams–Moulton of order ``ADAMS_ORDER + 1`` (C): one
    evaluation per step, PEC mode (Hairer, Nørsett & Wanner, *Solving ODEs I*, III.1). The last step
    is predictor-only, so ``steps`` intervals cost exactly ``steps`` evaluations; ``correct_last=True``
    corrects it too (one evaluation at :math:`T`, ``steps + 1`` in all). Exact for Gaussian data; the stored
    evaluations are re-expressed in each new frame, so the frames never couple samples. ``first``: the score
    and Jacobian at ``(x, times[0])`` if already evaluated.

    Returns ``((x_T, r_T), 0, gaps)`` with the Gaussian log-determinants already in ``r_T``, and per sample
    the predictor–corrector gaps summed in modulus over the corrected steps (nats): the jump of ``x`` weighted by
    the score (a jump :math:`\delta x` moves :math:`\log p` by about :math:`s\cdot\delta x`) plus that of ``r``.
    """
    b = x.shape[0]
    tt = [float(v) for v in times]

    def tv(v: float) -> Tensor:
        return torch.full((b,), v, device=x.device, dtype=x.dtype)

    def evaluate(i: int, xi: Tensor, given: tuple[Tensor, Tensor] | None = None
                 ) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], LocalFrame, Tensor]:
        counted.step = i
        t = tv(tt[i])
        s, jac = fld.score_and_jacobian(t, xi) if given is None else given
        dx, div = fld._finish(xi, t, s, jac.diagonal(dim1=1, dim2=2).sum(1))
        return (t, xi, dx, div), LocalFrame(sde, xi, t, s, jac), s

    record, frame, _ = evaluate(0, x, first)
    hist = [record]
    xn = x
    r = torch.zeros(b, device=x.device, dtype=x.dtype)
    gaps = torch.zeros_like(r)
    n_int = len(tt) - 1
    for n in range(n_int):
        t0, t1 = tv(tt[n]), tv(tt[n + 1])
        y0, r0 = frame.to_y(t0, xn), torch.zeros_like(r)
        k = min(ADAMS_ORDER, len(hist))
        res = [frame.residual(*h) for h in hist[:k]]
        w = lagrange_integral_weights([tt[n - j] for j in range(k)], tt[n], tt[n + 1])
        y1, dr = adams_update((y0, r0), w, res)
        new_frame = frame
        corrected = n < n_int - 1 or correct_last
        if corrected:  # E and C
            x_pred, dr_pred = frame.to_x(t1, y1).reshape(x.shape), dr
            record, new_frame, s1 = evaluate(n + 1, x_pred)
            hist.insert(0, record)
            del hist[ADAMS_ORDER + 1 :]
            k = min(ADAMS_ORDER + 1, len(hist))
            res = [frame.residual(*h) for h in hist[:k]]
            w = lagrange_integral_weights([tt[n + 1 - j] for j in range(k)], tt[n], tt[n + 1])
            y1, dr = adams_update((y0, r0), w, res)
        xn = frame.to_x(t1, y1).reshape(x.shape)
        if corrected:
            jump = (s1 * (xn - x_pred)).reshape(b, -1).sum(1)
            gaps = gaps + jump.abs() + (dr - dr_pred).abs()
        r = r + dr + frame.gaussian_logdet(t0, t1)
        frame = new_frame
    return (xn, r), torch.zeros_like(r), gaps
