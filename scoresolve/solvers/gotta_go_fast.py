r"""Gotta Go Fast: an adaptive solver of the reverse SDE (Jolicoeur-Martineau et al. 2021, arXiv:2105.14080,
Algorithm 1), an ``attempt`` on the per-sample loop of :mod:`scoresolve.solvers.adaptive`.

One attempt from :math:`t` to :math:`t - h` with a Brownian increment :math:`W`, reverse drift
:math:`b = f - g^2 s`: :math:`x' = x - h\,b(x, t) + g(t)W` (Euler–Maruyama), :math:`\tilde x = x - h\,b(x', t-h)
+ g(t-h)W`, :math:`x'' = (x' + \tilde x)/2` (stochastic improved Euler), kept when the error :math:`x' - x''`
normed by the tolerance is :math:`\le 1`; :math:`h \leftarrow \theta h E^{-r}` (:math:`\theta = 0.9, r = 0.9`).
Strong order 1 (additive noise), 2 evaluations per attempt, plus the final Tweedie step by default.
Tolerance ``"noise"`` (default: :math:`\mathrm{atol} + \mathrm{rtol}\,\sigma_{t-h}`) or the paper's ``"state"``;
step sizes in log-SNR (default) or ``t``; no growth after a rejection (Hairer et al., *Solving ODEs I*, II.4). A
rejected attempt's increment is kept and split by the Brownian bridge (:func:`scoresolve.noise.brownian_increment`),
never redrawn. Why these defaults, and what they buy: docs/stochastic_samplers.md.
"""

from __future__ import annotations

import copy
import math
from typing import ClassVar

import torch
from torch import Tensor

from .._util import check_int, one_of
from ..noise import brownian_increment
from ..registry import SOLVERS
from ..sde import SDE
from .adaptive import Proposal, run_adaptive
from .base import SolveContext, Solver
from .controllers import Controller

__all__ = ["GottaGoFast", "TOLERANCES", "VARIABLES"]

#: tolerance rules: ``"noise"`` (atol + rtol·σ_t, default) and ``"state"``
#: (the paper's atol + rtol·max(|x'|, |x'_prev|))
TOLERANCES: tuple[str, ...] = ("noise", "state")
#: variables the step size is controlled in: ``"log_snr"`` (λ, default) and ``"t"`` (the paper's)
VARIABLES: tuple[str, ...] = ("log_snr", "t")
# default (rtol, atol) per tolerance rule
_DEFAULT_TOLS: dict[str, tuple[float, float]] = {"noise": (1.0, 0.0078), "state": (0.05, 0.0078)}


def _bc(c: Tensor, x: Tensor) -> Tensor:
    """(B,) float64 coefficient → broadcastable against x in x's dtype."""
    return SDE.bcast(c.to(x.dtype), x)


