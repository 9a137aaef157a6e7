r"""Fixed-step solvers of the probability-flow ODE (Song et al. 2021, arXiv:2011.13456, eq. 13):

.. math::  \frac{dx}{dt} = F(x, t) = f(x, t) - \tfrac12 g(t)^2\, s_\theta(x, t),

integrated backwards from :math:`T` to :math:`\epsilon` on a time grid by an explicit Runge–Kutta
method (Butcher 2016, *Numerical Methods for ODEs*): with :math:`h = t_{i+1} - t_i < 0`,

.. math::  k_j = F\big(x + h\textstyle\sum_{l<j} a_{jl} k_l,\ t_i + c_j h\big),\qquad
           x_{i+1} = x + h \textstyle\sum_j b_j k_j .

Registered (deterministic, one evaluation per stage): ``ode_euler`` (order 1, 1 evaluation per step),
``ode_heun`` (explicit trapezoid, order 2, 2) and ``ode_rk4`` (classical Runge–Kutta, Kutta 1901, order 4, 4).
The machinery (:class:`ButcherTableau`, :func:`rk_stages`, :func:`rk_combine`) works on tuples of tensors with
one time and one step per sample, so the likelihood ODE (state plus log-density) and the per-sample adaptive
solver (:mod:`scoresolve.solvers.ode_adaptive`) reuse it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ..registry import SOLVERS
from ..sde import SDE
from .base import GridSolver, Interval, SolveContext, Step

__all__ = [
    "ButcherTableau",
    "TABLEAUS",
    "rk_stages",
    "rk_combine",
    "rk_step",
    "pf_vector_field",
    "PFEuler",
    "PFHeun",
    "PFRK4",
]

State = tuple[Tensor, ...]
VectorField = Callable[[Tensor, State], State]


@dataclass(frozen=True)
class ButcherTableau:
    r"""An explicit Runge–Kutta method: ``a`` (strictly lower-triangular rows, row ``j`` holds
    :math:`a_{j,0..j-1}`), weights ``b``, nodes ``c``, convergence ``order``; for embedded pairs
    ``b_err`` holds :math:`b - \hat b` (the error estimate is :math:`h\sum_j (b_j-\hat b_j) k_j`) and
    ``error_order`` the order of the lower of the two; ``fsal``: the last stage is evaluated at the
    new point (first-same-as-last)."""

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int
    b_err: tuple[float, ...] | None = None
    error_order: int | None = None
    fsal: bool = False

    @property
    def stages(self) -> int:
        return len(self.b)


_EULER = ButcherTableau("euler", a=((),), b=(1.0,), c=(0.0,), order=1)
_HEUN = ButcherTableau("heun", a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2)
_RK4 = ButcherTableau(
    "rk4",
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    c=(0.0, 0.5, 0.5, 1.0),
    order=4,
)
# Bogacki & Shampine 1989: 3rd order with an embedded 2nd-order estimate, FSAL.
_BOSH3 = ButcherTableau(
    "bosh3",
    a=((), (1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    order=3,
    b_err=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, 0.0 - 1 / 8),
    error_order=2,
    fsal=True,
)
# Dormand & Prince 1980: 5th order with an embedded 4th-order estimate, FSAL.
_DP5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP5_BHAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_DOPRI5 = ButcherTableau(
    "dopri5",
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=_DP5_B,
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    order=5,
    b_err=tuple(b - bh for b, bh in zip(_DP5_B, _DP5_BHAT, strict=True)),
    error_order=4,
    fsal=True,
)

TABLEAUS: dict[str, ButcherTableau] = {t.name: t for t in (_EULER, _HEUN, _RK4, _BOSH3, _DOPRI5)}


def _bh(h: Tensor, y: Tensor) -> Tensor:
    """Per-sample step ``h`` (``(B,)``) cast to ``y``'s dtype and viewed against it."""
    return SDE.bcast(h.to(dtype=y.dtype, device=y.device), y)


def rk_stages(f: VectorField, t: Tensor, y: State, h: Tensor, tab: ButcherTableau, k0: State | None = None) -> list:
    r"""The stage derivatives :math:`k_j` of one step of ``tab`` from ``(t, y)`` with step ``h``.

    Args:
        f: vector field ``f(t, y) -> dy/dt`` on tuples of tensors, ``t`` of shape ``(B,)`` in the
            state's dtype.
        t, h: ``(B,)`` times and steps (kept in their own dtype, float64 on the grids, to place the
            stage times accurately; cast to the state's dtype before calling ``f``).
        k0: the first stage if already known (FSAL): saves one evaluation.
    """
    dtype = y[0].dtype
    ks: list[State] = []
    for j in range(tab.stages):
        if j == 0 and k0 is not None:
            ks.append(k0)
            continue
        if j == 0:
            yj = y
        else:
            yj = tuple(
                yc + _bh(h, yc) * sum(a * k[i] for a, k in zip(tab.a[j], ks, strict=True) if a != 0.0)
                for i, yc in enumerate(y)
            )
        tj = (t + tab.c[j] * h).to(dtype)
        ks.append(f(tj, yj))
    return ks


