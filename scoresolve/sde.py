r"""Forward SDEs of score-based generative models (Song et al. 2021, arXiv:2011.13456).

Every SDE here is *linear* in ``x``:

.. math::  dx = h(t)\, x\, dt + g(t)\, dw,

so its perturbation kernel is Gaussian, :math:`p_{0t}(x_t \mid x_0) = N(\alpha(t) x_0, \sigma(t)^2 I)`,
and everything a solver needs follows from four scalar functions of ``t``: the drift coefficient
:math:`h`, the diffusion :math:`g`, the mean coefficient :math:`\alpha` and the standard deviation
:math:`\sigma`. Solvers call only the methods of :class:`SDE`; they never branch on its type, so a new
SDE is one subclass. ``t`` is a tensor of shape ``(B,)`` or 0-d; coefficient methods return tensors of
``t``'s shape and :meth:`SDE.bcast` views them against ``x`` of shape ``(B, *dims)``. Time runs forward
from 0 (data) to ``T`` (prior); samplers integrate backwards. Table of SDEs: docs/core.md."""

from __future__ import annotations

import functools
import inspect
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._util import check_float

__all__ = ["SDE", "VESDE", "VPSDE", "SubVPSDE", "RectifiedFlow", "resolution_shift"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


class SDE(ABC):
    r"""A linear forward SDE :math:`dx = h(t) x\,dt + g(t)\,dw` on :math:`t \in [0, T]`.

    Subclasses implement :meth:`drift_coef`, :meth:`diffusion`, :meth:`alpha`,
    :meth:`marginal_std` and set :attr:`prior_std`; everything else is derived.

    Identity: the arguments of a subclass's ``__init__`` (defaults filled in) are captured when an
    instance is made, so :meth:`config`, ``==``, ``hash`` and ``repr`` follow from them with no
    code in the subclass: ``MySDE(25.0) != MySDE(10.0)``. A captured value is read back from the
    attribute of the same name when there is one (so ``VESDE(sigma_max=50)`` and
    ``VESDE(sigma_max=50.0)`` are equal). Every concrete subclass is also known by its class name to
    :func:`scoresolve.io.sde_from_config`, so a checkpoint's SDE rebuilds without registration.

    Attributes:
        T: end time (1 for the SDEs of the paper).
        N: number of discretisation steps of the paper's discrete-time counterpart (SMLD/DDPM).
        default_eps: the smallest time used for sampling in the paper's released configurations.
        prior_std: the prior is :math:`N(0, \mathrm{prior\_std}^2 I)`.
        likelihood_local_grid: the time grid (a name of :func:`scoresolve.likelihood.likelihood_grid` and its
            options) of the likelihood's budget method in locally Gaussian coordinates (gradient fields).
    """

    T: float = 1.0
    N: int = 1000
    default_eps: float = 1e-3
    prior_std: float = 1.0
    likelihood_local_grid: ClassVar[tuple[str, tuple[tuple[str, float], ...]]] = ("power", (("rho", 1.5),))

    #: every SDE class by name (filled by ``__init_subclass__``; used to rebuild a checkpoint's SDE)
    classes: ClassVar[dict[str, type[SDE]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SDE.classes.setdefault(cls.__name__, cls)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_captures_params", False):
            return
        sig = inspect.signature(init)

        @functools.wraps(init)
        def captured(self: SDE, *args: Any, **kw: Any) -> None:
            outermost = "_params" not in self.__dict__
            if outermost:
                self.__dict__["_params"] = {}  # a super().__init__ call inside does not capture
            try:
                init(self, *args, **kw)
            except BaseException:
                if outermost:
                    del self.__dict__["_params"]
                raise
            if outermost:
                bound = sig.bind(self, *args, **kw)
                bound.apply_defaults()
                params: dict[str, Any] = {}
                for name, value in list(bound.arguments.items())[1:]:
                    if sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                        params.update(value)
                    elif sig.parameters[name].kind is not inspect.Parameter.VAR_POSITIONAL:
                        params[name] = value
                    elif value:
                        params[name] = list(value)
                self.__dict__["_params"] = {k: _plain(getattr(self, k, v)) for k, v in params.items()}

        captured._captures_params = True  # type: ignore[attr-defined]
        cls.__init__ = captured  # type: ignore[method-assign]

    # --- the four functions that define a linear SDE -------------------------------------------
    @abstractmethod
    def drift_coef(self, t: Tensor) -> Tensor:
        r""":math:`h(t)` in the drift :math:`f(x, t) = h(t)\,x`."""

    @abstractmethod
    def diffusion(self, t: Tensor) -> Tensor:
        r"""The diffusion coefficient :math:`g(t)`."""

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        r"""Mean coefficient of the perturbation kernel: :math:`E[x_t \mid x_0] = \alpha(t) x_0`."""

    @abstractmethod
    def marginal_std(self, t: Tensor) -> Tensor:
        r"""Standard deviation :math:`\sigma(t)` of the perturbation kernel :math:`p_{0t}`."""

    # --- derived quantities -------------------------------------------------------------------
    @staticmethod
    def bcast(c: Tensor, x: Tensor) -> Tensor:
        """View a per-sample coefficient ``c`` (shape ``(B,)`` or 0-d) against ``x`` ``(B, *dims)``."""
        if c.ndim == 0:
            return c
        return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Forward drift :math:`f(x, t) = h(t) x`."""
        return self.bcast(self.drift_coef(t), x) * x

    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""Mean :math:`\alpha(t) x_0` and std :math:`\sigma(t)` of :math:`p_{0t}(x_t \mid x_0)`."""
        return self.bcast(self.alpha(t), x0) * x0, self.marginal_std(t)

    def log_snr(self, t: Tensor) -> Tensor:
        r"""Half log signal-to-noise ratio :math:`\lambda(t) = \log(\alpha(t)/\sigma(t))` (decreasing)."""
        return torch.log(self.alpha(t)) - torch.log(self.marginal_std(t))

    def sigma(self, t: Tensor) -> Tensor:
        r"""EDM/k-diffusion noise level :math:`\sigma(t)/\alpha(t) = e^{-\lambda(t)}`.

        ``x_t / alpha(t)`` is data plus Gaussian noise of this standard deviation.
        """
        return self.marginal_std(t) / self.alpha(t)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`(\alpha(t), \tilde\sigma(t))` together: the scale and the EDM noise level, as a grid's
        intervals need them (the SDEs here evaluate their schedule once for both)."""
        return self.alpha(t), self.sigma(t)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        r"""Inverse of :meth:`log_snr`. The default bisects (60 halvings, float64); subclasses with a
        closed form override it."""
        lam64 = lam.to(torch.float64)
        lo = torch.zeros_like(lam64)
        hi = torch.full_like(lam64, self.T)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam64  # log-SNR decreases with t: the root lies later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(lam.dtype)

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        """Inverse of :meth:`sigma` (the EDM noise level)."""
        return self.t_from_log_snr(-torch.log(sigma))

    def transition(self, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        r"""Exact Gaussian transition of the forward SDE from time ``s`` to ``t > s``:
        :math:`x_t \mid x_s \sim N(a\,x_s, b^2 I)` with :math:`a = \alpha(t)/\alpha(s)` and
        :math:`b^2 = \sigma(t)^2 - a^2 \sigma(s)^2` (variances of a linear SDE add up).

        Returns ``(a, b)``.
        """
        a = self.alpha(t) / self.alpha(s)
        b2 = self.marginal_std(t) ** 2 - (a * self.marginal_std(s)) ** 2
        return a, torch.sqrt(torch.clamp(b2, min=0.0))

    def discretize(self, x: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        r"""Discrete forward step from ``s`` to ``t`` written as :math:`x_t = x_s + f + G z`.

        Uses the exact transition (:meth:`transition`): :math:`f = (a-1)x`, :math:`G = b`. On the
        paper's grids this is the SMLD discretisation for VE (:math:`f=0`,
        :math:`G=\sqrt{\sigma_t^2-\sigma_s^2}`) and the DDPM one for VP
        (:math:`f=(\sqrt{1-\beta_i}-1)x`, :math:`G=\sqrt{\beta_i}`, with
        :math:`1-\beta_i = \bar\alpha_t/\bar\alpha_s` exact rather than :math:`\beta(t)/N`).
        These are what the reverse-diffusion predictor reverses.
        """
        a, b = self.transition(t, s)
        return self.bcast(a - 1.0, x) * x, b

    def reverse_drift(self, x: Tensor, t: Tensor, score: Tensor, probability_flow: bool = False) -> Tensor:
        r"""Drift of the reverse-time SDE, :math:`f - g^2 \nabla\log p_t`, or of the
        probability-flow ODE, :math:`f - \tfrac12 g^2 \nabla\log p_t` (Song et al. 2021, eqs. 6, 13).

        Both are written for time running forward; integrate them with a negative ``dt``.
        """
        g2 = self.bcast(self.diffusion(t) ** 2, x)
        return self.drift(x, t) - (0.5 if probability_flow else 1.0) * g2 * score

    def pf_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        r"""Probability-flow ODE drift :math:`dx/dt = f(x,t) - \tfrac12 g(t)^2 \nabla\log p_t(x)`."""
        return self.reverse_drift(x, t, score, probability_flow=True)

    # --- prior --------------------------------------------------------------------------------
    def prior_sample(
        self,
        shape: Sequence[int],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        r"""Draw from the prior :math:`N(0, \mathrm{prior\_std}^2 I)` with the given generator."""
        z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return z * self.prior_std

    def prior_logp(self, z: Tensor) -> Tensor:
        """Log-density of the prior at each sample of ``z`` (shape ``(B, *dims)``) → ``(B,)``."""
        d = z[0].numel()
        s2 = self.prior_std**2
        sq = z.reshape(z.shape[0], -1).pow(2).sum(-1)
        return -0.5 * d * math.log(2 * math.pi * s2) - 0.5 * sq / s2

    # --- misc ---------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The constructor arguments (captured automatically, JSON-friendly), with the class name
        under ``"type"``."""
        return {"type": type(self).__name__, **self.__dict__.get("_params", {}), **self._config()}

    def _config(self) -> dict[str, Any]:
        """Extra entries for :meth:`config` (none needed: ``__init__``'s arguments are captured)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SDE) and type(self) is type(other) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash(json.dumps(self.config(), sort_keys=True, default=repr))


def _plain(v: Any) -> Any:
    """A captured constructor argument in JSON-friendly form (tensors and tuples become lists)."""
    if isinstance(v, Tensor):
        return v.detach().cpu().tolist()
    if isinstance(v, (tuple, list)):
        return [_plain(u) for u in v]
    if isinstance(v, dict):
        return {str(k): _plain(u) for k, u in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)


def _check_N(N: Any) -> int:
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"N must be an integer >= 1 (the number of discretisation steps), got {N!r}")
    return N


class VESDE(SDE):
    r"""Variance-exploding SDE (SMLD/NCSN in continuous time).

    :math:`dx = \sqrt{d[\sigma^2(t)]/dt}\,dw` with
    :math:`\sigma(t) = \sigma_{min}(\sigma_{max}/\sigma_{min})^t`, so
    :math:`g(t) = \sigma(t)\sqrt{2\log(\sigma_{max}/\sigma_{min})}`, :math:`\alpha = 1` and the
    perturbation std is :math:`\sigma(t)` (the paper neglects the :math:`\sigma_{min}` at
    :math:`t=0`: the process starts from data smoothed by :math:`N(0, \sigma_{min}^2)`).
    Prior :math:`N(0, \sigma_{max}^2 I)`; sampling ends at :math:`\epsilon = 10^{-5}`.
    """

    default_eps = 1e-5
    #: t is uniform in log sigma, so a power grid in t would crowd sigma_min (measured in docs/likelihood.md)
    likelihood_local_grid = ("warped", (("center", -0.5), ("width", 1.5)))

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000) -> None:
        sigma_min = check_float(sigma_min, "sigma_min", positive=None)
        sigma_max = check_float(sigma_max, "sigma_max", positive=None)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VESDE needs 0 < sigma_min < sigma_max, got {sigma_min=}, {sigma_max=}")
        self.sigma_min, self.sigma_max, self.N = sigma_min, sigma_max, _check_N(N)
        self.prior_std = self.sigma_max
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def drift_coef(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def diffusion(self, t: Tensor) -> Tensor:
        return self.marginal_std(t) * math.sqrt(2 * self._log_ratio)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def marginal_std(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        s = self.marginal_std(t)
        return torch.ones_like(s), s

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        return (-lam - math.log(self.sigma_min)) / self._log_ratio


class _BetaLinear(SDE):
    r"""Shared parts of VP and sub-VP: :math:`\beta(t) = \beta_{min} + t(\beta_{max}-\beta_{min})`,
    drift :math:`-\tfrac12\beta(t)x`, :math:`\log\alpha(t) = -\tfrac14 t^2(\beta_{max}-\beta_{min})
    - \tfrac12 t\beta_{min}`."""

    default_eps = 1e-3

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000) -> None:
        beta_min = check_float(beta_min, "beta_min", positive=None)
        beta_max = check_float(beta_max, "beta_max", positive=None)
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"{type(self).__name__} needs 0 <= beta_min < beta_max, got {beta_min=}, {beta_max=}")
        self.beta_min, self.beta_max, self.N = beta_min, beta_max, _check_N(N)

    def beta(self, t: Tensor) -> Tensor:
        r""":math:`\beta(t)`."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def int_beta(self, t: Tensor) -> Tensor:
        r""":math:`B(t) = \int_0^t \beta(s)\,ds`, so that :math:`\alpha(t)^2 = e^{-B(t)}`."""
        return t * self.beta_min + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def drift_coef(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.int_beta(t))

    def _t_from_int_beta(self, B: Tensor) -> Tensor:
        # solve ½Δ t² + β_min t − B = 0 for t ≥ 0, in a cancellation-free form
        d = self.beta_max - self.beta_min
        return 2 * B / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * B))


