r"""Gotta Go Fast: an adaptive solver of the reverse SDE (Jolicoeur-Martineau, Li, Piché-Taillefer,
Kachman, Mitliagkas 2021, "Gotta Go Fast When Generating Data with Score-Based Models",
arXiv:2105.14080, Algorithm 1).

One step from :math:`t` to :math:`t - h` with a Brownian increment :math:`W` (variance :math:`h`),
reverse drift :math:`b(x, t) = f(x, t) - g(t)^2 s(x, t)`:

.. math::
    x'        &= x - h\, b(x, t) + g(t)\, W                     &\text{(Euler–Maruyama)}\\
    \tilde x  &= x - h\, b(x', t-h) + g(t-h)\, W                &\\
    x''       &= \tfrac12 (x' + \tilde x)                        &\text{(stochastic improved Euler)}

The error estimate is :math:`x' - x''`, measured against the mixed tolerance
:math:`\mathrm{atol} + \mathrm{rtol}\max(|x'|, |x'_{prev}|)` (the paper's rule, with
:math:`x'_{prev}` the Euler–Maruyama proposal of the last accepted step; the paper takes the max of
the two tolerances where we add them, which differs by at most a factor 2) as an RMS over the
entries. A step is accepted when that ratio :math:`E \le 1`, and then the *higher-order* solution
:math:`x''` is kept (extrapolation). The next step is :math:`h \leftarrow \min(t - \epsilon,\
\theta h E^{-r})`, with the paper's :math:`\theta = 0.9`, :math:`r = 0.9` (:math:`r = 1/(q+1)` in
:class:`~scoresolve.solvers.controllers.Controller`'s terms) and ``h_init = 0.01``; the step-size
factor is also clipped to ``[min_factor, max_factor]``.

Two score evaluations per attempted step. Strong order 1 (the SDEs here have additive noise, where
the stochastic improved Euler method has strong order 1; the error estimate has order 1/2 relative
to it, hence the step-size exponent).

Step-size control (:class:`~scoresolve.solvers.controllers.Controller`, ``norm=``):

* ``"batch_rms"`` (default): one step size for the batch from the RMS over all its entries, as the
  paper's code. Cheapest (ANCHORS: 36 NFE for 2× the floor on the digits mixture), but samples are
  coupled through the shared step sizes.
* ``"batch_max"``: one step size from the worst sample: every sample meets the tolerance; ~3× the
  model calls.
* ``"per_sample"``: each sample has its own time and step size; finished samples are masked out of
  the model calls, so a call may hold fewer rows. No coupling: a sample depends only on its own noise
  (with ``seeds=``, on its seed). The loop runs until the slowest sample is done: 1.6–1.9× more model
  calls than ``batch_rms`` at equal quality. ``SampleResult.info["nfe_per_sample"]`` gives the
  evaluations each sample took part in, ``info["row_evaluations"]`` their sum.

Noise: the Brownian path is sampled consistently across rejections. An increment drawn for a
rejected step is never thrown away: the retried, shorter step takes its part of it from the Brownian
bridge, :math:`W_{h'} \mid W_h \sim N(\tfrac{h'}{h} W_h, \tfrac{h'(h-h')}{h})`, and the rest is kept
for the following steps. Redrawing fresh noise after a rejection (the paper's Algorithm 1) would
favour small increments, a bias. All noise comes from the run's noise source (two normal draws per
attempted step, for every row, so per-sample seeds give batch-independent samples).

Ends at ``eps``; like the paper's samplers it is followed by the Tweedie denoising step by default
(``denoise_default``: one more evaluation, counted by :func:`scoresolve.sample`).

Default tolerances: the paper's ``rtol = 0.05`` and ``atol = 0.0078`` for images scaled to
``[-1, 1]`` (2/255: one 8-bit level on a ``[0, 1]`` scale is 1/255 ≈ 0.0039, and the ``[-1, 1]`` scale
doubles it). For data on another scale, scale ``atol`` with it.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from ..registry import SOLVERS
from ..sde import SDE
from .base import SolveContext, Solver, check_positive_int
from .controllers import Controller

__all__ = ["GottaGoFast"]


def _bc(c: Tensor, x: Tensor) -> Tensor:
    """(B,) float64 coefficient → broadcastable against x in x's dtype."""
    return SDE.bcast(c.to(x.dtype), x)