def rk_combine(y: State, h: Tensor, ks: Sequence[State], weights: Sequence[float]) -> State:
    r""":math:`y + h \sum_j w_j k_j` (with ``y = ()`` → only the increment, for error estimates)."""
    out = []
    for i in range(len(ks[0])):
        inc = sum(w * k[i] for w, k in zip(weights, ks, strict=True) if w != 0.0)
        inc = _bh(h, ks[0][i]) * inc
        out.append(inc if not y else y[i] + inc)
    return tuple(out)


def rk_step(f: VectorField, t: Tensor, y: State, h: Tensor, tab: ButcherTableau) -> State:
    """One step of ``tab``: returns the new state."""
    return rk_combine(y, h, rk_stages(f, t, y, h, tab), tab.b)


def pf_vector_field(ctx: SolveContext) -> VectorField:
    """The probability-flow drift ``F(x, t) = f(x, t) - ½ g(t)² s(x, t)`` on a 1-tuple state, through
    the counted score."""

    def f(t: Tensor, y: State) -> State:
        (x,) = y
        return (ctx.sde.pf_drift(x, t, ctx.score(x, t)),)

    return f


class _FixedStepPF(GridSolver):
    """Shared loop of the fixed-step PF-ODE solvers: one Runge–Kutta step per grid interval."""

    tableau: ClassVar[ButcherTableau]
    stochastic = False
    default_final = "tweedie"
    default_grid = "quadratic"
    default_steps = 100
    reference = "Song et al. 2021, Score-Based Generative Modeling through SDEs, arXiv:2011.13456 (eq. 13)"

    def step(self, ctx: SolveContext, x: Tensor, iv: Interval, state: Any) -> Step:
        assert ctx.grid is not None
        i = iv.i
        g = ctx.grid.to(device=x.device)
        b = x.shape[0]
        t = g[i].expand(b)
        h = (g[i + 1] - g[i]).expand(b)
        (x_next,) = rk_step(pf_vector_field(ctx), t, (x,), h, self.tableau)
        return Step(x_next, x_next, state)


@SOLVERS.register("ode_euler", description="probability-flow ODE, explicit Euler on a grid (order 1, 1 NFE/step)")
class PFEuler(_FixedStepPF):
    r"""Explicit Euler on the probability-flow ODE: :math:`x_{i+1} = x_i + h F(x_i, t_i)`.

    Order 1, 1 NFE per step, deterministic. Default grid ``quadratic`` (uniform in :math:`\sqrt t`).
    Reference: Song et al. 2021, arXiv:2011.13456, eq. 13.
    """

    tableau = _EULER
    order = 1.0
    nfe_per_step = 1


@SOLVERS.register("ode_heun", description="probability-flow ODE, Heun's 2nd-order method on a grid (2 NFE/step)")
class PFHeun(_FixedStepPF):
    r"""Heun's method (explicit trapezoid) on the probability-flow ODE:
    :math:`\tilde x = x_i + h F(x_i, t_i)`, :math:`x_{i+1} = x_i + \tfrac h2 [F(x_i, t_i) + F(\tilde x, t_{i+1})]`.

    Order 2, 2 NFE per step, deterministic (Karras et al. 2022, arXiv:2206.00364, Algorithm 1, without
    churn and without their Euler last step).
    """

    tableau = _HEUN
    order = 2.0
    nfe_per_step = 2


@SOLVERS.register("ode_rk4", description="probability-flow ODE, classical 4th-order Runge-Kutta on a grid (4 NFE/step)")
class PFRK4(_FixedStepPF):
    r"""Classical Runge–Kutta on the probability-flow ODE:
    :math:`k_1 = F(x, t)`, :math:`k_2 = F(x + \tfrac h2 k_1, t + \tfrac h2)`,
    :math:`k_3 = F(x + \tfrac h2 k_2, t + \tfrac h2)`, :math:`k_4 = F(x + h k_3, t + h)`,
    :math:`x_{i+1} = x + \tfrac h6 (k_1 + 2k_2 + 2k_3 + k_4)`.

    Order 4, 4 NFE per step, deterministic.
    """

    tableau = _RK4
    order = 4.0
    nfe_per_step = 4
