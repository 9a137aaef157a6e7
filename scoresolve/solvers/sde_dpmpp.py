r"""SDE-DPM-Solver++: multistep exponential integrators of the reverse SDE in data prediction
(Lu, Zhou, Bao, Chen, Li, Zhu 2022, "DPM-Solver++", arXiv:2211.01095, Sec. 5 and App. B).

Write :math:`\lambda = \log(\alpha_t/\sigma_t)` (half log-SNR, increasing towards the data) and
:math:`D(x, t) = (x + \sigma_t^2 s(x,t))/\alpha_t` (Tweedie's data prediction from the score). With
:math:`\tilde x = x/\alpha` the reverse SDE of any linear forward SDE (VE, VP, sub-VP) with noise
scale :math:`\eta` (1: the reverse SDE, 0: the probability-flow ODE) reads, in :math:`\lambda`,

.. math::  d\tilde x = (1+\eta)(D - \tilde x)\, d\lambda + \sqrt{2\eta}\, e^{-\lambda} d\bar w_\lambda ,

whose linear part and noise integrate exactly. Over a step :math:`\lambda_s \to \lambda_t`,
:math:`h = \lambda_t - \lambda_s > 0`, :math:`a = (1+\eta)h`:

.. math::  x_t = \frac{\sigma_t}{\sigma_s} e^{-\eta h} x_s
           + \alpha_t \int_0^h (1+\eta)e^{-(1+\eta)(h-u)} D(\lambda_s + u)\, du
           + \sigma_t \sqrt{1 - e^{-2\eta h}}\; z .

The solvers replace :math:`D` by the polynomial through the last ``order`` data predictions
(in :math:`\lambda`) and integrate it exactly, with
:math:`I_0 = 1-e^{-a}`, :math:`I_1 = h\,(1 - (1-e^{-a})/a)`,
:math:`I_2 = h^2 (1 - 2/a + 2(1-e^{-a})/a^2)`:

* 1st order (first step, or ``order=1``): :math:`\alpha_t I_0 D_0`;
* 2M: :math:`+\ \alpha_t I_1 (D_0 - D_1)/h_1` (``solver_type="heun"``, the exact integral of the
  linear interpolant) or :math:`+\ \alpha_t \tfrac12 I_0 (D_0 - D_1)\,h/h_1`
  (``solver_type="midpoint"``, the paper's Algorithm and k-diffusion's default);
* 3M: the quadratic through :math:`D_0, D_1, D_2` in Newton form,
  :math:`+\ \alpha_t\,[I_1 (f_{01} + h_1 f_{012}) + I_2 f_{012}]` with divided differences
  :math:`f_{01} = (D_0 - D_1)/h_1`, :math:`f_{012} = (f_{01} - (D_1-D_2)/h_2)/(h_1+h_2)`.

Each step costs one score evaluation; the noise comes from the run's noise source
(``ctx.noise``), so a generator or per-sample seeds make the run reproducible.

Budget: ``nfe=K`` spends exactly ``K`` evaluations. The run ends with :func:`scoresolve.sample`'s
``final=`` (default ``"tweedie"``: ``K - 1`` SDE steps from ``T`` to ``eps``, then Tweedie's
:math:`D(x_\epsilon, \epsilon)` with the ``K``-th evaluation; the noise :math:`\sigma_\epsilon` left at
``eps`` costs exact samples about 1 nat of mean :math:`\log p_0` on the digits mixture, and this removes
it; ``"none"``: ``K`` SDE steps ending at ``eps``).

Orders: with additive noise the strong order is 1 whatever the multistep order (the history only
reduces the drift error, i.e. the deterministic and weak error); with ``eta=0`` the 2M/3M
solvers are DPM-Solver++(2M)/(3M)-like ODE solvers of order 2/3. 3M is known to be unstable on
few steps with noise (k-diffusion's docs; here it blows up at ≤ 15 evaluations on the digits
mixture): prefer 2M below ~20 evaluations.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from torch import Tensor

from .._util import check_float, check_int
from ..registry import SOLVERS
from .base import GridSolver, Interval, SolveContext, Step
from .coefficients import phi_integrals

__all__ = ["SDEDPMSolverPP", "SDEDPMSolverPP2M", "SDEDPMSolverPP3M"]

_SOLVER_TYPES = ("heun", "midpoint")


class SDEDPMSolverPP(GridSolver):
    r"""SDE-DPM-Solver++ of a given multistep ``order`` (1, 2 or 3) on a fixed grid
    (Lu et al. 2022, arXiv:2211.01095). See the module docstring for the update.

    Stochastic; one score evaluation per step; strong order 1 (additive noise), deterministic
    order = ``order`` when ``eta=0``. Default grid: uniform in log-SNR (= uniform in log σ on the
    EDM scale, k-diffusion's "exponential" schedule).

    Args:
        order: multistep order (1, 2 or 3); the first steps use the lower orders available.
        eta: noise scale (1: the reverse SDE; 0: the probability-flow ODE; in between: partial
            noise, as k-diffusion's ``eta``).
        solver_type: ``"midpoint"`` (the paper's 2M coefficient, default) or ``"heun"`` (exact
            integral of the linear interpolant); only affects the 2M term. Both have order 2 with
            ``eta=0``; with noise ``"heun"`` amplifies the noise in :math:`D_0 - D_1` more and
            measured much worse on the digits mixture (4.8× vs 1.9× the floor at 15 NFE).
        lower_order_final: use first order for the last step when the grid has fewer than 15
            steps (diffusers' stabilisation for few steps).
        variant: ``"exact"`` (default: the quadratic's exact integral) or ``"published"`` (half the
            :math:`I_2` weight of the 3M term, as k-diffusion's ``sample_dpmpp_3m_sde``); 3M only.
    """

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 1
    stochastic: ClassVar[bool] = True
    adaptive: ClassVar[bool] = False
    reference: ClassVar[str] = (
        "Lu et al. 2022, DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models, "
        "arXiv:2211.01095"
    )
    default_grid: ClassVar[str] = "log_snr"
    budgeted: ClassVar[bool] = True
    multistep_order: ClassVar[int] = 1

    def __init__(
        self,
        order: int | None = None,
        eta: float = 1.0,
        solver_type: str = "midpoint",
        lower_order_final: bool = False,
        variant: str = "exact",
    ) -> None:
        k = type(self).multistep_order if order is None else order
        check_int(k, "order", max=3)
        self.k = k
        self.eta = check_float(eta, "eta", positive=False)
        if solver_type not in _SOLVER_TYPES:
            raise ValueError(f"solver_type must be one of {_SOLVER_TYPES}, got {solver_type!r}")
        self.solver_type = solver_type
        self.lower_order_final = bool(lower_order_final)
        if variant not in ("exact", "published"):
            raise ValueError(f"variant must be 'exact' or 'published', got {variant!r}")
        self.variant = variant

    def _data_pred(self, ctx: SolveContext, x: Tensor, i: int) -> Tensor:
        t = ctx.t(i, x)
        s = ctx.score(x, t)
        t64 = ctx.grid[i : i + 1]  # type: ignore[index]
        a = float(ctx.sde.alpha(t64))
        sig = float(ctx.sde.marginal_std(t64))
        return (x + (sig * sig) * s) / a

    def step(self, ctx: SolveContext, x: Tensor, iv: Interval, state: Any) -> Step:
        assert ctx.grid is not None
        i, n = iv.i, iv.n
        d0 = self._data_pred(ctx, x, i)
        last = iv.last
        sde = ctx.sde
        ts = ctx.grid[i : i + 2]
        lam = sde.log_snr(ts)
        lam_s, lam_t = float(lam[0]), float(lam[1])
        h = lam_t - lam_s
        if not h > 0:
            raise ValueError(
                f"the grid must have increasing log-SNR (decreasing noise); step {i} goes from "
                f"t={float(ts[0])} to t={float(ts[1])}"
            )
        a_t = float(sde.alpha(ts[1:]))
        sig_s, sig_t = float(sde.marginal_std(ts[:1])), float(sde.marginal_std(ts[1:]))
        i0, i1, i2 = phi_integrals(h, self.eta)

        hist: list[tuple[Tensor, float]] = state or []  # [(D_prev, h_prev), (D_prev2, h_prev2)]
        k = min(self.k, 1 + len(hist))
        if last and self.lower_order_final and n < 15:
            k = 1
        x_mean = (sig_t / sig_s * math.exp(-self.eta * h)) * x + (a_t * i0) * d0
        if k >= 2:
            d1, h1 = hist[0]
            f01 = (d0 - d1) / h1
            if k == 3:
                d2, h2 = hist[1]
                f012 = (f01 - (d1 - d2) / h2) / (h1 + h2)
                w2 = i2 if self.variant == "exact" else 0.5 * i2
                x_mean = x_mean + (a_t * i1) * (f01 + h1 * f012) + (a_t * w2) * f012
            elif self.solver_type == "heun":
                x_mean = x_mean + (a_t * i1) * f01
            else:
                x_mean = x_mean + (a_t * 0.5 * i0 * h) * f01
        if self.eta > 0:
            x_next = x_mean + (sig_t * math.sqrt(-math.expm1(-2.0 * self.eta * h))) * ctx.noise.randn_like(x)
        else:
            x_next = x_mean
        new_state = [(d0, h)] + hist[: self.k - 2] if self.k >= 2 else None
        return Step(x_next, x_mean, new_state)


@SOLVERS.register(
    "sde_dpmpp_2m", description="SDE-DPM-Solver++(2M): stochastic 2nd-order multistep, 1 NFE/step (Lu et al. 2022)"
)
class SDEDPMSolverPP2M(SDEDPMSolverPP):
    r"""SDE-DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095): the second-order multistep
    exponential integrator of the reverse SDE in data prediction; one evaluation per step,
    ``nfe=K`` → ``K`` evaluations. See :class:`SDEDPMSolverPP`."""

    multistep_order = 2


@SOLVERS.register(
    "sde_dpmpp_3m",
    description="SDE-DPM-Solver++(3M): stochastic 3rd-order multistep, 1 NFE/step; unstable at <= 15 NFE",
)
class SDEDPMSolverPP3M(SDEDPMSolverPP):
    r"""SDE-DPM-Solver++(3M): the third-order multistep variant (quadratic interpolant of the last
    three data predictions in log-SNR). Unstable at few steps (≤ 15 evaluations on the digits
    mixture); use :class:`SDEDPMSolverPP2M` there. See :class:`SDEDPMSolverPP`."""

    multistep_order = 3
