r"""iPNDM: Adams–Bashforth on the denoiser direction in the EDM noise level (Zhang & Chen 2023).

The probability-flow ODE in EDM variables (:mod:`scoresolve.solvers.exp_base`) is
:math:`dy/d\tilde\sigma = d(y, \tilde\sigma) = (y - D(y,\tilde\sigma))/\tilde\sigma`. An explicit
Adams–Bashforth step of order :math:`k` from :math:`\tilde\sigma_i` to :math:`\tilde\sigma_{i+1}` is

.. math:: y_{i+1} = y_i + \sum_{j=0}^{k-1} w_{ij}\, d_{i-j},\qquad
          w_{ij} = \int_{\tilde\sigma_i}^{\tilde\sigma_{i+1}} \ell_{ij}(\sigma)\,d\sigma,

with :math:`\ell_{ij}` the Lagrange basis through the last :math:`k` noise levels (variable-step
AB, exact for directions polynomial in :math:`\tilde\sigma` of degree :math:`k-1`). ``variable=False``
uses the fixed equal-step coefficients of iPNDM (Zhang & Chen 2023, arXiv:2204.13902, and
Zhang et al. 2023 "DEIS"): :math:`[1]`, :math:`[3,-1]/2`, :math:`[23,-16,5]/12`,
:math:`[55,-59,37,-9]/24` times :math:`\tilde\sigma_{i+1}-\tilde\sigma_i`. The order ramps up
1, 2, 3, 4 over the first steps (no extra evaluations). Steps onto :math:`\tilde\sigma = 0` are
ordinary AB steps (the direction needs no evaluation there). One evaluation per grid point;
deterministic.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from ..registry import SOLVERS
from .coefficients import lagrange_integral_weights
from .exp_base import BudgetSolver, Run

__all__ = ["IPNDM"]

_FIXED = {
    1: [1.0],
    2: [3 / 2, -1 / 2],
    3: [23 / 12, -16 / 12, 5 / 12],
    4: [55 / 24, -59 / 24, 37 / 24, -9 / 24],
}


@SOLVERS.register("ipndm", description="iPNDM: Adams-Bashforth (order ramping to 4) on the denoiser direction")
class IPNDM(BudgetSolver):
    r"""iPNDM / variable-step Adams–Bashforth in :math:`\tilde\sigma` on :math:`d = (y-D)/\tilde\sigma`
    (see the module docstring for the formula). Order ``order`` (1–4), one evaluation per grid point.

    Args:
        order: maximum Adams–Bashforth order (default 4).
        variable: variable-step coefficients (default) or iPNDM's fixed equal-step ones.
        final_variable: with ``last_step="zero"``, take the jump to :math:`\tilde\sigma=0` with the
            variable-step weights even when ``variable=False`` (the equal-step weights assume an
            interval like the previous ones, which the last jump never is).
        last_step, calibrate: see :class:`~scoresolve.solvers.exp_base.BudgetSolver`.
        gaussian_prior: ``(mean, cov)`` of the data: the first interval is the exact Gaussian flow (no
            evaluation) and the Adams history starts with the Gaussian direction at ``T``
            (:mod:`~scoresolve.solvers.exp_base`).
    """

    reference = "Zhang & Chen 2023, DEIS/iPNDM, arXiv:2204.13902"
    default_grid: ClassVar[str] = "karras"

    def __init__(
        self,
        order: int = 4,
        variable: bool = True,
        final_variable: bool = True,
        last_step: str = "none",
        calibrate: Any = False,
        gaussian_prior: Any = None,
    ) -> None:
        super().__init__(last_step=last_step, calibrate=calibrate, gaussian_prior=gaussian_prior)
        if order not in (1, 2, 3, 4):
            raise ValueError(f"order must be 1, 2, 3 or 4, got {order!r}")
        self.order = float(order)
        self.variable = bool(variable)
        self.final_variable = bool(final_variable)

    def gaussian_state(self, run: Run, d_gauss: Tensor) -> Any:
        """With ``gaussian_prior``: the history starts with the Gaussian direction at ``T`` (no evaluation)."""
        d = d_gauss.to(run.wdtype)
        run.keep(0, d)
        return [(run.s[0], d)]

    def update(self, run: Run, y: Tensor, i: int, state: Any) -> tuple[Tensor, Any]:
        D = run.denoise(y, i)
        if self.last_step == "tweedie" and self.is_final_zero(run, i):
            return D, None
        d = (y - D) / run.s[i]
        run.keep(i, d)
        hist: list[tuple[float, Tensor]] = ((state or []) + [(run.s[i], d)])[-int(self.order) :]
        if self.is_final_zero(run, i) and (self.variable or self.final_variable):
            # the jump to 0 through nodes spaced >= sqrt(2) apart in sigma (Run.plan_tail): bounded weights
            return run.jump_to_zero(y, int(self.order)), hist
        k = len(hist)
        a, b = run.s[i], run.s[i + 1]
        nodes = list(reversed(hist))
        if self.variable:
            w = lagrange_integral_weights([h[0] for h in nodes], a, b)
        else:
            w = [c * (b - a) for c in _FIXED[k]]
        y_next = y
        for wj, (_, dj) in zip(w, nodes, strict=True):
            y_next = y_next + wj * dj
        return y_next, hist