def _split_increment(
    pieces: list[tuple[Tensor, Tensor]], h: Tensor, xi_bridge: Tensor, xi_fresh: Tensor
) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    r"""Brownian increment over ``[0, h]`` (per row) consistent with the increments already known.

    ``pieces`` are consecutive future intervals ``(length (B,), increment (B, *dims))`` starting at
    the current time. Pieces inside ``[0, h]`` are used whole, the one straddling ``h`` is split by the
    Brownian bridge (``xi_bridge``), and time beyond all pieces gets fresh noise (``xi_fresh``). At
    most one piece straddles ``h`` in each row, so each normal draw is used at most once per row.

    Returns the increment and the leftover pieces after ``h``.
    """
    rem = h.clone()
    total = torch.zeros_like(xi_fresh)
    left: list[tuple[Tensor, Tensor]] = []
    for length, w in pieces:
        take = torch.minimum(rem, length)
        pos = length > 0
        safe = torch.where(pos, length, torch.ones_like(length))
        frac = torch.where(pos, take / safe, torch.zeros_like(length))
        var = torch.where(pos, take * (length - take) / safe, torch.zeros_like(length)).clamp_min(0.0)
        w_take = _bc(frac, w) * w + _bc(var.sqrt(), w) * xi_bridge
        total = total + w_take
        left.append((length - take, w - w_take))
        rem = rem - take
    total = total + _bc(rem.clamp_min(0.0).sqrt(), xi_fresh) * xi_fresh
    return total, left