@SOLVERS.register(
    "gotta_go_fast",
    description="adaptive reverse-SDE solver (Jolicoeur-Martineau et al. 2021): EM + improved Euler, "
    "tolerance in sigma_t, steps in log-SNR; rtol/atol/norm",
)
class GottaGoFast(Solver):
    r"""Adaptive Euler–Maruyama / stochastic improved Euler solver of the reverse SDE
    (Jolicoeur-Martineau et al. 2021, arXiv:2105.14080). See the module docstring for the method.

    Stochastic; adaptive (``sample(..., solver="gotta_go_fast")`` takes no ``steps``/``grid``);
    2 evaluations per attempted step, plus the final denoising (on by default).

    Args:
        rtol: relative tolerance (> 0); default 1.0 with ``tolerance="noise"`` (a multiple of
            :math:`\sigma_t`), the paper's 0.05 with ``"state"`` (a fraction of :math:`|x|`).
        atol: absolute tolerance (> 0); default 0.0078 (the paper's, for data in ``[-1, 1]``; scale
            it with your data).
        norm: ``"batch_rms"`` (default without ``seeds=``), ``"batch_max"`` or ``"per_sample"``
            (default with ``seeds=``, where a batch norm is refused: it would make a sample depend on
            its batch). See the module docstring for the trade-off.
        tolerance: ``"noise"`` (default, :math:`\mathrm{atol} + \mathrm{rtol}\,\sigma_t`) or
            ``"state"`` (the paper's :math:`\mathrm{atol} + \mathrm{rtol}\max(|x'|, |x'_{prev}|)`).
        variable: ``"log_snr"`` (default) or ``"t"`` (the paper's): the variable the step size is
            controlled in.
        h_init: first step size in ``t`` (paper: 0.01).
        safety: :math:`\theta` (0.9).
        exponent: :math:`r` in :math:`h \leftarrow \theta h E^{-r}`, in ``(0, 1)`` (paper: 0.9).
        min_factor, max_factor: bounds on the step-size ratio per attempt (0.2, 10).
        hold_after_reject: no step growth on the attempt after a rejection (default ``True``;
            the paper has none).
        max_steps: give up (``RuntimeError``) after this many attempted steps.
    """

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 2
    stochastic: ClassVar[bool] = True
    adaptive: ClassVar[bool] = True
    reference: ClassVar[str] = (
        "Jolicoeur-Martineau et al. 2021, Gotta Go Fast When Generating Data with Score-Based Models, arXiv:2105.14080"
    )
    default_final: ClassVar[str] = "tweedie"

    def __init__(
        self,
        rtol: float | None = None,
        atol: float | None = None,
        norm: str | None = None,
        tolerance: str = "noise",
        variable: str = "log_snr",
        h_init: float = 0.01,
        safety: float = 0.9,
        exponent: float = 0.9,
        min_factor: float = 0.2,
        max_factor: float = 10.0,
        hold_after_reject: bool = True,
        max_steps: int = 100_000,
    ) -> None:
        one_of(tolerance, TOLERANCES, "tolerance")
        one_of(variable, VARIABLES, "variable")
        d_rtol, d_atol = _DEFAULT_TOLS[tolerance]
        self.tolerance = tolerance
        self.variable = variable
        self.controller = Controller(
            rtol=d_rtol if rtol is None else rtol,
            atol=d_atol if atol is None else atol,
            norm=norm or "batch_rms",
            safety=safety,
            min_factor=min_factor,
            max_factor=max_factor,
        )
        r = float(exponent)
        if not (math.isfinite(r) and 0.0 < r < 1.0):
            raise ValueError(f"exponent must lie in (0, 1) (paper: 0.9, theory: 0.5), got {exponent!r}")
        self.exponent = r
        h0 = float(h_init)
        if not (math.isfinite(h0) and h0 > 0):
            raise ValueError(f"h_init must be a finite number > 0, got {h_init!r}")
        self.h_init = h0
        if not isinstance(hold_after_reject, bool):
            raise TypeError(f"hold_after_reject must be a bool, got {hold_after_reject!r}")
        self.hold_after_reject = hold_after_reject
        self.max_steps = check_int(max_steps, "max_steps")
        self.norm_given = norm is not None

    def _controller_for(self, ctx: SolveContext) -> Controller:
        """The controller of this run: with ``seeds=`` one step size per sample (unless a batch norm was
        asked for explicitly, which is refused), so a sample never depends on its batch."""
        ctl = self.controller
        if ctx.noise is None or ctx.noise.batch_size is None or ctl.per_sample:
            return ctl
        if self.norm_given:
            raise ValueError(
                f"gotta_go_fast: norm={ctl.norm!r} shares one step size across the batch, so with seeds= a sample "
                "would depend on its batch; use norm='per_sample' (the default with seeds=)"
            )
        per = copy.copy(ctl)
        per.norm = "per_sample"
        return per

    @property
    def error_order(self) -> float:
        """The ``error_order`` q handed to the controller: ``r = 1/(q+1)``."""
        return 1.0 / self.exponent - 1.0

    def __repr__(self) -> str:
        c = self.controller
        return (
            f"GottaGoFast(rtol={c.rtol}, atol={c.atol}, norm={c.norm!r}, tolerance={self.tolerance!r}, "
            f"variable={self.variable!r}, h_init={self.h_init}, safety={c.safety}, exponent={self.exponent}, "
            f"hold_after_reject={self.hold_after_reject})"
        )

    def _attempt(self, ctx: SolveContext, x: Tensor, t: Tensor, t_next: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        """One attempted step ``t → t_next`` on the rows given: returns ``(x_em, x_extrapolated)``."""
        sde = ctx.sde
        h = t - t_next
        s1 = ctx.score(x, t)
        g1 = sde.diffusion(t)
        b1 = _bc(sde.drift_coef(t), x) * x - _bc(g1**2, x) * s1
        hb = _bc(h, x)
        x_em = x - hb * b1 + _bc(g1, x) * w
        s2 = ctx.score(x_em, t_next)
        g2 = sde.diffusion(t_next)
        b2 = _bc(sde.drift_coef(t_next), x) * x_em - _bc(g2**2, x) * s2
        x_tilde = x - hb * b2 + _bc(g2, x) * w
        return x_em, 0.5 * (x_em + x_tilde)

    def solve(self, ctx: SolveContext, x: Tensor) -> Tensor:
        sde = ctx.sde
        ctl = self._controller_for(ctx)
        t_end = float(ctx.t_end)
        T = float(sde.T)
        b = x.shape[0]
        dev = x.device
        f64 = torch.float64
        in_lam = self.variable == "log_snr"
        t = torch.full((b,), T, device=dev, dtype=f64)
        # the position and step live in the controlled variable: λ (increasing along the solve) or t (decreasing)
        h0_t = min(self.h_init, T - t_end)
        if in_lam:
            pos, end = sde.log_snr(t), float(sde.log_snr(torch.full((1,), t_end, device=dev, dtype=f64))[0])
            h = sde.log_snr(torch.full((b,), T - h0_t, device=dev, dtype=f64)) - pos
        else:
            pos, end = t, t_end
            h = torch.full((b,), -h0_t, device=dev, dtype=f64)
        x = x.clone()
        y = (x, x.clone(), t.clone())  # the state, the paper's x'_prev (initialised with x), the time
        run: dict = {"pieces": []}  # the Brownian path's known future increments (full batch)
        times = [T]

        def attempt(rows: Tensor, pr: Tensor, hr: Tensor, last: Tensor, yr: tuple[Tensor, ...]) -> Proposal:
            xa, prev, ta = yr
            if in_lam:
                t_inner = sde.t_from_log_snr(pr + hr).to(f64)
                t_inner = torch.minimum(torch.maximum(t_inner, torch.full_like(ta, t_end)), ta)
            else:
                t_inner = pr + hr
            tna = torch.where(last, torch.full_like(ta, t_end), t_inner)
            dt = torch.zeros(b, device=dev, dtype=f64)  # the Brownian increment's time span (0: finished rows)
            dt[rows] = ta - tna
            xi_b = ctx.noise.randn_like(x)
            xi_f = ctx.noise.randn_like(x)
            w, run["left"] = brownian_increment(run["pieces"], dt, xi_b, xi_f)
            run["dt"], run["w"] = dt, w
            x_em, x_ext = self._attempt(ctx, xa, ta, tna, w[rows])
            err = x_em - x_ext
            if self.tolerance == "noise":
                # the marginal noise level σ_t at the step's end, per sample (see the module docstring)
                ratio = ctl.ratio(err, prev, x_em, scale=_bc(sde.marginal_std(tna), x_em))
            else:
                ratio = ctl.ratio(err, prev, x_em)
            return Proposal((x_ext, x_em, tna), ratio, at=sde.log_snr(tna) if in_lam else tna)

        def after(it: int, rows: Tensor, accept: Tensor, yy: tuple[Tensor, ...]) -> None:
            # Brownian path: accepted rows consume [0, dt]; rejected rows keep it as known increment
            keep = torch.ones(b, dtype=torch.bool, device=dev)
            keep[rows] = ~accept
            dt, w = run["dt"], run["w"]
            first = (torch.where(keep, dt, torch.zeros_like(dt)), torch.where(SDE.bcast(keep, w), w, 0.0))
            run["pieces"] = [p for p in [first, *run["left"]] if bool((p[0] > 0).any())]
            if not ctl.per_sample and bool(accept[0]):
                times.append(float(yy[2][0]))
            ctx.after_step(it, yy[2].to(x.dtype), yy[0], yy[0])

        res = run_adaptive(
            attempt, y, pos, end, h, controller=ctl, error_order=self.error_order, nfe_per_attempt=2,
            max_steps=self.max_steps, hold_after_reject=self.hold_after_reject, score=ctx.score, after=after,
            name="gotta_go_fast",
        )
        # info: nfe_per_sample ((B,) evaluations each sample took part in, final denoising excluded),
        # row_evaluations (their sum), accepted/rejected steps (per row for per_sample, per batch
        # otherwise), attempted_steps (loop iterations, 2 model calls each), times (batch norms)
        one = slice(None) if ctl.per_sample else slice(0, 1)
        ctx.info["x_mean"] = x
        ctx.info["nfe_per_sample"] = res.nfe_per_sample
        ctx.info["row_evaluations"] = res.info["row_evals"]
        ctx.info["accepted_steps"] = int(res.accepted[one].sum())
        ctx.info["rejected_steps"] = int(res.rejected[one].sum())
        ctx.info["attempted_steps"] = res.info["attempts"]
        if not ctl.per_sample:
            ctx.info["times"] = torch.tensor(times, dtype=f64)
        return x
