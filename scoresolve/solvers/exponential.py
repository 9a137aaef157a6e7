r"""Exponential integrators in log-SNR: DPM-Solver, DPM-Solver++ (2M, 3M) and UniPC.

Written in the EDM variables of :class:`~scoresolve.solvers.base.EDMSolver` (:math:`y = x/\alpha`,
:math:`\tilde\sigma = e^{-\lambda}`), where the probability-flow ODE has the exact solution

.. math::  y_t = y_s - \tilde\sigma_s\int_0^h e^{-\tau}\hat\varepsilon(\lambda_s+\tau)\,d\tau
               = e^{-h}y_s + \int_0^h e^{-(h-\tau)} D(\lambda_s+\tau)\,d\tau,\qquad h = \lambda_t-\lambda_s.

DPM-Solver (Lu et al. 2022, arXiv:2206.00927) expands :math:`\hat\varepsilon` in :math:`\lambda`, DPM-Solver++
(arXiv:2211.01095) expands :math:`D`, from previous (multistep, 1 evaluation per step) or intermediate
(singlestep) evaluations; UniPC (Zhao et al. 2023, arXiv:2302.04867) adds a corrector reusing the evaluation at
the new point, at no extra cost. Papers' ``x``-space formulas: :math:`\alpha_t/\alpha_s\,x_s \to y_s`,
:math:`\sigma_t\to\tilde\sigma_t` (noise prediction); :math:`x_s\sigma_t/\sigma_s\to y_s\tilde\sigma_t/\tilde\sigma_s`,
:math:`\alpha_t\to 1` (data prediction). A step onto :math:`\tilde\sigma = 0` diverges (:math:`h\to\infty`):
``final="tweedie"|"zero"`` ends the run (:mod:`~scoresolve.solvers.finish`)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..registry import SOLVERS
from .base import EDMSolver, Interval, SolveContext, Step
from .coefficients import unipc_b

__all__ = ["DPMSolver", "DPMSolverPP2M", "DPMSolverPP3M", "DPMSolverPP", "UniPC"]


def _check_variant(variant: str) -> str:
    if variant not in ("exact", "published"):
        raise ValueError(f"variant must be 'exact' or 'published', got {variant!r}")
    return variant


def _eps(y: Tensor, D: Tensor, s: float) -> Tensor:
    return (y - D) / s


# ------------------------------------------------------------------------------------------------
@SOLVERS.register("dpm_solver", description="DPM-Solver (noise prediction), orders 1-3, single- or multistep")
class DPMSolver(EDMSolver):
    r"""DPM-Solver with noise prediction (Lu et al. 2022, arXiv:2206.00927), orders 1–3.

    Step :math:`s \to t`, :math:`h = \lambda_t - \lambda_s`, :math:`\varepsilon_0` the current noise
    prediction:

    - order 1 (DDIM): :math:`y_t = y_s - \tilde\sigma_t(e^h-1)\varepsilon_0`;
    - multistep order 2: :math:`-\tfrac12\tilde\sigma_t(e^h-1)D_1` more, :math:`D_1 =
      (\varepsilon_0-\varepsilon_{-1})/r_0`, :math:`r_0 = h_{-1}/h`;
    - multistep order 3: :math:`y_t = y_s - \tilde\sigma_t(e^h-1)\varepsilon_0 - \tilde\sigma_t
      (\tfrac{e^h-1}{h}-1)D_1 - \tilde\sigma_t(\tfrac{e^h-1-h}{h^2}-\tfrac12)D_2` with the divided
      differences of the last three evaluations;
    - singlestep orders 2 and 3 (DPM-Solver-2/-3, the paper's Algorithms 1–2): consecutive grid
      intervals are grouped by ``order``; the inner grid points are the intermediate stage times
      (:math:`r_1 = 1/2`, resp. :math:`1/3, 2/3` on a log-SNR grid). ``steps=K`` spends ``K``
      evaluations: ``K // order`` full steps and one lower-order step for the remainder.

    ``variant="exact"`` (default) doubles the :math:`D_2` weight of the published third-order multistep
    formula: :math:`D_2 \approx h^2 y''/2`, so the Taylor term :math:`\int e^{\cdot}\tau^2/2\,y''` needs
    twice the published coefficient; measured global order 3.0 instead of 2.3 (``tests/test_order.py``).
    ``variant="published"`` keeps the papers' (and k-diffusion's ``sample_dpmpp_3m_sde``) coefficient.

    Multistep solvers start with lower orders (1, 2, ...). Deterministic; one evaluation per grid
    point; order ``order``.

    Args:
        order: 1, 2 or 3.
        method: ``"multistep"`` or ``"singlestep"``.
    """

    reference = "Lu et al. 2022, DPM-Solver, arXiv:2206.00927"
    order: ClassVar[float] = 2.0  # instance attribute overrides

    def __init__(
        self,
        order: int = 2,
        method: str = "multistep",
        variant: str = "exact",
    ):
        self.variant = _check_variant(variant)
        self._d2 = 2.0 if variant == "exact" else 1.0
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        if method not in ("multistep", "singlestep"):
            raise ValueError(f"method must be 'multistep' or 'singlestep', got {method!r}")
        self.order = float(order)
        self.method = method

    @classmethod
    def variants(cls) -> tuple[dict[str, Any], ...]:
        return ({"order": 1}, {}, {"order": 3}, {"method": "singlestep"}, {"order": 3, "method": "singlestep"})

    # multistep ------------------------------------------------------------------------------
    def step(self, ctx: SolveContext, y: Tensor, iv: Interval, state: Any) -> Step:
        if self.method == "singlestep":
            return self._single(ctx, y, iv, state)
        D = ctx.denoise(y, iv.t, iv.sigma, iv.alpha)
        st = iv.sigma_next
        eps0 = _eps(y, D, iv.sigma)  # = the PF-ODE direction dy/dsigma
        hist: list[tuple[float, Tensor]] = (state or []) + [(iv.lam, eps0)]
        hist = hist[-int(self.order) :]
        h = iv.lam_next - iv.lam
        em = math.expm1(h)
        y_next = y - (st * em) * eps0
        k = len(hist)
        if k >= 2:
            r0 = (hist[-1][0] - hist[-2][0]) / h
            D1_0 = (hist[-1][1] - hist[-2][1]) / r0
            if k == 2:
                y_next = y_next - (0.5 * st * em) * D1_0
            else:
                r1 = (hist[-2][0] - hist[-3][0]) / h
                D1_1 = (hist[-2][1] - hist[-3][1]) / r1
                D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
                D2 = (D1_0 - D1_1) / (r0 + r1)
                y_next = y_next - (st * (em / h - 1.0)) * D1 - (self._d2 * st * ((em - h) / h**2 - 0.5)) * D2
        return Step(y_next, state=hist, direction=eps0)

    # singlestep -----------------------------------------------------------------------------
    def _single(self, ctx: SolveContext, y: Tensor, iv: Interval, state: Any) -> Step:
        i, ivs = iv.i, ctx.intervals
        if state is None:
            if i != 0:
                raise ValueError("gaussian_prior is not supported with method='singlestep' (use method='multistep')")
            # consecutive intervals grouped by the order, the remainder last
            k = int(self.order)
            sizes = [k] * (iv.n // k) + ([iv.n % k] if iv.n % k else [])
            starts, pos = {}, 0
            for g in sizes:
                starts[pos] = g
                pos += g
            lam = [v.lam for v in ivs] + [ivs[-1].lam_next]
            sig = [v.sigma for v in ivs] + [ivs[-1].sigma_next]
            state = {"starts": starts, "lam": lam, "sig": sig}
        if i in state["starts"]:
            state.update(a=i, g=state["starts"][i], y0=y, eps=[])
        a, g = state["a"], state["g"]
        D = ctx.denoise(y, iv.t, iv.sigma, iv.alpha)
        eps_i = _eps(y, D, iv.sigma)
        state["eps"].append(eps_i)
        return Step(self._single_update(state["lam"], state["sig"], i, a, g, state), state=state, direction=eps_i)

    def _single_update(self, lam: list[float], sig: list[float], i: int, a: int, g: int, state: Any) -> Tensor:
        j = i - a  # stage index within the group
        lam_a, y0, e0 = lam[a], state["y0"], state["eps"][0]
        H = lam[a + g] - lam_a  # the whole step
        s_end = sig[a + g]
        if j == 0 and g == 1:
            return y0 - (s_end * math.expm1(H)) * e0
        if j == 0:
            # first stage: DDIM to the next grid point
            rh = lam[a + 1] - lam_a
            return y0 - (sig[a + 1] * math.expm1(rh)) * e0
        if g == 2:
            r1 = (lam[a + 1] - lam_a) / H
            em = math.expm1(H)
            out = y0 - (s_end * em) * e0 - (s_end / (2 * r1) * em) * (state["eps"][1] - e0)
            return out
        # g == 3
        r1 = (lam[a + 1] - lam_a) / H
        r2 = (lam[a + 2] - lam_a) / H
        if j == 1:
            D1 = state["eps"][1] - e0
            s2 = sig[a + 2]
            e2 = math.expm1(r2 * H)
            u2 = y0 - (s2 * e2) * e0 - (s2 * r2 / r1 * (e2 / (r2 * H) - 1.0)) * D1
            return u2
        em = math.expm1(H)
        D2 = state["eps"][2] - e0
        out = y0 - (s_end * em) * e0 - (s_end / r2 * (em / H - 1.0)) * D2
        return out


# ------------------------------------------------------------------------------------------------
class DPMSolverPP(EDMSolver):
    r"""DPM-Solver++ multistep with data prediction (Lu et al. 2022, arXiv:2211.01095).

    Step :math:`s\to t`, :math:`h = \lambda_t-\lambda_s`, :math:`D_0` the current denoiser output:

    - order 1: :math:`y_t = \tfrac{\tilde\sigma_t}{\tilde\sigma_s}y_s - (e^{-h}-1)D_0`;
    - 2M: :math:`D_0` replaced by :math:`(1+\tfrac1{2r})D_0 - \tfrac1{2r}D_{-1}`, :math:`r = h_{-1}/h`;
    - 3M: :math:`y_t = \tfrac{\tilde\sigma_t}{\tilde\sigma_s}y_s - (e^{-h}-1)D_0 + (\tfrac{e^{-h}-1}{h}+1)D_1
      - (\tfrac{e^{-h}-1+h}{h^2}-\tfrac12)D_2` with divided differences of the last three outputs.

    ``variant``: ``"exact"`` (default) or ``"published"`` third-order weight, see :class:`DPMSolver`.
    The order ramps up from 1 at the start; the step onto :math:`\tilde\sigma=0` is first order
    (as k-diffusion's ``sample_dpmpp_2m``). One evaluation per grid point; deterministic.
    """

    reference = "Lu et al. 2022, DPM-Solver++, arXiv:2211.01095"
    max_order: ClassVar[int] = 2

    def __init__(self, variant: str = "exact") -> None:
        self.variant = _check_variant(variant)
        self._d2 = 2.0 if variant == "exact" else 1.0

    def step(self, ctx: SolveContext, y: Tensor, iv: Interval, state: Any) -> Step:
        D = ctx.denoise(y, iv.t, iv.sigma, iv.alpha)
        d = _eps(y, D, iv.sigma)
        hist: list[tuple[float, Tensor]] = ((state or []) + [(iv.lam, D)])[-self.max_order :]
        s, st = iv.sigma, iv.sigma_next
        h = iv.lam_next - iv.lam
        em = math.expm1(-h)
        k = len(hist)
        if k == 1:
            return Step((st / s) * y - em * D, state=hist, direction=d)
        r0 = (hist[-1][0] - hist[-2][0]) / h
        if k == 2:
            Dd = (1 + 0.5 / r0) * D - (0.5 / r0) * hist[-2][1]
            return Step((st / s) * y - em * Dd, state=hist, direction=d)
        r1 = (hist[-2][0] - hist[-3][0]) / h
        D1_0 = (D - hist[-2][1]) / r0
        D1_1 = (hist[-2][1] - hist[-3][1]) / r1
        D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
        D2 = (D1_0 - D1_1) / (r0 + r1)
        out = (st / s) * y - em * D + (em / h + 1.0) * D1 - (self._d2 * ((em + h) / h**2 - 0.5)) * D2
        return Step(out, state=hist, direction=d)


@SOLVERS.register("dpmpp_2m", description="DPM-Solver++(2M): 2nd-order multistep, data prediction, log-SNR")
class DPMSolverPP2M(DPMSolverPP):
    __doc__ = DPMSolverPP.__doc__
    order: ClassVar[float] = 2.0
    #: the analytic grid (no model calls): at 5 NFE it beats Karras and log-SNR on both bundled networks
    default_grid: ClassVar[str] = "analytic"
    max_order = 2


@SOLVERS.register("dpmpp_3m", description="DPM-Solver++(3M): 3rd-order multistep, data prediction, log-SNR")
class DPMSolverPP3M(DPMSolverPP):
    __doc__ = DPMSolverPP.__doc__
    order: ClassVar[float] = 3.0
    max_order = 3


# ------------------------------------------------------------------------------------------------
@SOLVERS.register("unipc", description="UniPC (bh1/bh2): multistep predictor + corrector reusing the evaluation")
class UniPC(EDMSolver):
    r"""UniPC with data prediction (Zhao et al. 2023, arXiv:2302.04867).

    Predictor UniP-p from :math:`s` (current, output :math:`m_0`) to :math:`t`, :math:`h=\lambda_t-\lambda_s`:

    .. math:: y_t = \tfrac{\tilde\sigma_t}{\tilde\sigma_s}y_s - \varphi_1 m_0 - B(h)\sum_{k<p}\rho^p_k D_k,
       \quad \varphi_1 = e^{-h}-1,\ D_k = (m_{-k}-m_0)/r_k,\ r_k = (\lambda_{-k}-\lambda_s)/h,

    with :math:`\rho^p` solving :math:`R\rho = b` (:math:`R_{ik} = r_k^{i}`, :math:`b` from the
    :math:`\varphi` functions; :math:`\rho = 1/2` for :math:`p=2`). The corrector UniC-p applies the same
    formula once the model has been evaluated at the predicted point (:math:`r = 1` for the new point),
    and that evaluation is the next predictor's :math:`m_0`: no extra evaluation. ``variant`` picks
    :math:`B(h) = -h` (``bh1``) or :math:`e^{-h}-1` (``bh2``). Order ``order + 1`` with the corrector
    (predictor order ``order``), ramping up at the start; the corrector is skipped after the last
    evaluation (nothing to reuse) and the step onto :math:`\tilde\sigma=0` is first order.

    Args:
        order: predictor order 1–3 (diffusers' ``solver_order``; default 2).
        variant: ``"bh1"`` or ``"bh2"`` (default, recommended for few steps by the authors).
        corrector: apply UniC (default True).
        lower_order_final: use lower orders near the end (diffusers' default for < 15 steps).
    """

    reference = "Zhao et al. 2023, UniPC, arXiv:2302.04867"

    def __init__(
        self,
        order: int = 2,
        variant: str = "bh2",
        corrector: bool = True,
        lower_order_final: bool = True,
    ) -> None:
        if order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
        self.solver_order = int(order)
        self.order = float(order + 1 if corrector else order)
        self.variant = variant
        self.corrector = bool(corrector)
        self.lower_order_final = bool(lower_order_final)

    @classmethod
    def variants(cls) -> tuple[dict[str, Any], ...]:
        return ({}, {"variant": "bh1"})

    def _rhs(self, hist: list[tuple[float, Tensor]], h: float, order: int, lam_s: float):
        rks, D1s = [], []
        m0 = hist[-1][1]
        for k in range(1, order):
            lam_k, mk = hist[-1 - k]
            rk = (lam_k - lam_s) / h
            rks.append(rk)
            D1s.append((mk - m0) / rk)
        rks.append(1.0)
        phi1, b, Bh = unipc_b(h, order, self.variant)
        R = torch.tensor([[r**p for r in rks] for p in range(order)], dtype=torch.float64)
        return rks, D1s, phi1, b, Bh, R

    def correct(self, ctx: SolveContext, y: Tensor, m: Tensor, state: Any) -> Tensor:
        """UniC: the corrector of the previous step, with the evaluation ``m`` at the predicted point ``y``."""
        if not self.corrector or state is None or state["prev"] is None:
            return y
        y_prev, lam_s, s_s, lam_t, s_t, order_prev = state["prev"]
        hist = state["hist"]
        h = lam_t - lam_s
        rks, D1s, phi1, b, Bh, R = self._rhs(hist, h, order_prev, lam_s)
        if order_prev == 1:
            rhos = [0.5]
        else:
            rhos = torch.linalg.solve(R, torch.tensor(b, dtype=torch.float64)).tolist()
        corr = sum((rhos[k] * D1s[k] for k in range(len(D1s))), torch.zeros_like(y))
        D1_t = m - hist[-1][1]
        return (s_t / s_s) * y_prev - phi1 * hist[-1][1] - Bh * (corr + rhos[-1] * D1_t)

    def step(self, ctx: SolveContext, y: Tensor, iv: Interval, state: Any) -> Step:
        m = ctx.denoise(y, iv.t, iv.sigma, iv.alpha)
        d = _eps(y, m, iv.sigma)  # the direction where it was evaluated (before the correction)
        st = state or {"hist": [], "prev": None}
        y = self.correct(ctx, y, m, st)
        hist = (st["hist"] + [(iv.lam, m)])[-(self.solver_order + 1) :]
        # evaluations still to come, the final step's included
        n_left = iv.n - iv.i + (0 if ctx.final == "none" else 1)
        order = min(self.solver_order, len(hist))
        if self.lower_order_final:
            order = min(order, n_left)
        h = iv.lam_next - iv.lam
        rks, D1s, phi1, b, Bh, R = self._rhs(hist, h, order, iv.lam)
        y_next = (iv.sigma_next / iv.sigma) * y - phi1 * m
        if D1s:
            if order == 2:
                rhos_p = [0.5]
            else:
                rhos_p = torch.linalg.solve(R[:-1, :-1], torch.tensor(b[:-1], dtype=torch.float64)).tolist()
            y_next = y_next - Bh * sum((rhos_p[k] * D1s[k] for k in range(len(D1s))), torch.zeros_like(y))
        prev = (y, iv.lam, iv.sigma, iv.lam_next, iv.sigma_next, order)
        return Step(y_next, state={"hist": hist, "prev": prev}, direction=d)
