r"""iPNDM: Adams–Bashforth on the denoiser direction in the EDM noise level (Zhang & Chen 2023).

The probability-flow ODE in EDM variables (:class:`~scoresolve.solvers.base.EDMSolver`) is
:math:`dy/d\tilde\sigma = d(y, \tilde\sigma) = (y - D(y,\tilde\sigma))/\tilde\sigma`. An explicit
Adams–Bashforth step of order :math:`k` from :math:`\tilde\sigma_i` to :math:`\tilde\sigma_{i+1}` is

.. math:: y_{i+1} = y_i + \sum_{j=0}^{k-1} w_{ij}\, d_{i-j},\qquad
          w_{ij} = \int_{\tilde\sigma_i}^{\tilde\sigma_{i+1}} \ell_{ij}(\sigma)\,d\sigma,

with :math:`\ell_{ij}` the Lagrange basis through the last :math:`k` noise levels (variable-step AB, exact for
directions polynomial in :math:`\tilde\sigma` of degree :math:`k-1`). ``variable=False`` uses iPNDM's fixed
equal-step coefficients (Zhang & Chen 2023, arXiv:2204.13902): :math:`[1]`, :math:`[3,-1]/2`,
:math:`[23,-16,5]/12`, :math:`[55,-59,37,-9]/24` times :math:`\tilde\sigma_{i+1}-\tilde\sigma_i`. The order
ramps up 1, 2, 3, 4 over the first steps; with ``final="zero"`` the step onto :math:`\tilde\sigma = 0` is the
variable-step AB step (:mod:`~scoresolve.solvers.finish`). One evaluation per grid point; deterministic.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from ..registry import SOLVERS
from .base import EDMSolver, Interval, SolveContext, Step
from .coefficients import lagrange_integral_weights

__all__ = ["IPNDM"]

_FIXED = {
    1: [1.0],
    2: [3 / 2, -1 / 2],
    3: [23 / 12, -16 / 12, 5 / 12],
    4: [55 / 24, -59 / 24, 37 / 24, -9 / 24],
}


@SOLVERS.register("ipndm", description="iPNDM: Adams-Bashforth (order ramping to 4) on the denoiser direction")
class IPNDM(EDMSolver):
    r"""iPNDM / variable-step Adams–Bashforth in :math:`\tilde\sigma` on :math:`d = (y-D)/\tilde\sigma`
    (see the module docstring for the formula). Order ``order`` (1–4), one evaluation per grid point.

    Args:
        order: maximum Adams–Bashforth order (default 4).
        variable: variable-step coefficients (default) or iPNDM's fixed equal-step ones (the final
            step onto :math:`\tilde\sigma=0` always uses variable-step weights: the equal-step ones assume an
            interval like the previous ones, which the last jump never is).

    With ``gaussian_prior`` (an argument of :func:`scoresolve.sample`) the Adams history starts with the
    Gaussian direction at ``T`` (:meth:`seed`).
    """

    reference = "Zhang & Chen 2023, DEIS/iPNDM, arXiv:2204.13902"
    #: the analytic grid (no model calls): at 5 NFE it beats Karras and log-SNR on both bundled networks
    #: (docs/benchmarks.md, "The analytic grid")
    default_grid: ClassVar[str] = "analytic"
    prefix_direction: ClassVar[bool] = True

    def __init__(
        self,
        order: int = 4,
        variable: bool = True,
    ) -> None:
        if order not in (1, 2, 3, 4):
            raise ValueError(f"order must be 1, 2, 3 or 4, got {order!r}")
        self.order = float(order)
        self.variable = bool(variable)
        #: directions of the final Adams step onto sigma = 0 (final="zero")
        self.final_points = int(order)

    @classmethod
    def variants(cls) -> tuple[dict[str, Any], ...]:
        return ({}, {"order": 2}, {"order": 3})

    def seed(self, direction: Tensor, iv: Interval) -> Any:
        """After the analytical first interval the history starts with the Gaussian direction at ``T``."""
        return [(iv.sigma, direction)]

    def step(self, ctx: SolveContext, y: Tensor, iv: Interval, state: Any) -> Step:
        D = ctx.denoise(y, iv.t, iv.sigma, iv.alpha)
        d = (y - D) / iv.sigma
        hist: list[tuple[float, Tensor]] = ((state or []) + [(iv.sigma, d)])[-int(self.order) :]
        k = len(hist)
        a, b = iv.sigma, iv.sigma_next
        nodes = list(reversed(hist))
        if self.variable:
            w = lagrange_integral_weights([h[0] for h in nodes], a, b)
        else:
            w = [c * (b - a) for c in _FIXED[k]]
        y_next = y
        for wj, (_, dj) in zip(w, nodes, strict=True):
            y_next = y_next + wj * dj
        return Step(y_next, state=hist, direction=d)