class VPSDE(_BetaLinear):
    r"""Variance-preserving SDE (DDPM in continuous time).

    :math:`dx = -\tfrac12\beta(t)x\,dt + \sqrt{\beta(t)}\,dw`; perturbation kernel
    :math:`N(\alpha(t)x_0, (1-\alpha(t)^2)I)`; prior :math:`N(0, I)`; sampling ends at
    :math:`\epsilon = 10^{-3}`.
    """

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(t))

    def marginal_std(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-self.int_beta(t)))

    def sigma(self, t: Tensor) -> Tensor:
        # marginal_std / alpha from one evaluation of B(t)
        B = self.int_beta(t)
        return torch.sqrt(-torch.expm1(-B)) / torch.exp(-0.5 * B)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        B = self.int_beta(t)
        alpha = torch.exp(-0.5 * B)
        return alpha, torch.sqrt(-torch.expm1(-B)) / alpha

    def log_snr(self, t: Tensor) -> Tensor:
        # λ = −½ log(e^{B} − 1), accurate for small and large B
        B = self.int_beta(t)
        return -0.5 * (B + torch.log(-torch.expm1(-B)))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # e^{B} − 1 = e^{−2λ}  →  B = log1p(e^{−2λ})
        return self._t_from_int_beta(torch.nn.functional.softplus(-2 * lam))

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        # e^{B} − 1 = σ̃²  →  B = log1p(σ̃²)
        return self._t_from_int_beta(torch.log1p(sigma * sigma))


