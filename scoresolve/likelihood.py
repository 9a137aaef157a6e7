r"""Exact likelihood of a score model through the probability-flow ODE (Song et al. 2021,
arXiv:2011.13456, Sec. 4.3 and App. D.2).

The probability-flow ODE :math:`dx/dt = F(x, t) = f(x, t) - \tfrac12 g(t)^2 s_\theta(x, t)` transports
the model's marginal :math:`p_\epsilon` to the prior :math:`p_T`; by the instantaneous change of
variables (Chen et al. 2018, arXiv:1806.07366)

.. math::  \log p_\epsilon(x) = \log p_T(x_T) + \int_\epsilon^T \nabla\cdot F(x_t, t)\,dt,\qquad
           \nabla\cdot F = D\,h(t) - \tfrac12 g(t)^2\,\mathrm{tr}\,\nabla_x s_\theta(x_t, t),

integrated forward from :math:`x_\epsilon = x` to :math:`T` together with :math:`x_t` (the SDEs here
have linear drift :math:`f = h(t)x`, whose divergence is :math:`D h(t)`). The trace is computed

- exactly (``trace="exact"``): :math:`D` vector–Jacobian products batched into one autograd call
  (``is_grads_batched``), for small :math:`D`;
- or by the Hutchinson–Skilling estimator (``trace="hutchinson"``, Hutchinson 1989, Skilling 1989):
  :math:`\mathrm{tr} A \approx \frac1P\sum_p v_p^\top A v_p` with :math:`P` probes ``v`` (Rademacher
  :math:`\pm1` or Gaussian) drawn **once** from ``generator`` and held fixed along the ODE, as the
  paper does; the estimate of :math:`\log p_\epsilon` is unbiased for any fixed-step solver (for an
  adaptive one the step sizes depend weakly on the probes).

Bits per dimension. With data scaled from :math:`2^{\text{bits}}`-level integers to ``data_range``
:math:`[a, b]`, a bin has width :math:`(b - a)/2^{\text{bits}}`, so

.. math:: \mathrm{bpd} = \frac{-\log p_\epsilon(x)}{D\ln 2} + \text{bits} - \log_2(b - a),

i.e. ``+7`` for 8-bit data on ``[-1, 1]`` and ``+8`` on ``[0, 1]`` (the paper's offset; score_sde
``likelihood.py``). It is an upper bound on the discrete bits/dim of 8-bit data only on
*dequantized* inputs: ``dequantize="uniform"`` recovers the integers :math:`k` from ``x`` and
evaluates at :math:`a + (b - a)(k + u)/2^{\text{bits}}`, :math:`u \sim U[0, 1)^D` (from
``generator``). Without dequantization (score_sde issue #24) the bpd of discrete data can come out
negative. ``data_range=None`` reports continuous bits/dim :math:`-\log p/(D\ln 2)` with no offset.

``nll`` is :math:`-\log p_\epsilon(x)` in nats, the model's density at the start time :math:`\epsilon`
(paper: :math:`\epsilon = 10^{-5}`), which differs from the data density :math:`p_0` by the
smoothing :math:`N(0, \sigma_\epsilon^2)`; compare against :math:`\log p_\epsilon` to see solver error.

Methods:

- ``"dopri5"`` (default) or any adaptive torchdiffeq method, at ``rtol``/``atol`` (the paper's RK45
  at 1e-5); the batch shares one step size;
- ``"euler"``, ``"heun"``, ``"rk4"``: our fixed-step Runge–Kutta on a time grid (``steps=`` and
  ``grid=``; default ``"quadratic"``; ``"karras"`` suits VE better, see :func:`likelihood_grid` and
  docs/likelihood.md);
- ``"adams"``: Adams predictor–corrector (AB3/AM4, PEC), one evaluation per interval — "likelihood on
  a budget": with ``precondition="local"`` (exact trace) it re-fits each sample's local Gaussian at
  every evaluation (:func:`_refit_adams`); ``steps=20, grid="power"`` (ρ = 1.5) is the recommended
  20-evaluation setting (docs/likelihood.md);
- ``"adaptive"`` (alias ``"dopri5_per_sample"``) / ``"bosh3_per_sample"``: the per-sample adaptive
  pairs of :mod:`scoresolve.solvers.ode_adaptive` (own step size per sample).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ._util import check_int, closest
from .models import ScoreModel, resolve_model
from .progress import Progress, ticking
from .sde import SDE
from .solvers.base import CountedScore
from .solvers.coefficients import lagrange_integral_weights
from .solvers.grids import check_grid, make_grid
from .solvers.ode import ADAPTIVE_METHODS, FIXED_METHODS, check_tolerances
from .solvers.ode_fixed import TABLEAUS, rk_step

__all__ = ["likelihood", "LikelihoodResult", "likelihood_grid", "bpd_offset", "FIXED_STEP_METHODS"]

State = tuple[Tensor, ...]

#: our fixed-step methods: name → score evaluations per step.
FIXED_STEP_METHODS: dict[str, int] = {"euler": 1, "heun": 2, "rk4": 4, "adams": 1}
#: order of the ``"adams"`` predictor (Adams–Bashforth; the Adams–Moulton corrector has one more),
#: ramping up from 1 over the first steps
ADAMS_ORDER = 3
_PER_SAMPLE = {"adaptive": "dopri5", "dopri5_per_sample": "dopri5", "bosh3_per_sample": "bosh3"}
DEFAULT_GRID = "quadratic"
DEFAULT_RHO = 3.0


@dataclass
class LikelihoodResult:
    """What :func:`likelihood` returns (per-sample tensors of shape ``(B,)``).

    Attributes:
        nll: :math:`-\\log p_\\epsilon(x)` in nats (of the dequantized ``x`` when dequantizing).
        bpd: bits per dimension (with the 8-bit offset when ``data_range`` is set).
        prior_logp: :math:`\\log p_T(x_T)` at the end of the ODE.
        delta_logp: :math:`\\int_\\epsilon^T \\nabla\\cdot F\\,dt`.
        z: the latent :math:`x_T`.
        nfe: score evaluations (model calls; exact traces count one per call, whatever D).
        nfe_per_sample: evaluations each sample received (differs for the per-sample method).
        eps: the start time.
        offset: the bits/dim offset added (0 for continuous data).
        x: the point the density was evaluated at (the dequantized input).
        info: extras (method, trace, probes, grid, ...).
    """

    nll: Tensor
    bpd: Tensor
    prior_logp: Tensor
    delta_logp: Tensor
    z: Tensor
    nfe: int
    nfe_per_sample: Tensor
    eps: float
    offset: float
    x: Tensor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def logp(self) -> Tensor:
        """:math:`\\log p_\\epsilon(x)` in nats (``-nll``)."""
        return -self.nll


def bpd_offset(data_range: tuple[float, float] | None, bits: int = 8) -> float:
    r"""The bits/dim offset :math:`\text{bits} - \log_2(b - a)` (7 for 8-bit data on [-1, 1], 8 on [0, 1])."""
    if data_range is None:
        return 0.0
    a, b = _check_range(data_range)
    return float(bits) - math.log2(b - a)


def _check_range(data_range: Any) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise TypeError(f"data_range must be a pair (low, high), e.g. (-1, 1), got {data_range!r}") from None
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        raise ValueError(f"data_range must be finite with low < high, got {data_range!r}")
    return a, b


@torch.no_grad()
def likelihood_grid(sde: SDE, steps: int, eps: float, grid: str | Sequence[float] | Tensor = DEFAULT_GRID, **opts: Any):
    r"""The increasing time grid (``steps + 1`` float64 times from ``eps`` to ``T``) of the fixed-step
    likelihood methods.

    ``grid`` is a registered grid name (``uniform``, ``quadratic``, ``log_snr``, ``karras``, ...), an
    explicit sequence of times (either order), or ``"power"``: times uniform in :math:`t^{1/\rho}`
    (``rho=3`` by default; ``quadratic`` is :math:`\rho = 2`), denser near :math:`t = \epsilon` where
    the probability-flow ODE is stiffest.
    """
    if isinstance(grid, str) and grid == "power":
        rho = float(opts.pop("rho", DEFAULT_RHO))
        if opts:
            raise TypeError(f"unknown grid option(s) {sorted(opts)} for grid 'power' (it takes rho)")
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
        u = torch.linspace(sde.T ** (1 / rho), eps ** (1 / rho), steps + 1, dtype=torch.float64)
        g = u**rho
        g[0], g[-1] = sde.T, eps
        g = check_grid(g, sde, name="grid 'power'")
    elif isinstance(grid, str):
        g = make_grid(grid, sde, steps, eps, **opts)
    else:
        g = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
        if g.ndim == 1 and g.numel() >= 2 and g[0] < g[-1]:
            g = g.flip(0)
        g = check_grid(g, sde)
    return g.flip(0)


def _dequantize(x: Tensor, data_range: tuple[float, float], bits: int, generator: torch.Generator | None) -> Tensor:
    a, b = data_range
    levels = 2**bits
    u = (x - a) / (b - a) * (levels - 1)  # 0 .. levels-1 on the lattice
    k = torch.round(u)
    off = (u - k).abs().max()
    if float(off) > 1e-3:
        raise ValueError(
            f"dequantize='uniform' expects {bits}-bit data scaled to data_range={data_range} "
            f"(x = low + (high - low) k / {levels - 1}, k integer); x is off that lattice by up to "
            f"{float(off):.3g} levels. Pass dequantize=None for continuous data."
        )
    noise = torch.rand(x.shape, generator=generator, dtype=torch.float64)
    return (a + (b - a) * (k.to(torch.float64).cpu() + noise) / levels).to(device=x.device, dtype=x.dtype)


class _Field:
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
        d = x[0].numel()
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            s = self.score(xg, t)
            if self.trace == "exact":
                tr = self._exact_trace(s, xg, d)
            else:
                assert self.probes is not None
                v = self.probes if rows is None else self.probes.index_select(1, rows)
                (jv,) = torch.autograd.grad(s, xg, grad_outputs=v, is_grads_batched=True)
                tr = (jv * v).reshape(v.shape[0], b, -1).sum(-1).mean(0)
        return self._finish(x, t, s.detach(), tr.detach())

    def _finish(self, x: Tensor, t: Tensor, s: Tensor, tr: Tensor) -> State:
        b, d = x.shape[0], x[0].numel()
        g2 = self.sde.diffusion(t) ** 2
        dx = self.sde.pf_drift(x, t, s)
        div = d * self.sde.drift_coef(t) - 0.5 * g2 * tr
        if not bool(torch.isfinite(div).all()):
            bad = ~torch.isfinite(div)
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
        y1 = _adams_update(y, w, hist)
        if i < n - 1:
            counted.step = i + 1
            hist.insert(0, f(g[i + 1].expand(b), y1))
            del hist[ADAMS_ORDER + 1 :]
            k = min(ADAMS_ORDER + 1, len(hist))
            w = lagrange_integral_weights([tt[i + 1 - j] for j in range(k)], tt[i], tt[i + 1])
            y1 = _adams_update(y, w, hist)
        y = y1
    return y


def _adams_update(y: State, w: Sequence[float], derivs: Sequence[State]) -> State:
    """``y + sum_j w_j f_j`` component by component (``derivs`` newest first, as many as ``w``)."""
    return tuple(yc + sum(wj * fj[c] for wj, fj in zip(w, derivs[: len(w)], strict=True)) for c, yc in enumerate(y))


class _LocalFrame:
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


def _preconditioned_fixed_step(
    fld: _Field, sde: SDE, x: Tensor, times: Tensor, method: str, counted: CountedScore
) -> tuple[State, Tensor]:
    r"""Fixed-step Runge–Kutta for the likelihood ODE in the locally Gaussian coordinates
    (:class:`_LocalFrame`) of the start :math:`(x, \epsilon)`. The first Runge–Kutta stage reuses
    the evaluation that gave the frame; :math:`\log p_\epsilon(x) = \log p_T(x_T) + r_T + \tfrac12\sum_i
    \ln(v_{i,T}/v_{i,\epsilon})`. Returns ``((x_T, r_T), log-det term)``."""
    b = x.shape[0]
    g = times.to(x.device)
    t0 = g[0].expand(b).to(x.dtype)
    counted.step = 0
    s0, jac = fld.score_and_jacobian(t0, x)
    fld.first = (s0, jac.diagonal(dim1=1, dim2=2).sum(1))
    frame = _LocalFrame(sde, x, t0, s0, jac)

    def f(t: Tensor, yy: State) -> State:
        xt = frame.to_x(t, yy[0]).reshape(x.shape)
        return frame.residual(t, xt, *fld(t, (xt, yy[1])))

    y: State = (frame.to_y(t0, x), torch.zeros(b, device=x.device, dtype=x.dtype))
    y = integrate_on_grid(f, times, y, method, counted)
    tT = g[-1].expand(b).to(x.dtype)
    return (frame.to_x(tT, y[0]).reshape(x.shape), y[1]), frame.gaussian_logdet(t0, tT)


def _refit_adams(fld: _Field, sde: SDE, x: Tensor, times: Tensor, counted: CountedScore) -> tuple[State, Tensor]:
    r"""``method="adams"`` with ``precondition="local"``: Adams predictor–corrector in locally
    Gaussian coordinates **re-fitted at every evaluation** (:class:`_LocalFrame`; the exact trace
    computes the full Jacobian anyway, so a new frame costs no evaluation).

    Step :math:`t_n \to t_{n+1}` in the frame fitted at the last evaluation: the residual field
    (zero at the fit point) is extrapolated from the stored evaluations by Adams–Bashforth of order
    :data:`ADAMS_ORDER` (P), evaluated once at the predicted point (E, which also gives the next
    frame), and the step is redone with Adams–Moulton of order ``ADAMS_ORDER + 1`` (C): one
    evaluation per step, PEC mode (Hairer, Nørsett & Wanner, *Solving ODEs I*, III.1). The last step
    is predictor-only, so ``steps`` intervals cost exactly ``steps`` evaluations. Exact for Gaussian
    data; the stored evaluations are re-expressed in each new frame, so the frames never couple samples.
    Returns ``((x_T, r_T), 0)`` with the Gaussian log-determinants already in ``r_T``.
    """
    b = x.shape[0]
    tt = [float(v) for v in times]

    def tv(v: float) -> Tensor:
        return torch.full((b,), v, device=x.device, dtype=x.dtype)

    def evaluate(i: int, xi: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], _LocalFrame]:
        counted.step = i
        t = tv(tt[i])
        s, jac = fld.score_and_jacobian(t, xi)
        dx, div = fld._finish(xi, t, s, jac.diagonal(dim1=1, dim2=2).sum(1))
        return (t, xi, dx, div), _LocalFrame(sde, xi, t, s, jac)

    record, frame = evaluate(0, x)
    hist = [record]
    xn = x
    r = torch.zeros(b, device=x.device, dtype=x.dtype)
    n_int = len(tt) - 1
    for n in range(n_int):
        t0, t1 = tv(tt[n]), tv(tt[n + 1])
        y0, r0 = frame.to_y(t0, xn), torch.zeros_like(r)
        k = min(ADAMS_ORDER, len(hist))
        res = [frame.residual(*h) for h in hist[:k]]
        w = lagrange_integral_weights([tt[n - j] for j in range(k)], tt[n], tt[n + 1])
        y1, dr = _adams_update((y0, r0), w, res)
        new_frame = frame
        if n < n_int - 1:  # E and C; the last step is predictor-only (no evaluation at T)
            record, new_frame = evaluate(n + 1, frame.to_x(t1, y1).reshape(x.shape))
            hist.insert(0, record)
            del hist[ADAMS_ORDER + 1 :]
            k = min(ADAMS_ORDER + 1, len(hist))
            res = [frame.residual(*h) for h in hist[:k]]
            w = lagrange_integral_weights([tt[n + 1 - j] for j in range(k)], tt[n], tt[n + 1])
            y1, dr = _adams_update((y0, r0), w, res)
        r = r + dr + frame.gaussian_logdet(t0, t1)
        xn = frame.to_x(t1, y1).reshape(x.shape)
        frame = new_frame
    return (xn, r), torch.zeros_like(r)


def likelihood(
    model: Callable[[Tensor, Tensor], Tensor] | ScoreModel,
    sde: SDE | None = None,
    x: Tensor | None = None,
    *,
    method: str = "dopri5",
    steps: int | None = None,
    grid: str | Sequence[float] | Tensor | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    trace: Literal["exact", "hutchinson"] = "hutchinson",
    probes: int = 1,
    noise: Literal["rademacher", "gaussian"] = "rademacher",
    generator: torch.Generator | None = None,
    eps: float = 1e-5,
    dequantize: Literal["uniform"] | None = None,
    data_range: tuple[float, float] | None | Literal["model"] = "model",
    bits: int = 8,
    grid_options: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    precondition: Literal["none", "local"] = "none",
    progress: bool | None = None,
) -> LikelihoodResult:
    r"""Per-sample negative log-likelihood and bits/dim of ``x`` under the score model, through the
    probability-flow ODE (see the module docstring for the math).

    Args:
        model: a score callable ``score(x, t)`` or a :class:`~scoresolve.ScoreModel` (which may
            supply ``sde`` and ``data_range``).
        sde: the forward SDE (default: the model's).
        x: data, ``(B, *dims)``.
        method: ``"dopri5"`` (default, the paper's RK45 analogue) or another adaptive torchdiffeq
            method; ``"euler"`` / ``"heun"`` / ``"rk4"`` (our fixed-step Runge–Kutta, with ``steps``);
            ``"adams"`` (Adams PEC, one evaluation per step: the few-evaluation choice);
            ``"adaptive"`` / ``"dopri5_per_sample"`` / ``"bosh3_per_sample"`` (per-sample steps).
        steps: grid steps of a fixed-step method (NFE = steps × 1/2/4 for euler/heun/rk4, = steps
            for adams).
        grid: grid of a fixed-step method: a name (``"quadratic"`` default, ``"karras"``,
            ``"log_snr"``, ``"uniform"``, ``"power"``) or explicit times from ``eps`` to ``T``.
        rtol, atol: tolerances of the adaptive methods (> 0; 1e-5 as in the paper).
        trace: ``"exact"`` (D vector–Jacobian products per evaluation; small D) or ``"hutchinson"``.
        probes: Hutchinson probes per sample (averaged; fixed along the ODE).
        noise: probe distribution, ``"rademacher"`` (default, lower variance) or ``"gaussian"``.
        generator: fixes the probes and the dequantization noise.
        eps: start time of the ODE (1e-5, the paper's likelihood setting).
        dequantize: ``"uniform"`` to evaluate at uniformly dequantized 8-bit data; ``None`` for
            continuous data.
        data_range: ``(low, high)`` of the data for the bits/dim offset (``(-1, 1)`` → +7,
            ``(0, 1)`` → +8); ``"model"`` (default) takes the ScoreModel's ``data_range`` if it has
            one, else ``None`` (continuous bits/dim, no offset).
        bits: bits per value of the quantized data (8).
        grid_options: options of the grid (e.g. ``{"rho": 3}`` for ``"power"``).
        options: extra torchdiffeq options (adaptive torchdiffeq methods), or ``first_step`` /
            ``max_steps`` for the per-sample methods.
        prior_logp: the log-density used at :math:`T` instead of the SDE's prior
            (:meth:`SDE.prior_logp`), e.g. the exact :math:`\log p_T` of an analytic model, to
            separate the prior mismatch :math:`p_T \neq` prior from solver error.
        precondition: ``"local"`` (fixed-step methods with the exact trace): integrate in the
            coordinates of each sample's local Gaussian, read off the score's Jacobian (no extra
            evaluation): fitted once at the start for Runge–Kutta (:func:`_preconditioned_fixed_step`),
            re-fitted at every evaluation for ``"adams"`` (:func:`_refit_adams`). ``"none"`` (default).
        progress: a tqdm bar over the score evaluations (:mod:`scoresolve.progress`).

    Returns:
        :class:`LikelihoodResult`.

    Example::

        res = ss.likelihood(model, ss.VPSDE(), x, method="adams", steps=20, grid="power",
                            grid_options={"rho": 1.5}, trace="exact", precondition="local")
        res.bpd.mean()
    """
    score_fn, sde = resolve_model(model, sde)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor of data (B, *dims), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (B, *dims) with B >= 1, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf")
    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
    if noise not in ("rademacher", "gaussian"):
        raise ValueError(f"noise must be 'rademacher' or 'gaussian', got {noise!r}")
    check_int(probes, "probes")
    eps = float(eps)
    if not (math.isfinite(eps) and 0 < eps < sde.T):
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps!r}")
    check_int(bits, "bits", max=32)
    if isinstance(data_range, str):
        if data_range != "model":
            raise ValueError(f"data_range must be (low, high), None or 'model', got {data_range!r}")
        data_range = model.data_range if isinstance(model, ScoreModel) else None
    rng = _check_range(data_range) if data_range is not None else None
    if dequantize not in (None, "uniform"):
        raise ValueError(f"dequantize must be 'uniform' or None, got {dequantize!r}")
    if rng is not None:
        lo, hi = rng
        tol = 1e-6 * (hi - lo)
        out = (x < lo - tol) | (x > hi + tol)
        if bool(out.any()):
            raise ValueError(
                f"x has {int(out.sum())} values outside data_range={data_range} (min {float(x.min()):.4g}, "
                f"max {float(x.max()):.4g}); bits/dim needs data in that range (scale it, or pass "
                f"data_range=None for continuous bits/dim)"
            )
    if dequantize == "uniform":
        if rng is None:
            raise ValueError("dequantize='uniform' needs data_range=(low, high), e.g. (-1, 1)")
        x = _dequantize(x, rng, bits, generator)

    # --- method -------------------------------------------------------------------------------
    fixed = method in FIXED_STEP_METHODS or method in FIXED_METHODS
    per_sample = method in _PER_SAMPLE
    if method in FIXED_STEP_METHODS and method in FIXED_METHODS:
        pass  # ours take precedence for euler / rk4 (torchdiffeq's rk4 is the 3/8 rule)
    if not (fixed or per_sample or method in ADAPTIVE_METHODS):
        valid = sorted(set(FIXED_STEP_METHODS) | set(_PER_SAMPLE) | set(ADAPTIVE_METHODS) | set(FIXED_METHODS))
        hint = closest(method, valid, n=2)
        raise ValueError(f"unknown likelihood method={method!r}.{hint} Valid: {', '.join(valid)}")
    if fixed:
        if steps is None and grid is None:
            raise ValueError(f"method={method!r} is fixed-step: pass steps= (e.g. steps=5 for rk4 = 20 evaluations)")
        if steps is not None:
            check_int(steps, "steps")
        if grid is not None and not isinstance(grid, str):
            times = likelihood_grid(sde, 0, eps, grid)
            if steps is not None and steps != times.numel() - 1:
                raise ValueError(f"steps={steps} disagrees with the {times.numel() - 1} intervals of grid")
            if not math.isclose(float(times[0]), eps, rel_tol=1e-9):
                raise ValueError(f"the grid must start at eps={eps}, got {float(times[0])}")
        else:
            assert steps is not None
            times = likelihood_grid(sde, steps, eps, grid or DEFAULT_GRID, **(grid_options or {}))
    else:
        if steps is not None or grid is not None:
            raise ValueError(f"method={method!r} is adaptive: it takes rtol/atol, not steps= or grid=")
        rtol, atol = check_tolerances(rtol, atol)

    # --- probes ---------------------------------------------------------------------------------
    pr: Tensor | None = None
    if trace == "hutchinson":
        shape = (probes, *x.shape)
        if noise == "rademacher":
            pr = torch.randint(0, 2, shape, generator=generator, dtype=torch.int64).to(x.dtype) * 2 - 1
        else:
            pr = torch.randn(shape, generator=generator, dtype=x.dtype)
        pr = pr.to(x.device)

    bar = Progress(None, f"likelihood of {x.shape[0]} samples ({method})", unit="eval", progress=progress)
    counted = CountedScore(ticking(score_fn, bar))
    d = x[0].numel()
    chunk = max(1, min(d, (1 << 24) // max(1, x.shape[0] * d)))
    fld = _Field(counted, sde, trace, pr, eps, float(sde.T), chunk)
    b = x.shape[0]
    y0: State = (x.detach(), torch.zeros(b, device=x.device, dtype=x.dtype))
    info: dict[str, Any] = {"method": method, "trace": trace, "probes": probes if trace == "hutchinson" else 0}

    if precondition not in ("none", "local"):
        raise ValueError(f"precondition must be 'none' or 'local', got {precondition!r}")
    if precondition == "local" and not (trace == "exact" and method in FIXED_STEP_METHODS):
        raise ValueError(
            "precondition='local' needs trace='exact' and a fixed-step method (euler, heun, rk4): it uses the "
            "score's full Jacobian at the start"
        )
    lp_jac: Tensor | None = None
    if precondition == "local" and method == "adams":
        y, lp_jac = _refit_adams(fld, sde, x, times, counted)
        nfe_ps = torch.full((b,), counted.nfe, dtype=torch.long)
        info["grid"] = times
        info["precondition"] = "local (re-fitted at every evaluation)"
    elif precondition == "local":
        y, lp_jac = _preconditioned_fixed_step(fld, sde, x, times, method, counted)
        nfe_ps = torch.full((b,), counted.nfe, dtype=torch.long)
        info["grid"] = times
        info["precondition"] = "local"
    elif fixed and method in FIXED_STEP_METHODS:
        y = integrate_on_grid(fld, times, y0, method, counted)
        nfe_ps = torch.full((b,), counted.nfe, dtype=torch.long)
        info["grid"] = times
    elif per_sample:
        from .solvers.ode_adaptive import integrate_adaptive

        opts = dict(options or {})
        res = integrate_adaptive(
            lambda t, yy, rows: fld(t, yy, rows),
            y0,
            eps,
            float(sde.T),
            rtol=rtol,
            atol=atol,
            pair=_PER_SAMPLE[method],
            first_step=opts.pop("first_step", None),
            max_steps=opts.pop("max_steps", 10_000),
        )
        if opts:
            raise TypeError(f"unknown option(s) {sorted(opts)} for method={method!r} (first_step, max_steps)")
        y = res.y
        nfe_ps = res.nfe_per_sample.cpu()
        info["row_evals"] = res.info["row_evals"]
    else:
        from torchdiffeq import odeint

        def td_func(t: Tensor, yy: State) -> State:
            return fld(t, yy, None)

        if fixed:
            tt = times.to(device=x.device)
            opts = dict(options or {})
        else:
            tt = torch.tensor([eps, float(sde.T)], dtype=torch.float64, device=x.device)
            opts = {"step_t": torch.tensor([float(sde.T)], dtype=torch.float64, device=x.device), **(options or {})}
        ys = odeint(td_func, y0, tt, rtol=rtol, atol=atol, method=method, options=opts)
        y = (ys[0][-1], ys[1][-1])
        nfe_ps = torch.full((b,), counted.nfe, dtype=torch.long)
    counted.check()
    bar.close(evaluations=counted.nfe)
    info["clamped_evals"] = fld.clamped

    z, delta = y[0].detach(), y[1].detach()
    if lp_jac is not None:
        delta = delta + lp_jac
    prior = sde.prior_logp(z) if prior_logp is None else prior_logp(z).to(z.dtype).reshape(z.shape[0])
    logp = prior + delta
    nll = -logp
    offset = bpd_offset(rng, bits) if rng is not None else 0.0
    bpd = nll / (d * math.log(2)) + offset
    return LikelihoodResult(
        nll=nll,
        bpd=bpd,
        prior_logp=prior,
        delta_logp=delta,
        z=z,
        nfe=counted.nfe,
        nfe_per_sample=nfe_ps,
        eps=eps,
        offset=offset,
        x=x,
        info=info,
    )
