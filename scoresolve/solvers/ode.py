r"""``solver="ode"``: the probability-flow ODE (Song et al. 2021, arXiv:2011.13456, eq. 13)

.. math::  \frac{dx}{dt} = f(x, t) - \tfrac12 g(t)^2\, s_\theta(x, t)

integrated from :math:`T` to :math:`\epsilon` with any method of torchdiffeq (Chen et al. 2018,
arXiv:1806.07366); the default is ``dopri5`` (Dormand–Prince 5(4), the paper's RK45) at
``rtol = atol = 1e-5``. Adaptive methods (``dopri5``, ``dopri8``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``)
take ``rtol``/``atol`` and no grid; fixed-grid ones (``euler``, ``midpoint``, ``heun2``, ``heun3``, ``rk4``,
``explicit_adams``, ``implicit_adams``) step on :func:`scoresolve.sample`'s grid. Cost: the method's stages per
step, rejected steps included; every evaluation goes through the counted score. The end time is a ``step_t``
(no step past it) and evaluation times are clamped to :math:`[\epsilon, T]` (``info["clamped_evals"]``: at most
torchdiffeq's initial-step probe). The batch shares one step size, so with ``seeds=`` an adaptive method
integrates each sample on its own; ``solver="ode_adaptive"`` gives each sample its own steps in one batched loop.
Details: docs/ode.md."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._util import check_float, closest
from ..registry import SOLVERS
from .base import SolveContext, Solver

__all__ = ["ProbabilityFlowODE", "ADAPTIVE_METHODS", "FIXED_METHODS", "check_method", "check_tolerances"]

#: torchdiffeq's adaptive-step methods and their order (of the propagated solution).
ADAPTIVE_METHODS: dict[str, int] = {"dopri8": 8, "dopri5": 5, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2}
#: torchdiffeq's fixed-grid methods: (order, score evaluations per step).
FIXED_METHODS: dict[str, tuple[int, int]] = {
    "euler": (1, 1),
    "midpoint": (2, 2),
    "heun2": (2, 2),
    "heun3": (3, 3),
    "rk4": (4, 4),
    "explicit_adams": (4, 1),
    "implicit_adams": (4, 2),
    "fixed_adams": (4, 2),
}


def _torchdiffeq_methods() -> list[str]:
    try:
        from torchdiffeq._impl.odeint import SOLVERS as TD  # noqa: N811 - private table, names only

        names = [n for n in TD if n != "scipy_solver"]
    except Exception:  # pragma: no cover - layout changes in torchdiffeq
        names = []
    return sorted(set(names) | set(ADAPTIVE_METHODS) | set(FIXED_METHODS))


def check_method(method: Any, *, argument: str = "method") -> str:
    """Validate a torchdiffeq method name; the error lists the valid ones and the closest match."""
    valid = _torchdiffeq_methods()
    if isinstance(method, str) and method in valid:
        return method
    hint = closest(method, valid, n=2)
    raise ValueError(f"unknown torchdiffeq {argument}={method!r}.{hint} Valid methods: {', '.join(valid)}")


def check_tolerances(rtol: Any, atol: Any) -> tuple[float, float]:
    """``rtol`` and ``atol`` as finite floats > 0 (named in the error otherwise)."""
    return check_float(rtol, "rtol"), check_float(atol, "atol")


class _Drift:
    """The PF-ODE drift as torchdiffeq calls it: ``func(t, x)`` with a 0-d ``t``.

    Clamps ``t`` into ``[t_lo, t_hi]`` (counting clamps).
    """

    def __init__(self, ctx: SolveContext, t_lo: float, t_hi: float) -> None:
        self.ctx = ctx
        self.t_lo, self.t_hi = t_lo, t_hi
        self.clamped = 0
        self.accepted: list[float] = []
        self.step_index = 0

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        tf = float(t)
        if tf < self.t_lo or tf > self.t_hi:
            self.clamped += 1
            t = t.clamp(self.t_lo, self.t_hi)
        tt = t.to(dtype=x.dtype).expand(x.shape[0])
        self.ctx.score.step = self.step_index
        return self.ctx.sde.pf_drift(x, tt, self.ctx.score(x, tt))

    def _tb(self, t: float, y: Tensor) -> Tensor:
        return torch.full((y.shape[0],), t, device=y.device, dtype=y.dtype)


class _AdaptiveDrift(_Drift):
    """:class:`_Drift` with torchdiffeq's accepted-step hook (only adaptive methods support it)."""

    def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        # called at the start of each accepted step with the state at its start (= end of the previous)
        t0f = float(t0)
        if self.accepted:
            self.ctx.after_step(self.step_index - 1, self._tb(t0f, y0), y0)
        self.accepted.append(t0f)
        self.step_index += 1


