r"""k-diffusion's deterministic samplers (Karras et al. 2022, arXiv:2206.00364) for any linear SDE.

All of them step the probability-flow ODE in the EDM variables of the SDE, :math:`y = x/\alpha_t` and
:math:`\sigma = \sigma_t/\alpha_t` (:meth:`SDE.sigma <scoresolve.SDE.sigma>`):

.. math::  \frac{dy}{d\sigma} = d(y, \sigma) = \frac{y - D(y, \sigma)}{\sigma},\qquad
           D(y, \sigma) = y + \sigma^2 \alpha_t\, s_\theta(\alpha_t y, t),

:math:`D` Tweedie's posterior mean. On a VE SDE this is k-diffusion's own loop; on VP, Euler in :math:`\sigma`
*is* DDIM. ``euler`` (order 1, 1 evaluation per step), ``heun`` (trapezoid, order 2, 2 evaluations), ``dpm_2``
(midpoint in :math:`\log\sigma`, order 2, 2) and ``lms`` (Adams–Bashforth in :math:`\sigma` through the last
``order`` directions, order 4, 1). The first three take EDM's churn (``s_churn > 0``,
:mod:`~scoresolve.solvers.edm`), :math:`n` counting the grid steps plus the final step onto 0 as k-diffusion
does. The run ends with ``final="tweedie"``, :math:`y = D(y, \sigma_{min})`, k-diffusion's last Euler step;
k-diffusion's LMS takes that step with its multistep rule, ``final="zero"`` (:mod:`scoresolve.solvers.finish`)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._util import check_float, check_int
from ..registry import SOLVERS
from .base import GridSolver, Interval, SolveContext, Step
from .coefficients import lagrange_integral_weights

__all__ = ["SigmaStepSolver", "EulerSolver", "HeunSolver", "DPM2Solver", "LMSSolver", "denoise_at_sigma"]

KARRAS_REFERENCE = "Karras et al. 2022, Elucidating the Design Space of Diffusion-Based Generative Models, " \
    "arXiv:2206.00364"


def denoise_at_sigma(ctx: SolveContext, y: Tensor, sigma: float, t: float | None = None) -> Tensor:
    r"""One counted evaluation: :math:`D(y, \sigma) = y + \sigma^2\alpha_t s_\theta(\alpha_t y, t)` at the
    time ``t`` whose EDM noise level is ``sigma`` (found with :meth:`SDE.t_from_sigma` when not given)."""
    sde = ctx.sde
    t64 = torch.tensor([sigma if t is None else t], dtype=torch.float64)
    if t is None:
        t64 = sde.t_from_sigma(t64)
    return ctx.denoise(y, float(t64), sigma, float(sde.alpha(t64)))


class SigmaStepSolver(GridSolver):
    r"""Base of the k-diffusion-style samplers: a step in the EDM variables ``(y, sigma)`` (the loop converts
    ``x`` to ``y = x/alpha``); the final step onto :math:`\sigma = 0` is the shared one
    (``default_final="tweedie"``)."""

    variables: ClassVar[str] = "edm"
    default_grid: ClassVar[str] = "karras"
    default_final: ClassVar[str] = "tweedie"
    reference: ClassVar[str] = KARRAS_REFERENCE


class _Churned(SigmaStepSolver):
    """Euler / Heun / DPM-2 with EDM's optional churn (see the module docstring)."""

    def __init__(
        self, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0
    ) -> None:
        self.s_churn = check_float(s_churn, "s_churn", positive=False)
        self.s_tmin, self.s_tmax = float(s_tmin), float(s_tmax)
        self.s_noise = check_float(s_noise, "s_noise", positive=False)
        self.stochastic = self.s_churn > 0  # type: ignore[misc]

    def churn(self, ctx: SolveContext, y: Tensor, iv: Interval) -> tuple[Tensor, float, float | None]:
        """Raise the noise level (if churn is on): ``(y_hat, sigma_hat, t_hat or None)``."""
        s = iv.sigma
        gamma = 0.0
        if self.s_churn > 0 and self.s_tmin <= s <= self.s_tmax:
            gamma = min(self.s_churn / (iv.n + 1), math.sqrt(2.0) - 1.0)  # grid steps + the final one
        if gamma == 0:
            return y, s, iv.t
        s_hat = s * (1.0 + gamma)
        y = y + (self.s_noise * math.sqrt(s_hat**2 - s**2)) * ctx.noise.randn_like(y)
        return y, s_hat, None

    def step(self, ctx: SolveContext, y: Tensor, iv: Interval, state: Any) -> Step:
        y, s, t = self.churn(ctx, y, iv)
        d = (y - denoise_at_sigma(ctx, y, s, t)) / s
        return Step(self.second_stage(ctx, y, d, s, iv.sigma_next), direction=d if t is not None else None)

    def second_stage(self, ctx: SolveContext, y: Tensor, d: Tensor, s: float, s_next: float) -> Tensor:
        raise NotImplementedError  # pragma: no cover