class SubVPSDE(_BetaLinear):
    r"""sub-VP SDE (Song et al. 2021, eq. 30).

    :math:`dx = -\tfrac12\beta(t)x\,dt + \sqrt{\beta(t)(1-e^{-2B(t)})}\,dw`; perturbation kernel
    :math:`N(\alpha(t)x_0, (1-\alpha(t)^2)^2 I)`, whose variance is bounded by the VP one;
    prior :math:`N(0, I)`.
    """

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self.int_beta(t)))

    def marginal_std(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self.int_beta(t))

    def sigma(self, t: Tensor) -> Tensor:
        # marginal_std / alpha from one evaluation of B(t)
        B = self.int_beta(t)
        return -torch.expm1(-B) / torch.exp(-0.5 * B)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        B = self.int_beta(t)
        alpha = torch.exp(-0.5 * B)
        return alpha, -torch.expm1(-B) / alpha

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # α/(1−α²) = e^{λ}  →  α² + e^{−λ}α − 1 = 0
        return self.t_from_sigma(torch.exp(-lam))

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        # (1−α²)/α = σ̃  →  α² + σ̃α − 1 = 0
        a = 2.0 / (sigma + torch.sqrt(sigma**2 + 4.0))
        return self._t_from_int_beta(-2.0 * torch.log(a))


