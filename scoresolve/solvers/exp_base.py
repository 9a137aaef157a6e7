r"""Shared machinery of the few-step (budgeted) ODE solvers: DPM-Solver, DPM-Solver++, UniPC, iPNDM, EDM Heun.

All of them integrate the probability-flow ODE in the EDM variables of the SDE, whatever the SDE:

.. math::  y = x/\alpha_t,\qquad \tilde\sigma = \sigma_t/\alpha_t = e^{-\lambda},\qquad
           \frac{dy}{d\tilde\sigma} = \frac{y - D(y,\tilde\sigma)}{\tilde\sigma} = \hat\varepsilon,
           \qquad\frac{dy}{d\lambda} = D - y,

with the denoiser (Tweedie's posterior mean) :math:`D = y + \tilde\sigma^2 \alpha_t\, s_\theta(x, t)`
and the noise prediction :math:`\hat\varepsilon = -\sigma_t s_\theta(x, t)`. Only the SDE's
``alpha``, ``marginal_std``, ``sigma`` and ``log_snr`` are used, so VE, VP and sub-VP share the code.

Budget semantics (``steps=K`` spends exactly ``K`` score evaluations, the final step included):

- ``last_step="none"``: ``K`` grid intervals from ``T`` to ``eps``; one evaluation at each grid point
  but the last; the result is the ODE state at ``eps`` (noise level :math:`\tilde\sigma_{min}`).
- ``last_step="zero"``: ``K - 1`` grid intervals from ``T`` to ``eps``; evaluations at all ``K`` grid
  points (``eps`` included); then one more step from :math:`\tilde\sigma(eps)` to :math:`\tilde\sigma = 0`,
  the same for every solver here (:meth:`Run.jump_to_zero`): a variable-step Adams–Bashforth step of
  :math:`dy/d\tilde\sigma = (y - D)/\tilde\sigma` (iPNDM's own rule) through up to 4 kept directions, the last
  evaluation and earlier ones spaced by at least √2 in :math:`\tilde\sigma` (:meth:`Run.plan_tail`; on a fine grid
  consecutive nodes would multiply a float16 model's rounding by 10^3–10^5). The exponential integrators'
  own log-SNR update degenerates at :math:`h = \infty` into the Tweedie step :math:`y = D`, whose error does
  not shrink with the budget (a data direction of variance :math:`v` ends with its spread scaled by
  :math:`\sqrt{v/(v+\tilde\sigma_{min}^2)}`: +0.9 nats of mean :math:`\log p_0` on digits × VP at 50–200 steps).
- ``last_step="tweedie"``: as ``"zero"`` but the final step is always :math:`y = D` (Tweedie), the jump the
  peers take (k-diffusion, diffusers).

Analytical first step (``gaussian_prior=(mean, cov)``, any budgeted solver): at the largest noise
levels the data density seen through the noise is almost that of a Gaussian with the data's mean
:math:`m` and covariance :math:`C = V\,\mathrm{diag}(c)\,V^\top`, whose probability-flow ODE has the
closed-form solution

.. math:: y(\tilde\sigma_1) = m + V\,\mathrm{diag}\Big(\sqrt{\tfrac{c + \tilde\sigma_1^2}
          {c + \tilde\sigma_0^2}}\Big)V^\top\,(y(\tilde\sigma_0) - m)

(Gaussian denoiser :math:`D_G = m + C(C + \tilde\sigma^2 I)^{-1}(y - m)`). With the option the
first grid interval is this flow and costs **no evaluation**: the grid gets one more interval for the
same budget (``steps=K`` still spends exactly ``K`` evaluations, now at grid points ``1..K``), and
solvers that keep a history may seed it with the Gaussian direction at ``T`` (iPNDM does:
:math:`d_G = \tilde\sigma_0(C+\tilde\sigma_0^2)^{-1}(y-m)`). The moments are the user's (estimated
from data, or provided by the model's author); ``cov`` may be a full ``(D, D)`` matrix, a ``(D,)``
vector of variances (diagonal) or a scalar. ``gaussian_prior="estimate"`` uses the moments a
:class:`~scoresolve.ScoreModel` carries (``data_moments=(mean, cov)``, :meth:`BudgetSolver.for_model`),
calibration or not, and otherwise estimates them during grid calibration
(:func:`scoresolve.calibrate.calibrate_grid`). Worth about one evaluation at 5 NFE on the digits mixture
(docs/fast_samplers.md).

Solver state and coefficients are kept in float32 (float64 if the samples are float64) whatever
the dtype of the model's output, and coefficients are computed in float64 Python floats.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._util import check_int
from ..gaussian import GaussianFit
from ..models import ScoreModel
from .base import SolveContext, Solver
from .coefficients import lagrange_integral_weights

__all__ = ["BudgetSolver", "Run", "LAST_STEPS"]

LAST_STEPS = ("none", "zero", "tweedie")
#: nodes of the final step onto sigma = 0 (:meth:`Run.plan_tail`): at most this many ...
TAIL_POINTS = 4
#: ... spaced by at least this factor in sigma (2 in sigma^2)
TAIL_RATIO = math.sqrt(2.0)


def _f64(v: float) -> Tensor:
    return torch.tensor(v, dtype=torch.float64)


@dataclass
class Run:
    """One run of a budgeted solver: the grid in every variable, and the counted denoiser.

    ``t[i]``, ``s[i]`` (:math:`\\tilde\\sigma`), ``lam[i]`` and ``alpha[i]`` are Python floats for the
    extended grid: the user's grid, plus a final point with ``s = 0`` (``lam = inf``) when the run
    ends at :math:`\\tilde\\sigma = 0`. ``n_steps`` is the number of steps (``len(s) - 1``).
    """

    ctx: SolveContext
    t: list[float]
    s: list[float]
    lam: list[float]
    alpha: list[float]
    to_zero: bool
    wdtype: torch.dtype
    xdtype: torch.dtype
    extras: dict[str, Any] = field(default_factory=dict)
    gauss: GaussianFit | None = None
    #: grid indices whose values the final step onto :math:`\tilde\sigma = 0` uses (:meth:`plan_tail`)
    tail_idx: tuple[int, ...] = ()
    #: the values kept at those indices, ``{i: (sigma_i, value)}`` (:meth:`keep`)
    tail: dict[int, tuple[float, Tensor]] = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return len(self.s) - 1

    def plan_tail(self, points: int = TAIL_POINTS, ratio: float = TAIL_RATIO) -> None:
        r"""Choose the nodes of the final step onto :math:`\tilde\sigma = 0`: the last evaluated grid point
        :math:`N` and, going back, each earlier point whose :math:`\tilde\sigma` is at least ``ratio`` times the
        last one chosen (``points`` in all). On a coarse grid these are the last consecutive points; on a fine
        one (hundreds of steps) they are spread, which keeps the extrapolation weights bounded: consecutive
        nodes of a 1000-step log-SNR grid differ by 0.9 % in :math:`\tilde\sigma`, and extrapolating through
        them over the whole last interval multiplies the rounding of a float16 / bfloat16 model output by
        10^3–10^5 (measured: −18 / −740 nats of mean :math:`\log p_0` for iPNDM at 1000 steps)."""
        if not self.to_zero:
            return
        n = self.n_steps - 1
        idx = [n]
        for j in range(n - 1, -1, -1):
            if len(idx) >= points:
                break
            if self.s[j] >= ratio * self.s[idx[-1]]:
                idx.append(j)
        self.tail_idx = tuple(idx)

    def keep(self, i: int, value: Tensor) -> None:
        """Keep ``value`` (the direction :math:`(y - D)/\\tilde\\sigma` at point ``i``) if the last step needs it."""
        if i in self.tail_idx:
            self.tail[i] = (self.s[i], value)

    def jump_to_zero(self, y: Tensor, points: int = TAIL_POINTS) -> Tensor:
        r"""The final step from the last evaluated grid point :math:`N` onto :math:`\tilde\sigma = 0`: the
        variable-step Adams–Bashforth step of the PF-ODE :math:`dy/d\tilde\sigma = d = (y - D)/\tilde\sigma`,
        :math:`y(0) = y_N + \sum_j w_j d_j` with :math:`w_j = \int_{\tilde\sigma_N}^0 \ell_j` the Lagrange weights
        through the kept directions (:meth:`tail_nodes`, kept with :meth:`keep`; at most ``points``)."""
        nodes = self.tail_nodes(points)
        w = lagrange_integral_weights([sj for sj, _ in nodes], self.s[self.n_steps - 1], 0.0)
        for wj, (_, dj) in zip(w, nodes, strict=True):
            y = y + wj * dj
        return y

    def tail_nodes(self, points: int) -> list[tuple[float, Tensor]]:
        """The kept ``(sigma, value)`` pairs of the final step, the last evaluated point first (at most ``points``)."""
        return [self.tail[i] for i in self.tail_idx if i in self.tail][:points]

    def denoise(self, y: Tensor, i: int) -> Tensor:
        """Counted evaluation at grid point ``i``: returns :math:`D(y, \\tilde\\sigma_i)` in the working dtype."""
        return self.denoise_at(y, self.t[i], self.s[i], self.alpha[i])

    def denoise_at(self, y: Tensor, t: float, s: float, alpha: float) -> Tensor:
        """Counted evaluation at an arbitrary time ``t`` (with its :math:`\\tilde\\sigma`, :math:`\\alpha`)."""
        x = (y * alpha).to(self.xdtype)
        tt = torch.full((y.shape[0],), t, device=y.device, dtype=self.xdtype)
        score = self.ctx.score(x, tt).to(self.wdtype)
        return y + (s * s * alpha) * score


class BudgetSolver(Solver):
    """Base class of the budgeted few-step ODE solvers (see the module docstring).

    Subclasses implement :meth:`update`: given the state ``y`` at extended-grid point ``i`` and the
    history, take the step to point ``i + 1``. The history is a list of ``(lam, s, D)`` with the
    most recent last; it lives in the run's local variables, never on the object.

    Args:
        last_step: ``"none"`` (stop at ``eps``), ``"zero"`` (final step to :math:`\\tilde\\sigma=0` with
            the solver's own rule, see the module docstring) or ``"tweedie"`` (final step :math:`y = D`).
        calibrate: ``False``; ``True`` to replace the grid by one calibrated for this model, solver
            and budget before sampling (:func:`scoresolve.calibrate.calibrate_grid`, cost reported in
            ``SampleResult.info["calibration"]``); or a path to a cache file used for it.

    The attribute ``calibrate_metric`` (default ``"both"``) is the ``metric=`` of that calibration.
    """

    denoise_default: ClassVar[bool] = False
    default_grid: ClassVar[str] = "log_snr"
    stochastic: ClassVar[bool] = False
    #: smallest budget ``steps`` accepted with ``last_step="none"``
    min_steps: ClassVar[int] = 1

    def __init__(
        self,
        last_step: str = "none",
        calibrate: bool | str = False,
        gaussian_prior: tuple[Tensor | float, Tensor | float] | str | None = None,
    ) -> None:
        self._gauss_estimate = False
        if gaussian_prior is None:
            self._gauss: GaussianFit | None = None
        elif isinstance(gaussian_prior, str):
            if gaussian_prior != "estimate":
                raise ValueError(f"gaussian_prior must be None, (mean, cov) or 'estimate', got {gaussian_prior!r}")
            self._gauss, self._gauss_estimate = None, True
        elif isinstance(gaussian_prior, GaussianFit):
            self._gauss = gaussian_prior
        elif isinstance(gaussian_prior, (tuple, list)) and len(gaussian_prior) == 2:
            self._gauss = GaussianFit(*gaussian_prior)
        else:
            raise TypeError("gaussian_prior must be None, 'estimate' or a (mean, cov) pair of the data's moments")
        if last_step not in LAST_STEPS:
            raise ValueError(f"last_step must be one of {LAST_STEPS}, got {last_step!r}")
        if not isinstance(calibrate, (bool, str)) and not hasattr(calibrate, "__fspath__"):
            raise TypeError(f"calibrate must be a bool or a cache file path, got {type(calibrate).__name__}")
        #: whether a model's ``data_moments`` replace the estimate (:meth:`for_model`)
        self._gauss_from_model = self._gauss_estimate
        self.last_step = last_step
        self.calibrate = calibrate
        self.calibrate_metric = "both"
        #: extra keyword arguments of :func:`~scoresolve.calibrate.calibrate_grid` (part of the fingerprint)
        self.calibrate_options: dict[str, Any] = {}

    @property
    def gaussian_prior(self) -> GaussianFit | str | None:
        """The Gaussian fit used for the analytical first step: a :class:`GaussianFit`, ``"estimate"``
        (estimated during calibration) or ``None`` (off)."""
        return "estimate" if self._gauss_estimate else self._gauss

    @property
    def uses_gaussian(self) -> bool:
        """Whether the first grid interval is the analytical Gaussian step."""
        return self._gauss is not None or self._gauss_estimate

    def for_model(self, model: Any) -> BudgetSolver:
        """This solver for sampling ``model``: with ``gaussian_prior="estimate"`` and a
        :class:`~scoresolve.ScoreModel` that carries ``data_moments``, a copy whose Gaussian fit is the
        model's moments (nothing is estimated, no calibration is needed for them, and calibration
        fingerprints hold their digest instead of ``"estimate"``); otherwise ``self``. An explicit
        ``gaussian_prior=(mean, cov)`` wins over the model's moments and ``gaussian_prior=None`` stays off.
        Called by :func:`scoresolve.sample` (before the grid is made: the Gaussian step adds a grid
        interval) and :func:`scoresolve.calibrate.calibrate_grid`."""
        fit = model.data_fit if isinstance(model, ScoreModel) else None
        if fit is None or not self._gauss_from_model or self._gauss is not None:
            return self
        out = copy.copy(self)
        out._gauss, out._gauss_estimate = fit, False
        return out

    # --- configuration seen by calibration and caches ---------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-friendly description of the solver (name + options), used in cache fingerprints."""
        cfg = {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "calibrate"}
        if self._gauss_estimate:
            cfg["gaussian_prior"] = "estimate"
        elif self._gauss is not None:
            cfg["gaussian_prior"] = self._gauss.digest
        return {"class": type(self).__name__, **cfg}

    def steps_to_grid(self, steps: int) -> int:
        check_int(steps, "steps")
        if self.uses_gaussian:  # one more interval, taken analytically
            return steps + (1 if self.last_step == "none" else 0)
        if self.last_step == "none":
            if steps < self.min_steps:
                raise ValueError(f"steps={steps} is below the minimum budget {self.min_steps} of {type(self).__name__}")
            return steps
        if steps < 2:
            raise ValueError(
                f"steps={steps} is too small for last_step={self.last_step!r} (it needs >= 2 evaluations: one "
                "grid interval plus the final step to sigma=0); use last_step='none' for a budget of 1"
            )
        return steps - 1

    def nfe_for(self, n_intervals: int) -> int:
        return n_intervals + (0 if self.last_step == "none" else 1) - (1 if self.uses_gaussian else 0)

    # --- the loop ----------------------------------------------------------------------------
    def make_run(self, ctx: SolveContext, x: Tensor, grid: Tensor) -> Run:
        sde = ctx.sde
        g = grid.to(torch.float64).cpu()
        s = sde.sigma(g).tolist()
        lam = [-math.log(v) for v in s]
        alpha = sde.alpha(g).tolist()
        t = g.tolist()
        to_zero = self.last_step != "none"
        if to_zero:
            t, s, lam, alpha = t + [0.0], s + [0.0], lam + [math.inf], alpha + [1.0]
        wd = torch.float64 if x.dtype == torch.float64 else torch.float32
        run = Run(
            ctx=ctx, t=t, s=s, lam=lam, alpha=alpha, to_zero=to_zero, wdtype=wd, xdtype=x.dtype, gauss=self._gauss
        )
        run.plan_tail()
        return run

    def solve(self, ctx: SolveContext, x: Tensor) -> Tensor:
        assert ctx.grid is not None, "budgeted solvers need a grid"
        gauss = self._gauss
        if self._gauss_estimate and not self.calibrate:
            raise ValueError(
                "gaussian_prior='estimate' estimates the data's moments during calibration: pass calibrate=True "
                "(or a cache file path), give gaussian_prior=(mean, cov), or sample a ScoreModel that carries "
                "data_moments=(mean, cov)"
            )
        if self.calibrate:
            from ..calibrate import calibrate_for_context

            cg = calibrate_for_context(ctx, self, x)
            ctx.grid = cg.grid
            ctx.info["times"] = ctx.grid
            if self._gauss_estimate:
                gauss = cg.gaussian_fit()
        if gauss is not None and gauss.name == "data_moments":
            ctx.info["gaussian_prior"] = "model"
        run = self.make_run(ctx, x, ctx.grid)
        run.gauss = gauss
        return self.integrate(run, x)

    def integrate(self, run: Run, x: Tensor) -> Tensor:
        """Run all steps from ``x`` at ``T``; returns the result in ``x``'s dtype (x-space)."""
        ctx = run.ctx
        y = x.to(run.wdtype) / run.alpha[0]
        state: Any = None
        first = 0
        if self.uses_gaussian:
            if run.gauss is None:
                raise ValueError("gaussian_prior='estimate': the moments are estimated by calibration, none given")
            if run.n_steps < 2:
                raise ValueError("gaussian_prior needs a grid of at least 2 intervals (the first is analytical)")
            y, dG = run.gauss.flow(y, run.s[0], run.s[1])
            state = self.gaussian_state(run, dG)
            first = 1
            if ctx.trajectory is not None or ctx.callback is not None or ctx.progress is not None:
                xo = (y * run.alpha[1]).to(x.dtype)
                ctx.after_step(0, torch.full((x.shape[0],), run.t[1], dtype=x.dtype, device=x.device), xo)
        for i in range(first, run.n_steps):
            ctx.score.step = i
            y, state = self.update(run, y, i, state)
            if ctx.trajectory is not None or ctx.callback is not None or ctx.progress is not None:
                xo = (y * run.alpha[i + 1]).to(x.dtype)
                ctx.after_step(i, torch.full((x.shape[0],), run.t[i + 1], dtype=x.dtype, device=x.device), xo)
        if not bool(torch.isfinite(y).all()):
            raise FloatingPointError(f"{type(self).__name__}: the final state is not finite (grid {run.s[:4]}...)")
        out = (y * run.alpha[-1]).to(x.dtype)
        ctx.info["x_mean"] = out
        return out

    def update(self, run: Run, y: Tensor, i: int, state: Any) -> tuple[Tensor, Any]:  # pragma: no cover
        raise NotImplementedError

    def gaussian_state(self, run: Run, d_gauss: Tensor) -> Any:
        r"""Solver state after the analytical first step, given the Gaussian direction
        :math:`d_G = (y - D_G)/\tilde\sigma_0` at ``T``: ``None`` (history starts at grid point 1) unless
        a subclass seeds its history with it."""
        return None

    def is_final_zero(self, run: Run, i: int) -> bool:
        """Whether step ``i`` is the final jump to :math:`\\tilde\\sigma = 0`."""
        return run.to_zero and i == run.n_steps - 1