@SOLVERS.register("ode", description="probability-flow ODE via torchdiffeq (method=dopri5, rtol, atol; any method)")
class ProbabilityFlowODE(Solver):
    r"""The probability-flow ODE integrated by torchdiffeq (Song et al. 2021, arXiv:2011.13456, Sec. 4.3).

    Args:
        method: a torchdiffeq method. Adaptive: ``dopri5`` (default, order 5), ``dopri8``,
            ``bosh3``, ``fehlberg2``, ``adaptive_heun``. Fixed-grid (take ``steps=``/``grid=`` of
            :func:`scoresolve.sample`): ``euler``, ``midpoint``, ``heun2``, ``heun3``, ``rk4``,
            ``explicit_adams``, ``implicit_adams``.
        rtol, atol: tolerances of the adaptive methods (> 0; the paper's 1e-5 by default).
        options: extra torchdiffeq options (e.g. ``{"max_num_steps": 10_000}``, ``first_step``).

    NFE: counted through the score, rejected steps included; the batch shares one step size.
    Deterministic. Ends with the Tweedie denoising step by default, as the paper does.
    """

    stochastic = False
    default_final = "tweedie"
    default_grid = "quadratic"
    default_steps = 100
    reference = (
        "Song et al. 2021, arXiv:2011.13456 (probability flow); Chen et al. 2018, arXiv:1806.07366 (torchdiffeq); "
        "Dormand & Prince 1980 (dopri5)"
    )

    def __init__(
        self,
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.method = check_method(method)
        self.rtol, self.atol = check_tolerances(rtol, atol)
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict of torchdiffeq options, got {type(options).__name__}")
        self.options = dict(options or {})
        self.adaptive = self.method in ADAPTIVE_METHODS  # type: ignore[misc]
        if self.adaptive:
            self.order = float(ADAPTIVE_METHODS[self.method])  # type: ignore[misc]
            self.nfe_per_step = 0  # type: ignore[misc]  # not fixed
        else:
            order, per = FIXED_METHODS[self.method]
            self.order = float(order)  # type: ignore[misc]
            self.nfe_per_step = per  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"ProbabilityFlowODE(method={self.method!r}, rtol={self.rtol}, atol={self.atol})"

    def solve(self, ctx: SolveContext, x: Tensor) -> Tensor:
        from torchdiffeq import odeint

        T = float(ctx.sde.T)
        t_end = float(ctx.t_end)
        # time in float64 unless the state is half precision/float32 on a device without float64 support
        tdt = torch.float64 if x.device.type != "mps" else torch.float32
        if self.adaptive:
            times = torch.tensor([T, t_end], dtype=tdt, device=x.device)
            opts = {"step_t": torch.tensor([t_end], dtype=tdt, device=x.device), **self.options}
        else:
            assert ctx.grid is not None
            times = ctx.grid.to(dtype=tdt, device=x.device)
            opts = dict(self.options)
        lo, hi = min(T, t_end), max(T, t_end)
        if self.adaptive and ctx.noise is not None and ctx.noise.batch_size is not None and x.shape[0] > 1:
            return self._solve_rows(ctx, x, times, opts, lo, hi)
        drift = (_AdaptiveDrift if self.adaptive else _Drift)(ctx, lo, hi)
        ys = odeint(drift, x, times, rtol=self.rtol, atol=self.atol, method=self.method, options=opts)
        ctx.info["clamped_evals"] = drift.clamped
        if self.adaptive:
            t_acc = drift.accepted + [t_end]
            ctx.info["times"] = torch.tensor(t_acc, dtype=torch.float64)
            ctx.info["accepted_steps"] = len(drift.accepted)
            ctx.after_step(max(drift.step_index - 1, 0), drift._tb(t_end, ys[-1]), ys[-1])
        else:
            for i in range(1, ys.shape[0]):
                ctx.after_step(i - 1, ctx.t(i, x), ys[i])
        ctx.info["nfe_per_sample"] = torch.full((x.shape[0],), ctx.score.nfe, dtype=torch.long)
        return ys[-1]

    def _solve_rows(self, ctx: SolveContext, x: Tensor, times: Tensor, opts: dict[str, Any], lo: float,
                    hi: float) -> Tensor:
        """One adaptive solve per sample (with ``seeds=``): each row's steps depend on that row alone."""
        from torchdiffeq import odeint

        rows, per, clamped = [], [], 0
        for i in range(x.shape[0]):
            before = ctx.score.nfe
            drift = _Drift(ctx, lo, hi)
            ys = odeint(drift, x[i: i + 1], times, rtol=self.rtol, atol=self.atol, method=self.method, options=opts)
            rows.append(ys[-1])
            per.append(ctx.score.nfe - before)
            clamped += drift.clamped
        out = torch.cat(rows)
        ctx.info["clamped_evals"] = clamped
        ctx.info["nfe_per_sample"] = torch.tensor(per, dtype=torch.long)
        ctx.after_step(0, torch.full((x.shape[0],), float(ctx.t_end), device=x.device, dtype=x.dtype), out)
        return out