_FLOW_EPS_TAU = 1e-2


class RectifiedFlow(SDE):
    r"""The linear interpolant of flow matching / rectified flow as a process (Lipman et al. 2022,
    arXiv:2210.02747; Liu et al. 2022, arXiv:2209.03003): :math:`x_\tau = (1-\tau)x_0 + \tau\varepsilon`,
    so :math:`\alpha = 1-\tau`, :math:`\sigma = \tau`, prior the noise :math:`\tau(T)\varepsilon`.

    **Shift** (SD3, Esser et al. 2024, arXiv:2403.03206): the process clock :math:`t` maps to the
    interpolant time :math:`\tau(t) = s t / (1 + (s-1) t)`, which is diffusers' shifted sigma
    (``FlowMatchEulerDiscreteScheduler(shift=s)``). The marginals are the same for every ``shift``;
    only where a grid uniform in ``t`` puts its steps changes (``s > 1``: more steps at high noise).
    A flow network is called with :math:`\tau`, never with :math:`t` (see
    :func:`scoresolve.from_velocity`), so a model can be sampled with any shift.
    :func:`resolution_shift` gives Flux's resolution-dependent ``shift``.

    **As a linear SDE.** With :math:`\tau' = s/(1+(s-1)t)^2`: drift coefficient
    :math:`h = d\log\alpha/dt = -\tau'/(1-\tau)` and diffusion :math:`g^2 = d\sigma^2/dt - 2h\sigma^2
    = 2\tau\tau'/(1-\tau)`; its probability-flow ODE is the flow model's ODE
    :math:`dx/d\tau = v = E[\varepsilon - x_0 \mid x_\tau]`. Any other diffusion :math:`\hat g` gives a
    reverse SDE with the same marginals (:meth:`reverse_drift_for`).

    **Time range.** :math:`\alpha(1) = 0`, and at :math:`\tau = 1` the score is :math:`-x` for every data
    set: a score model carries no information there and :math:`E[x_0 \mid x_t] = (x_t + \sigma^2
    \nabla\log p)/\alpha` is 0/0. So samplers start at ``T`` below 1: by default :math:`1 - 2^{-7}
    \approx 0.992` (exact in float32), where :math:`\alpha \approx 2^{-7}/s` and the EDM noise level
    :math:`\sigma/\alpha \approx 127 s`, the range of VP (:math:`\alpha(1) = 0.0067`, 152). The prior is
    the interpolant's noise there, :math:`N(0, \tau(T)^2 I)` (``prior_std`` :math:`= \tau(T) \approx 0.992`):
    :math:`p_T` has standard deviation :math:`\approx 1 - \alpha(T)` for unit-scale data, so ``N(0, I)``
    would be off to first order in :math:`\alpha(T)` where VP's prior is off to second. Sampling stops at
    ``default_eps``, the clock time of :math:`\tau = 10^{-2}`, where :math:`\sigma/\alpha \approx 0.01` as
    for VP and VE at theirs. (Measured effects of these choices: docs/flow.md.)

    Args:
        shift: the time shift :math:`s > 0` (1: none; SD3 uses 3).
        T: the clock time where sampling starts, in (0.5, 1).
    """

    #: a power grid in t leaves one long step to T, where alpha -> 0 (measured in docs/likelihood.md)
    likelihood_local_grid = ("uniform", ())

    def __init__(self, shift: float = 1.0, T: float = 1 - 2**-7) -> None:
        if not (math.isfinite(shift) and shift > 0):
            raise ValueError(f"RectifiedFlow needs shift > 0, got {shift=}")
        if not 0.5 < T < 1:
            raise ValueError(f"RectifiedFlow needs 0.5 < T < 1 (alpha(1) = 0 is singular), got {T=}")
        self.shift, self.T = float(shift), float(T)
        self.default_eps = _FLOW_EPS_TAU / (self.shift - (self.shift - 1) * _FLOW_EPS_TAU)  # τ(default_eps) = 0.01
        self.prior_std = float(self.interpolant_time(torch.tensor(self.T, dtype=torch.float64)))  # τ(T)

    def _config(self) -> dict[str, float | int]:
        return {"shift": self.shift, "T": self.T}

    def interpolant_time(self, t: Tensor) -> Tensor:
        r"""The interpolant time :math:`\tau(t) = s t / (1 + (s-1) t)` (diffusers' shifted sigma)."""
        return self.shift * t / (1 + (self.shift - 1) * t)

    def _dtau(self, t: Tensor) -> Tensor:
        return self.shift / (1 + (self.shift - 1) * t) ** 2

    def alpha(self, t: Tensor) -> Tensor:
        return (1 - t) / (1 + (self.shift - 1) * t)

    def marginal_std(self, t: Tensor) -> Tensor:
        return self.interpolant_time(t)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        alpha = self.alpha(t)
        return alpha, self.interpolant_time(t) / alpha

    def drift_coef(self, t: Tensor) -> Tensor:
        return -self.shift / ((1 + (self.shift - 1) * t) * (1 - t))

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(2 * self.interpolant_time(t) * self._dtau(t) / self.alpha(t))

    def log_snr(self, t: Tensor) -> Tensor:
        # α/σ = (1 − t)/(s t)
        return torch.log1p(-t) - torch.log(t) - math.log(self.shift)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # (1 − t)/t = s e^λ  →  t = sigmoid(−λ − log s)
        return torch.sigmoid(-lam - math.log(self.shift))

    def sigma(self, t: Tensor) -> Tensor:
        return self.interpolant_time(t) / self.alpha(t)

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        # λ = −log σ̃
        return torch.sigmoid(torch.log(sigma) - math.log(self.shift))

    def reverse_drift_for(self, x: Tensor, t: Tensor, score: Tensor, diffusion: Tensor | float) -> Tensor:
        r"""Drift of the reverse-time SDE with a chosen diffusion :math:`\hat g(t)` whose marginals are the
        process's: :math:`f - \tfrac12 g^2\nabla\log p_t - \tfrac12\hat g^2\nabla\log p_t` (the
        probability-flow drift minus :math:`\tfrac12\hat g^2` times the score; :math:`\hat g = 0` is the
        ODE, :math:`\hat g = g` the time reversal of the linear SDE). Written for time running forward;
        integrate with a negative ``dt`` and noise :math:`\hat g\,dw`."""
        gh = torch.as_tensor(diffusion, dtype=x.dtype, device=x.device)
        return self.pf_drift(x, t, score) - 0.5 * self.bcast(gh**2, x) * score


def resolution_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    r"""Flux's resolution-dependent shift :math:`s = e^{\mu}`, :math:`\mu` linear in the number of latent
    tokens from ``base_shift`` at ``base_seq_len`` to ``max_shift`` at ``max_seq_len`` (diffusers'
    ``calculate_shift``; with ``use_dynamic_shifting`` diffusers maps sigmas by
    :math:`e^\mu/(e^\mu + 1/\sigma - 1)`, which is the ``shift`` map with :math:`s = e^\mu`). Use as
    ``RectifiedFlow(shift=resolution_shift(seq_len))``."""
    if image_seq_len <= 0 or max_seq_len == base_seq_len:
        raise ValueError(f"resolution_shift needs image_seq_len > 0 and max_seq_len != base_seq_len, got "
                         f"{image_seq_len=}, {base_seq_len=}, {max_seq_len=}")
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return math.exp(base_shift + m * (image_seq_len - base_seq_len))
