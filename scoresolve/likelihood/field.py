"""The augmented probability-flow field of the likelihood ODE and the fixed-grid integrators over it.

:class:`Field` maps ``(x, Δ)`` to ``(F(x, t), ∇·F(x, t))`` with the exact trace (``D`` vector–Jacobian
products, batched) or the Hutchinson–Skilling estimate (probes fixed along the ODE; the budget method may draw a
fresh one at every node). :func:`integrate_on_grid` runs the
solver layer's Runge–Kutta tableaux, or Adams PEC (one evaluation per interval), over a time grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..sde import SDE
from ..solvers.base import CountedScore
from ..solvers.coefficients import lagrange_integral_weights
from ..solvers.ode_fixed import TABLEAUS, rk_step

__all__ = ["Field", "integrate_on_grid", "adams_update", "ADAMS_ORDER", "State"]

State = tuple[Tensor, ...]
#: order of the ``"adams"`` predictor (Adams–Bashforth; the Adams–Moulton corrector has one more),
#: ramping up from 1 over the first steps
ADAMS_ORDER = 3


class Field:
    """The augmented vector field ``(x, Δ) ↦ (F(x, t), ∇·F(x, t))`` with the exact or estimated trace."""

    def __init__(
        self,
        score: CountedScore,
        sde: SDE,
        trace: str,
        probes: Tensor | None,
        t_lo: float,
        t_hi: float,
        chunk: int,
    ) -> None:
        self.score, self.sde, self.trace, self.probes = score, sde, trace, probes
        self.t_lo, self.t_hi = t_lo, t_hi
        self.chunk = chunk
        self.clamped = 0
        self.first: tuple[Tensor, Tensor] | None = None
        #: keep one divergence per probe, ``(B, P)``, so the result carries the probes' standard error
        self.per_probe = False
        #: the probes are Rademacher (their diagonal contribution is exact), else Gaussian
        self.rademacher = True

    def __call__(self, t: Tensor, y: State, rows: Tensor | None = None) -> State:
        x = y[0]
        b = x.shape[0]
        if t.ndim == 0:
            t = t.expand(b)
        t = t.to(dtype=x.dtype)
        if self.first is not None:  # the evaluation made to build the preconditioner, reused once
            s, tr = self.first
            self.first = None
            return self._finish(x, t, s, tr)
        if bool(((t < self.t_lo) | (t > self.t_hi)).any()):
            self.clamped += 1
            t = t.clamp(self.t_lo, self.t_hi)
        s, tr = self.traces(x, t, rows)
        return self._finish(x, t, s, tr if self.per_probe else tr.mean(1))

    def traces(self, x: Tensor, t: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One counted evaluation: the score and its trace ``(B, P)``, one column per Hutchinson probe
        (``P = 1`` for the exact trace)."""
        s, tr, _ = self.traces_with_variance(x, t, rows)
        return s, tr

    def traces_with_variance(self, x: Tensor, t: Tensor, rows: Tensor | None = None,
                             probes: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        r""":meth:`traces` (with ``probes`` instead of the field's own, if given), and per sample and probe an
        estimate of an upper bound on the variance of the Hutchinson estimate :math:`v^\top A v` (:math:`A = \nabla_x
        s`) from the same product: :math:`2\|A^\top v - a v\|^2` (Rademacher, :math:`D > 2`: :math:`a = v^\top A v /
        D`, as a multiple of the identity leaves the variance unchanged, times :math:`D/(D-2)`; else :math:`a = 0`),
        whose mean is at least :math:`2\sum_{i \ne j} A_{ij}^2 \ge` the variance. Zero for the exact trace."""
        b, d = x.shape[0], x[0].numel()
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            s = self.score(xg, t)
            if self.trace == "exact":
                tr = self._exact_trace(s, xg, d)[:, None]
                var = torch.zeros_like(tr)
            else:
                v = self.probes if probes is None else probes
                assert v is not None
                v = v if rows is None else v.index_select(1, rows)
                jv = self._vjps(s, xg, v).reshape(v.shape[0], b, -1)
                vv = v.reshape(v.shape[0], b, -1)
                tr = (jv * vv).sum(-1)  # (P, B)
                centre = self.rademacher and d > 2
                a = tr / d if centre else torch.zeros_like(tr)
                # with a = v'Av / D the squared norm is low by Var/D in expectation: D / (D - 2) restores the bound
                var = 2 * (jv - a[..., None] * vv).pow(2).sum(-1) * (d / (d - 2) if centre else 1.0)
                tr, var = tr.T, var.T
        return s.detach(), tr.detach(), var.detach()

    @staticmethod
    def _vjps(s: Tensor, xg: Tensor, v: Tensor) -> Tensor:
        """``(P, *x.shape)``: the vector-Jacobian products ``v_p^T ds/dx``. On the CPU (and for one probe anywhere)
        one backward pass per probe, which is cheaper there than the batched pass (``is_grads_batched``, vmap) and
        gives the same values (measured in docs/likelihood.md)."""
        if xg.device.type == "cpu" or v.shape[0] == 1:
            last = v.shape[0] - 1
            return torch.stack([torch.autograd.grad(s, xg, grad_outputs=v[p], retain_graph=p < last)[0]
                                for p in range(v.shape[0])])
        (jv,) = torch.autograd.grad(s, xg, grad_outputs=v, is_grads_batched=True)
        return jv

    def _finish(self, x: Tensor, t: Tensor, s: Tensor, tr: Tensor) -> State:
        b, d = x.shape[0], x[0].numel()
        g2 = self.sde.diffusion(t) ** 2
        dx = self.sde.pf_drift(x, t, s)
        h = self.sde.drift_coef(t)
        if tr.ndim == 2:
            h, g2 = h[:, None], g2[:, None]
        div = d * h - 0.5 * g2 * tr
        if not bool(torch.isfinite(div).all()):
            bad = ~torch.isfinite(div.reshape(b, -1)).all(1)
            raise FloatingPointError(
                f"the divergence of the probability-flow drift is NaN/inf at t={float(t[bad][0]):.6g} "
                f"for {int(bad.sum())} of {b} samples"
            )
        return dx, div

    def score_and_jacobian(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """One counted evaluation: the score and its full Jacobian ``(B, D, D)`` (``J[b, i, j] = ds_i/dx_j``)."""
        b, d = x.shape[0], x[0].numel()
        t = t.to(dtype=x.dtype)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            s = self.score(xg, t)
            eye = torch.eye(d, device=x.device, dtype=x.dtype)
            rows = []
            for start in range(0, d, self.chunk):
                stop = min(d, start + self.chunk)
                go = eye[start:stop, None, :].expand(stop - start, b, d).reshape(stop - start, *s.shape)
                (jr,) = torch.autograd.grad(s, xg, grad_outputs=go, is_grads_batched=True, retain_graph=True)
                rows.append(jr.reshape(stop - start, b, d))
        return s.detach(), torch.cat(rows, 0).permute(1, 0, 2)

    def _exact_trace(self, s: Tensor, xg: Tensor, d: int) -> Tensor:
        b = s.shape[0]
        eye = torch.eye(d, device=s.device, dtype=s.dtype)
        total = torch.zeros(b, device=s.device, dtype=s.dtype)
        for start in range(0, d, self.chunk):
            stop = min(d, start + self.chunk)
            go = eye[start:stop, None, :].expand(stop - start, b, d).reshape(stop - start, *s.shape)
            (jac_rows,) = torch.autograd.grad(s, xg, grad_outputs=go, is_grads_batched=True, retain_graph=True)
            jr = jac_rows.reshape(stop - start, b, d)
            idx = torch.arange(start, stop, device=s.device)
            total = total + jr[torch.arange(stop - start, device=s.device), :, idx].sum(0)
        return total


def integrate_on_grid(
    f: Callable[[Tensor, State], State], times: Tensor, y: State, method: str, counted: CountedScore
) -> State:
    r"""Integrate ``dy/dt = f(t, y)`` over the increasing grid ``times`` with a fixed-step method:
    one Runge–Kutta step per interval (``euler``/``heun``/``rk4``, 1/2/4 evaluations), or
    ``"adams"``: variable-step Adams predictor–corrector in PEC mode — Adams–Bashforth of order
    :data:`ADAMS_ORDER` predicts, one evaluation at the predicted point, Adams–Moulton of one order
    more corrects (orders ramp up over the first steps; Hairer, Nørsett & Wanner, *Solving ODEs I*,
    III.1 and III.5) — **one evaluation per interval**, the last interval predictor-only, so ``steps``
    intervals cost exactly ``steps`` evaluations."""
    b = y[0].shape[0]
    g = times.to(y[0].device)
    n = times.numel() - 1
    if method != "adams":
        tab = TABLEAUS[method]
        for i in range(n):
            counted.step = i
            y = rk_step(f, g[i].expand(b), y, (g[i + 1] - g[i]).expand(b), tab)
        return y
    tt = [float(v) for v in times]
    counted.step = 0
    hist: list[State] = [f(g[0].expand(b), y)]
    for i in range(n):
        k = min(ADAMS_ORDER, len(hist))
        w = lagrange_integral_weights([tt[i - j] for j in range(k)], tt[i], tt[i + 1])
        y1 = adams_update(y, w, hist)
        if i < n - 1:
            counted.step = i + 1
            hist.insert(0, f(g[i + 1].expand(b), y1))
            del hist[ADAMS_ORDER + 1 :]
            k = min(ADAMS_ORDER + 1, len(hist))
            w = lagrange_integral_weights([tt[i + 1 - j] for j in range(k)], tt[i], tt[i + 1])
            y1 = adams_update(y, w, hist)
        y = y1
    return y


def adams_update(y: State, w: Sequence[float], derivs: Sequence[State]) -> State:
    """``y + sum_j w_j f_j`` component by component (``derivs`` newest first, as many as ``w``)."""
    return tuple(yc + sum(wj * fj[c] for wj, fj in zip(w, derivs[: len(w)], strict=True)) for c, yc in enumerate(y))


