r"""The fixed-grid loop and the budget planner, each written once.

:func:`integrate` runs a :class:`~scoresolve.solvers.base.GridSolver` over a grid: it builds each
:class:`~scoresolve.solvers.base.Interval`, takes the analytical first interval when a Gaussian fit is given
(the exact PF-ODE flow of :class:`~scoresolve.gaussian.GaussianFit`, no evaluation), calls ``step``, keeps the
directions the final step needs, reports each step, and ends the run with ``ctx.final``
(:mod:`~scoresolve.solvers.finish`). :func:`scoresolve.sample` and the calibration both call it.

:func:`plan` turns an evaluation budget ``nfe=K`` into grid intervals from the solver's declarations: a grid of
:math:`n` intervals costs :math:`(n - p)\,c - r + f` evaluations, with :math:`c` = ``nfe_per_step``, :math:`p = 1`
with the analytical first interval, :math:`r` = ``nfe_per_step - nfe_last`` when the run ends on the grid, and
:math:`f = 1` for ``final="tweedie"|"zero"``; the plan is the largest :math:`n` within the budget.
"""

from __future__ import annotations

import math
from operator import attrgetter
from typing import Any

import torch
from torch import Tensor

from ..gaussian import GaussianFit
from .base import GridSolver, Interval, SolveContext
from .finish import Tail, finish

__all__ = ["intervals", "integrate", "plan", "cost"]


def intervals(sde: Any, grid: Tensor) -> list[Interval]:
    """The grid's intervals in every variable (float64 Python floats)."""
    g = grid.to(torch.float64).cpu()
    alpha, sigma = sde.alpha_sigma(g)
    a, s = alpha.tolist(), sigma.tolist()
    t = g.tolist()
    n = len(t) - 1
    out = []
    for i in range(n):
        out.append(Interval(i, n, t[i], t[i + 1], a[i], a[i + 1], s[i], s[i + 1], -math.log(s[i]), -math.log(s[i + 1])))
    return out


def cost(solver: GridSolver, n: int, final: str, prefix: bool) -> int:
    """Score evaluations of ``n`` grid intervals (see the module docstring)."""
    c = int(solver.nfe_per_step)
    last = solver.nfe_last if (final == "none" and solver.nfe_last is not None) else c
    k = n - (1 if prefix else 0)
    return (k - 1) * c + last + (0 if final == "none" else 1) if k >= 1 else (0 if final == "none" else 1)


def plan(solver: GridSolver, nfe: int, final: str, prefix: bool = False) -> int:
    """The number of grid intervals whose :func:`cost` is the largest within ``nfe`` evaluations (an integer the
    caller validated: :func:`scoresolve.sample` and the calibrations check it at their entry)."""
    c = int(solver.nfe_per_step)
    last = solver.nfe_last if (final == "none" and solver.nfe_last is not None) else c
    spare = nfe - last - (0 if final == "none" else 1)  # after the final step and the last interval
    n = (1 + spare // c if spare >= 0 else 0) + (1 if prefix else 0)
    least = 2 if prefix and final == "none" else 1
    if n < least:
        what = " with the analytical first interval (gaussian_prior)" if prefix else ""
        raise ValueError(
            f"nfe={nfe} is too small for {type(solver).__name__} with final={final!r}{what}: the least budget is "
            f"{cost(solver, least, final, prefix)} evaluations"
            + ("; use final='none' for a budget of 1" if final != "none" else "")
        )
    return n


def integrate(solver: GridSolver, ctx: SolveContext, x: Tensor, prefix: GaussianFit | None = None) -> Tensor:
    """Run ``solver`` over ``ctx.grid`` from ``x`` at its first time and end with ``ctx.final``; returns the
    result in ``x``'s dtype."""
    assert ctx.grid is not None
    ivs = intervals(ctx.sde, ctx.grid)
    ctx.intervals = ivs
    edm = solver.variables == "edm"
    tail = Tail([*map(attrgetter("sigma"), ivs), ivs[-1].sigma_next]) if ctx.final == "zero" else None
    report = ctx.trajectory is not None or ctx.callback is not None or ctx.progress is not None
    y = x.to(ctx.wdtype) / ivs[0].alpha if edm else x
    state: Any = None
    x_mean = y
    first = 0
    if prefix is not None:
        if not edm:
            raise ValueError(f"gaussian_prior needs a solver in the EDM variables, not {type(solver).__name__}")
        if len(ivs) < 2 and ctx.final == "none":
            raise ValueError("gaussian_prior needs a grid of at least 2 intervals (the first is analytical)")
        y, dG = prefix.flow(y, ivs[0].sigma, ivs[0].sigma_next)
        if solver.prefix_direction:
            d = dG.to(ctx.wdtype)
            state = solver.seed(d, ivs[0])
            if tail is not None:
                tail.keep(0, d)
        first = 1
        if report:
            _report(ctx, 0, ivs[0].t_next, ivs[0].alpha_next if edm else None, y, x.dtype)
    for iv in ivs[first:]:
        ctx.score.step = iv.i
        st = solver.step(ctx, y, iv, state)
        y, state = st.x, st.state
        x_mean = y if st.x_mean is None else st.x_mean
        if tail is not None and st.direction is not None:
            tail.keep(iv.i, st.direction)
        if report:
            _report(ctx, iv.i, iv.t_next, iv.alpha_next if edm else None, y, x.dtype, x_mean)
        else:  # the state's finiteness, as after_step records it when reporting
            ctx.score.watch_state(y, torch.full((1,), iv.t_next, dtype=torch.float64))
    alpha_end = ivs[-1].alpha_next
    if ctx.final != "none":
        n = len(ivs)
        ctx.score.step = n
        y = finish(solver, ctx, y, state, tail)
        x_mean, alpha_end = y, 1.0
        if ctx.trajectory is not None:  # the final step is in the trajectory; callbacks see the grid's steps
            ctx.trajectory.append(y.to(x.dtype))
    ctx.score.check()  # a model's NaN is reported with its step first
    if edm and not bool(torch.isfinite(y).all()):
        raise FloatingPointError(
            f"{type(solver).__name__}: the final state is not finite (grid {[iv.sigma for iv in ivs[:4]]}...)"
        )
    return (y * alpha_end).to(x.dtype) if (edm or ctx.final != "none") else y


def _report(ctx: SolveContext, i: int, t: float, alpha: float | None, y: Tensor, dtype: torch.dtype,
            x_mean: Tensor | None = None) -> None:
    if alpha is None:
        ctx.after_step(i, torch.full((y.shape[0],), t, dtype=y.dtype, device=y.device), y, x_mean)
    else:
        x_mean = None if x_mean is None or x_mean is y else (x_mean * alpha).to(dtype)
        ctx.after_step(i, torch.full((y.shape[0],), t, dtype=dtype, device=y.device), (y * alpha).to(dtype), x_mean)