@SOLVERS.register(
    "gotta_go_fast",
    description="adaptive reverse-SDE solver (Jolicoeur-Martineau et al. 2021): EM + improved Euler, rtol/atol/norm",
)
class GottaGoFast(Solver):
    r"""Adaptive Euler–Maruyama / stochastic improved Euler solver of the reverse SDE
    (Jolicoeur-Martineau et al. 2021, arXiv:2105.14080). See the module docstring for the method.

    Stochastic; adaptive (``sample(..., solver="gotta_go_fast")`` takes no ``steps``/``grid``);
    2 evaluations per attempted step, plus the final denoising (on by default).

    Args:
        rtol: relative tolerance (> 0), paper: 0.05.
        atol: absolute tolerance (> 0), paper: 0.0078 for data in ``[-1, 1]``.
        norm: ``"batch_rms"`` (default), ``"batch_max"`` or ``"per_sample"`` (see the module
            docstring for the trade-off).
        h_init: first step size in ``t`` (paper: 0.01).
        safety: :math:`\theta` (0.9).
        exponent: :math:`r` in :math:`h \leftarrow \theta h E^{-r}`, in ``(0, 1)`` (paper: 0.9).
        min_factor, max_factor: bounds on the step-size ratio per attempt (0.2, 10).
        max_steps: give up (``RuntimeError``) after this many attempted steps.
    """

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 2
    stochastic: ClassVar[bool] = True
    adaptive: ClassVar[bool] = True
    reference: ClassVar[str] = (
        "Jolicoeur-Martineau et al. 2021, Gotta Go Fast When Generating Data with Score-Based Models, arXiv:2105.14080"
    )
    denoise_default: ClassVar[bool] = True

    def __init__(
        self,
        rtol: float = 0.05,
        atol: float = 0.0078,
        norm: str = "batch_rms",
        h_init: float = 0.01,
        safety: float = 0.9,
        exponent: float = 0.9,
        min_factor: float = 0.2,
        max_factor: float = 10.0,
        max_steps: int = 100_000,
    ) -> None:
        self.controller = Controller(
            rtol=rtol, atol=atol, norm=norm, safety=safety, min_factor=min_factor, max_factor=max_factor
        )
        r = float(exponent)
        if not (math.isfinite(r) and 0.0 < r < 1.0):
            raise ValueError(f"exponent must lie in (0, 1) (paper: 0.9, theory: 0.5), got {exponent!r}")
        self.exponent = r
        h0 = float(h_init)
        if not (math.isfinite(h0) and h0 > 0):
            raise ValueError(f"h_init must be a finite number > 0, got {h_init!r}")
        self.h_init = h0
        self.max_steps = check_positive_int(max_steps, "max_steps")

    @property
    def error_order(self) -> float:
        """The ``error_order`` q handed to the controller: ``r = 1/(q+1)``."""
        return 1.0 / self.exponent - 1.0

    def __repr__(self) -> str:
        c = self.controller
        return (
            f"GottaGoFast(rtol={c.rtol}, atol={c.atol}, norm={c.norm!r}, h_init={self.h_init}, "
            f"safety={c.safety}, exponent={self.exponent})"
        )

    def _attempt(
        self, ctx: SolveContext, x: Tensor, t: Tensor, h: Tensor, w: Tensor, last: Tensor, t_end: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One attempted step on the rows given: returns ``(x_em, x_extrapolated, t_next)``."""
        sde = ctx.sde
        t_next = torch.where(last, torch.full_like(t, t_end), t - h)
        s1 = ctx.score(x, t)
        g1 = sde.diffusion(t)
        b1 = _bc(sde.drift_coef(t), x) * x - _bc(g1**2, x) * s1
        hb = _bc(h, x)
        x_em = x - hb * b1 + _bc(g1, x) * w
        s2 = ctx.score(x_em, t_next)
        g2 = sde.diffusion(t_next)
        b2 = _bc(sde.drift_coef(t_next), x) * x_em - _bc(g2**2, x) * s2
        x_tilde = x - hb * b2 + _bc(g2, x) * w
        return x_em, 0.5 * (x_em + x_tilde), t_next

    def solve(self, ctx: SolveContext, x: Tensor) -> Tensor:
        sde = ctx.sde
        ctl = self.controller
        t_end = float(ctx.t_end)
        b = x.shape[0]
        dev = x.device
        f64 = torch.float64
        t = torch.full((b,), float(sde.T), device=dev, dtype=f64)
        h = torch.full((b,), min(self.h_init, float(sde.T) - t_end), device=dev, dtype=f64)
        x = x.clone()
        x_prev = x.clone()  # the paper's x'_prev, initialised with x
        pieces: list[tuple[Tensor, Tensor]] = []
        nfe_rows = torch.zeros(b, dtype=torch.long, device=dev)
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        times = [float(sde.T)]
        n_acc = n_rej = 0
        per_sample = ctl.per_sample
        it = 0
        while True:
            if per_sample:
                if bool(done.all()):
                    break
            elif float(t[0]) <= t_end:
                break
            if it >= self.max_steps:
                raise RuntimeError(
                    f"gotta_go_fast: no convergence after max_steps={self.max_steps} attempted steps "
                    f"(t = {float(t.max()):.4g}); loosen rtol/atol or raise max_steps"
                )
            ctx.score.step = it
            remaining = t - t_end
            h_eff = torch.minimum(h, remaining)
            if float(h_eff[~done].min() if per_sample else h_eff.min()) <= 1e-14:
                raise RuntimeError(
                    "gotta_go_fast: the step size underflowed; the score may be non-finite or rtol/atol too tight"
                )
            last = h_eff >= remaining * (1 - 1e-12)
            xi_b = ctx.noise.randn_like(x)
            xi_f = ctx.noise.randn_like(x)
            w, left = _split_increment(pieces, h_eff, xi_b, xi_f)
            if per_sample:
                idx = (~done).nonzero().squeeze(1)
                xa, ta, ha, wa, la = x[idx], t[idx], h_eff[idx], w[idx], last[idx]
            else:
                idx = None
                xa, ta, ha, wa, la = x, t, h_eff, w, last
            x_em, x_ext, t_next = self._attempt(ctx, xa, ta, ha, wa, la, t_end)
            prev = x_prev[idx] if idx is not None else x_prev
            ratio = ctl.ratio(x_em - x_ext, prev, x_em)
            accept, h_new = ctl.propose(ratio, ha, self.error_order)
            acc_b = SDE.bcast(accept, xa)
            x_new = torch.where(acc_b, x_ext, xa)
            xp_new = torch.where(acc_b, x_em, prev)
            t_new = torch.where(accept, t_next, ta)
            if idx is not None:
                x[idx], x_prev[idx], t[idx], h[idx] = x_new, xp_new, t_new, h_new
                nfe_rows[idx] += 2
                acc_full = torch.zeros(b, dtype=torch.bool, device=dev)
                acc_full[idx] = accept
                done = t <= t_end
            else:
                x, x_prev, t, h = x_new, xp_new, t_new, h_new
                nfe_rows += 2
                acc_full = accept
            # Brownian path: accepted rows consume [0, h]; rejected rows keep it as known increment
            keep = ~acc_full
            first = (torch.where(keep, h_eff, torch.zeros_like(h_eff)), torch.where(SDE.bcast(keep, w), w, 0.0))
            pieces = [p for p in [first, *left] if bool((p[0] > 0).any())]
            if per_sample:
                n_acc_it = int(accept.sum())
                n_acc += n_acc_it
                n_rej += int(accept.numel()) - n_acc_it
            elif bool(accept[0]):
                n_acc += 1
                times.append(float(t[0]))
            else:
                n_rej += 1
            ctx.after_step(it, t.to(x.dtype), x, x)
            it += 1
        # info: nfe_per_sample ((B,) evaluations each sample took part in, final denoising excluded),
        # row_evaluations (their sum), accepted/rejected steps (per row for per_sample, per batch
        # otherwise), attempted_steps (loop iterations, 2 model calls each), times (batch norms)
        ctx.info["x_mean"] = x
        ctx.info["nfe_per_sample"] = nfe_rows
        ctx.info["row_evaluations"] = int(nfe_rows.sum())
        ctx.info["accepted_steps"] = n_acc
        ctx.info["rejected_steps"] = n_rej
        ctx.info["attempted_steps"] = it
        if not per_sample:
            ctx.info["times"] = torch.tensor(times, dtype=f64)
        return x
