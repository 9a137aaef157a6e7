r"""How a run ends after its grid: ``final="none" | "tweedie" | "zero"``, the one vocabulary.

- ``"none"``: the state at the grid's last time ``eps`` (noise level :math:`\tilde\sigma_{min}`).
- ``"tweedie"``: one more evaluation at ``eps`` and the posterior mean there,
  :math:`\hat x_0 = (x + \sigma_\epsilon^2 s_\theta(x, \epsilon))/\alpha_\epsilon` (:math:`y = D` in the EDM
  variables; Efron 2011), the step the peers take onto :math:`\sigma = 0`.
- ``"zero"``: one more evaluation at ``eps`` and a variable-step Adams–Bashforth step of the PF-ODE
  :math:`dy/d\tilde\sigma = (y - D)/\tilde\sigma` from :math:`\tilde\sigma_{min}` onto :math:`\tilde\sigma = 0`,
  :math:`y(0) = y_N + \sum_j w_j d_j`, :math:`w_j = \int_{\tilde\sigma_N}^0 \ell_j`, through up to 4 directions:
  the one at ``eps`` and earlier ones the solver returned (:class:`~scoresolve.solvers.base.Step`), each at
  least √2 apart in :math:`\tilde\sigma` (:class:`Tail`), which keeps the weights bounded on a fine grid.

Either extra step costs one evaluation; a predictor–corrector solver first applies its corrector with it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._util import one_of
from .base import GridSolver, SolveContext, Solver
from .coefficients import lagrange_integral_weights

__all__ = ["FINALS", "TAIL_POINTS", "TAIL_RATIO", "Tail", "finish", "check_final"]

FINALS = ("none", "tweedie", "zero")
#: nodes of the final step onto sigma = 0: at most this many ...
TAIL_POINTS = 4
#: ... spaced by at least this factor in sigma (2 in sigma^2)
TAIL_RATIO = math.sqrt(2.0)


def check_final(final: Any) -> str:
    """Validate ``final=``."""
    return one_of(final, FINALS, "final")


class Tail:
    r"""The directions kept for the final Adams step: grid point :math:`N` (``eps``) and, going back, each
    earlier point whose :math:`\tilde\sigma` is at least ``ratio`` times the last one chosen (``points`` in all).
    On a coarse grid these are the last consecutive points; on a fine one they are spread (consecutive nodes of
    a 1000-step log-SNR grid differ by 0.9 % in :math:`\tilde\sigma`, and extrapolating through them would
    multiply the rounding of a float16 model output by 10^3–10^5)."""

    def __init__(self, sigmas: list[float], points: int = TAIL_POINTS, ratio: float = TAIL_RATIO) -> None:
        n = len(sigmas) - 1
        idx = [n]
        for j in range(n - 1, -1, -1):
            if len(idx) >= points:
                break
            if sigmas[j] >= ratio * sigmas[idx[-1]]:
                idx.append(j)
        self.idx = tuple(idx)
        self.sigmas = sigmas
        self.kept: dict[int, tuple[float, Tensor]] = {}

    def keep(self, i: int, direction: Tensor) -> None:
        """Keep the direction at grid point ``i`` if the final step uses it."""
        if i in self.idx:
            self.kept[i] = (self.sigmas[i], direction)

    def jump(self, y: Tensor, points: int) -> Tensor:
        """The Adams–Bashforth step from :math:`\\tilde\\sigma_N` onto 0 through the kept directions."""
        nodes = [self.kept[i] for i in self.idx if i in self.kept][:points]
        w = lagrange_integral_weights([sj for sj, _ in nodes], self.sigmas[-1], 0.0)
        for wj, (_, dj) in zip(w, nodes, strict=True):
            y = y + wj * dj
        return y


def finish(solver: Solver, ctx: SolveContext, y: Tensor, state: Any, tail: Tail | None) -> Tensor:
    """The final step ``ctx.final`` from the state ``y`` at the run's last time, in the solver's variables (the
    state of an ``x``-space solver is converted to :math:`y = x/\\alpha`); returns :math:`y` at :math:`\\sigma = 0`
    (= :math:`x_0`) in the working dtype."""
    sde = ctx.sde
    g = ctx.grid[-1:].to(torch.float64) if ctx.grid is not None else torch.tensor([ctx.t_end], dtype=torch.float64)
    t, a, s = float(g), float(sde.alpha(g)), float(sde.sigma(g))
    if getattr(solver, "variables", "x") == "x":
        y = y.to(ctx.wdtype) / a
    D = ctx.denoise(y, t, s, a)
    if ctx.final == "tweedie":
        return D
    tail = tail if tail is not None else Tail([s])
    tail.keep(len(tail.sigmas) - 1, (y - D) / s)
    if isinstance(solver, GridSolver):
        y = solver.correct(ctx, y, D, state)
    return tail.jump(y, getattr(solver, "final_points", TAIL_POINTS))