@SOLVERS.register("euler", description="k-diffusion Euler: Euler in sigma on the EDM ODE (= DDIM), optional churn")
class EulerSolver(_Churned):
    r"""Euler steps of :math:`dy/d\sigma = (y - D)/\sigma` (Karras et al. 2022, arXiv:2206.00364,
    Algorithm 2 with Euler steps; k-diffusion's ``sample_euler``, diffusers' ``EulerDiscreteScheduler``).

    :math:`y_{i+1} = y_i + (\sigma_{i+1} - \sigma_i)(y_i - D_i)/\sigma_i`, which is DDIM's update
    (:math:`\eta = 0`). Order 1, one evaluation per step; deterministic unless ``s_churn > 0``.

    Args:
        s_churn, s_tmin, s_tmax, s_noise: EDM's churn (module docstring); ``s_churn=0`` is off.
    """

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 1

    def second_stage(self, ctx, y, d, s, s_next):
        return y + (s_next - s) * d


@SOLVERS.register("heun", description="k-diffusion Heun: 2nd-order trapezoid in sigma on the EDM ODE, optional churn")
class HeunSolver(_Churned):
    r"""Heun steps of :math:`dy/d\sigma = d(y, \sigma)` (Karras et al. 2022, arXiv:2206.00364, Algorithm 2;
    k-diffusion's ``sample_heun``, diffusers' ``HeunDiscreteScheduler``).

    :math:`\tilde y = y_i + (\sigma_{i+1}-\sigma_i) d_i`,
    :math:`y_{i+1} = y_i + \tfrac12(\sigma_{i+1}-\sigma_i)(d_i + d(\tilde y, \sigma_{i+1}))`; every grid
    step is Heun (2 evaluations) and the final step onto :math:`\sigma = 0` is Euler (Tweedie), as in
    k-diffusion. Order 2. ``heun_edm`` is EDM's variant with an evaluation budget (Euler on the last
    grid step). Args as :class:`EulerSolver`.
    """

    order: ClassVar[float] = 2.0
    nfe_per_step: ClassVar[int] = 2

    def second_stage(self, ctx, y, d, s, s_next):
        y2 = y + (s_next - s) * d
        d2 = (y2 - denoise_at_sigma(ctx, y2, s_next)) / s_next
        return y + (0.5 * (s_next - s)) * (d + d2)


@SOLVERS.register("dpm_2", description="k-diffusion DPM-2: midpoint in log sigma on the EDM ODE, optional churn")
class DPM2Solver(_Churned):
    r"""k-diffusion's ``sample_dpm_2`` ("inspired by DPM-Solver-2", Lu et al. 2022, arXiv:2206.00927, with
    Karras et al.'s Algorithm 2 churn): a midpoint step with the midpoint geometric in :math:`\sigma`,

    :math:`\sigma_m = \sqrt{\sigma_i\sigma_{i+1}}`, :math:`\tilde y = y_i + (\sigma_m - \sigma_i)d_i`,
    :math:`y_{i+1} = y_i + (\sigma_{i+1} - \sigma_i)\,d(\tilde y, \sigma_m)`.

    Order 2, two evaluations per step (diffusers' ``KDPM2DiscreteScheduler``). Args as :class:`EulerSolver`.
    """

    order: ClassVar[float] = 2.0
    nfe_per_step: ClassVar[int] = 2

    def second_stage(self, ctx, y, d, s, s_next):
        s_mid = math.sqrt(s * s_next)
        y2 = y + (s_mid - s) * d
        d2 = (y2 - denoise_at_sigma(ctx, y2, s_mid)) / s_mid
        return y + (s_next - s) * d2


@SOLVERS.register("lms", description="k-diffusion LMS: linear multistep (Adams-Bashforth) in sigma, order 4")
class LMSSolver(SigmaStepSolver):
    r"""Linear multistep (Adams–Bashforth) in :math:`\sigma` on :math:`dy/d\sigma = d` (k-diffusion's
    ``sample_lms``, diffusers' ``LMSDiscreteScheduler``; Karras et al. 2022, arXiv:2206.00364 discuss
    it among the higher-order solvers).

    :math:`y_{i+1} = y_i + \sum_{j<k} w_j d_{i-j}`, :math:`w_j = \int_{\sigma_i}^{\sigma_{i+1}}\ell_j`,
    the Lagrange basis through the last :math:`k = \min(i+1, \text{order})` noise levels. One evaluation per
    step; deterministic; order ``order`` (4 by default; the first steps ramp up from 1). k-diffusion steps onto
    :math:`\sigma = 0` with the same rule: ``final="zero"`` (through at most ``order`` directions, spread as
    :mod:`~scoresolve.solvers.finish` spreads them on a fine grid); the default is ``final="tweedie"``.

    Args:
        order: the number of directions in the interpolant (k-diffusion's default 4).
    """

    order: ClassVar[float] = 4.0
    nfe_per_step: ClassVar[int] = 1

    def __init__(self, order: int = 4) -> None:
        self.order = float(check_int(order, "order"))  # type: ignore[misc]
        self.final_points = int(self.order)

    @classmethod
    def variants(cls) -> tuple[dict[str, Any], ...]:
        return ({}, {"order": 3})

    def step(self, ctx: SolveContext, y: Tensor, iv: Interval, state: Any) -> Step:
        s = iv.sigma
        d = (y - denoise_at_sigma(ctx, y, s, iv.t)) / s
        hist: list[tuple[float, Tensor]] = ([(s, d)] + (state or []))[: int(self.order)]
        w = lagrange_integral_weights([sj for sj, _ in hist], s, iv.sigma_next)
        y_next = y
        for wj, (_, dj) in zip(w, hist, strict=True):
            y_next = y_next + wj * dj
        return Step(y_next, state=hist, direction=d)
