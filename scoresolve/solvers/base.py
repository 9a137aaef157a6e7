"""The pieces every solver shares: the counted score, the time grid's validation, the solve context and the
:class:`Solver` base classes (the noise source is :mod:`scoresolve.noise`).

Layers: the SDE says *what* is integrated, a solver takes *one step*, a grid or a
controller says *where* the steps go, the noise source supplies randomness, and
:func:`scoresolve.sample` runs the loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..noise import NoiseSource
from ..sde import SDE

__all__ = [
    "CountedScore",
    "check_grid",
    "NonFiniteScoreError",
    "SolveContext",
    "Interval",
    "Step",
    "Solver",
    "GridSolver",
    "EDMSolver",
]


class NonFiniteScoreError(FloatingPointError):
    """NaN or inf appeared during sampling; the message names the step, the time and the culprit.

    ``culprit`` is ``"model"`` when the score model returned NaN/inf for a finite input, and
    ``"solver"`` when the solver's own arithmetic produced a non-finite state (or handed one to the
    model) while every score it had received was finite.
    """

    def __init__(self, message: str, culprit: str = "model") -> None:
        super().__init__(message)
        self.culprit = culprit


class CountedScore:
    """Wraps ``score(x, t)``: counts evaluations (NFE), checks the output's type and shape on every
    call (a tuple comparison), and watches for NaN/inf in the output, in the input it was handed and
    (through :meth:`watch_state`) in the solver's state after each step.

    ``t`` may be given as a Python float, a 0-d tensor or a ``(B,)`` tensor; the model always receives
    a ``(B,)`` tensor in ``x``'s dtype. Finiteness is recorded on the device and checked every
    ``check_every`` calls (each check is one host–device sync; on the CPU it costs nothing, so the
    default there is every call).
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], check_every: int | None = None) -> None:
        self.fn = fn
        self.nfe = 0
        self.step: int | None = None
        self.check_every = check_every
        self._pending: list[tuple[int | None, Tensor, Tensor, str]] = []

    def __call__(self, x: Tensor, t: Tensor | float) -> Tensor:
        b = x.shape[0]
        if not isinstance(t, Tensor):
            t = torch.tensor(float(t), device=x.device)
        t = t.to(device=x.device, dtype=x.dtype)
        if t.ndim == 0:
            t = t.expand(b)
        elif t.shape != (b,):
            raise ValueError(f"t must be a scalar or have shape ({b},), got {tuple(t.shape)}")
        self._watch(x, t, "input")
        out = self.fn(x, t)
        if not isinstance(out, Tensor):
            raise TypeError(f"the score model must return a tensor, got {type(out).__name__}")
        if out.shape != x.shape:
            raise ValueError(
                f"the score model returned shape {tuple(out.shape)} for an input of shape "
                f"{tuple(x.shape)} (evaluation {self.nfe + 1}); a score must have the input's shape"
            )
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        self.nfe += 1
        self._watch(out, t, "model")
        return out

    def watch_state(self, x: Tensor, t: Tensor) -> None:
        """Record whether the solver's state ``x`` after a step is finite (checked like the outputs)."""
        self._watch(x, t, "state")

    def _watch(self, out: Tensor, t: Tensor, kind: str) -> None:
        # a row times 0 sums to NaN exactly when it holds a NaN or an inf: one multiply and one sum, 5-10x
        # cheaper than isfinite().all() on the CPU, where this runs three times per evaluation
        bad_rows = torch.isnan((out.reshape(out.shape[0], -1) * 0).sum(1))
        every = self.check_every if self.check_every is not None else (1 if out.device.type == "cpu" else 32)
        if every <= 1:
            if bool(bad_rows.any()):
                self._raise(self.step, t, bad_rows, kind)
            return
        # deferred: keep the flags on the device and look at them every `every` calls (one sync)
        self._pending.append((self.step, t, bad_rows, kind))
        if len(self._pending) >= every:
            self.check()

    def check(self) -> None:
        """Raise :class:`NonFiniteScoreError` if a call not yet checked returned NaN/inf."""
        if not self._pending:
            return
        flags = torch.stack([rows.any() for _, _, rows, _ in self._pending])
        if bool(flags.any()):
            step, t, rows, kind = self._pending[int(flags.int().argmax())]  # the first one flagged
            self._raise(step, t, rows, kind)
        self._pending.clear()

    @staticmethod
    def _raise(step: int | None, t: Tensor, bad_rows: Tensor, kind: str = "model") -> None:
        where = f"step {step}" if step is not None else "a score evaluation"
        tval = f" (t={float(t.reshape(-1)[0]):.6g})"
        n_bad, n = int(bad_rows.sum()), bad_rows.numel()
        if kind == "model":
            raise NonFiniteScoreError(
                f"the score model returned NaN or inf at {where}{tval} for {n_bad} of {n} samples whose input was "
                "finite", culprit="model")
        what = "handed the model a non-finite state" if kind == "input" else "produced a non-finite state"
        raise NonFiniteScoreError(
            f"the solver's arithmetic {what} at {where}{tval} for {n_bad} of {n} samples, while every score output "
            "before it was finite (the model is not the cause; try more steps, float64, or another solver)",
            culprit="solver")


def check_grid(grid: Any, sde: SDE, *, name: str = "grid") -> Tensor:
    """Validate a time grid (a caller's, or what a registered grid function built): 1-D, finite, at least two
    points, strictly decreasing, within ``(0, T]``. Returns it as a float64 CPU tensor."""
    g = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
    if g.ndim != 1 or g.numel() < 2:
        raise ValueError(f"{name} must be a 1-D sequence of at least 2 times, got shape {tuple(g.shape)}")
    if not torch.isfinite(g).all():
        raise ValueError(f"{name} contains NaN or inf")
    if not (g[1:] < g[:-1]).all():
        raise ValueError(f"{name} must be strictly decreasing (from T towards 0), got {g.tolist()[:8]}...")
    if g[-1] <= 0 or g[0] > sde.T:
        raise ValueError(f"{name} must lie in (0, T={sde.T}], got [{float(g[-1])}, {float(g[0])}]")
    return g


@dataclass(frozen=True)
class Interval:
    r"""Grid interval ``i`` of ``n``, from ``t`` to ``t_next``, in every variable the solvers use (Python floats,
    float64): :math:`\alpha_t`, the EDM noise level :math:`\tilde\sigma = \sigma_t/\alpha_t` and the log-SNR
    :math:`\lambda = -\log\tilde\sigma`. Built by the loop; immutable."""

    i: int
    n: int
    t: float
    t_next: float
    alpha: float
    alpha_next: float
    sigma: float
    sigma_next: float
    lam: float
    lam_next: float

    @property
    def last(self) -> bool:
        """Whether this is the grid's last interval."""
        return self.i == self.n - 1


@dataclass
class Step:
    r"""What :meth:`GridSolver.step` returns: the next state, its noise-free part (``None``: the state itself),
    the solver state for the next step, and the PF-ODE direction :math:`(y - D)/\tilde\sigma` at the
    interval's start if the step evaluated it there (the loop keeps it for ``final="zero"``)."""

    x: Tensor
    x_mean: Tensor | None = None
    state: Any = None
    direction: Tensor | None = None


@dataclass
class SolveContext:
    """Everything a solver needs for one run.

    Attributes:
        score: the counted score function (call it, never the raw model).
        sde: the forward SDE.
        grid: decreasing float64 times from ``T`` to the final time, or ``None`` for adaptive solvers.
        noise: the noise source (``None`` for deterministic solvers is allowed).
        t_end: the final time (``eps``).
        callback: called as ``callback(step=i, t=t, x=x, x_mean=x_mean)`` after each step.
        trajectory: if a list, states are appended to it after each step.
        progress: a progress bar with ``update()``/``close()`` or ``None``.
        final: how the run ends after the grid (``"none"``, ``"tweedie"``, ``"zero"``; read-only for solvers).
        xdtype, wdtype: the samples' dtype and the working dtype of the EDM-variable solvers (float64 for
            float64 samples, else float32).
        intervals: the grid's intervals (set by the loop; a singlestep solver reads the points ahead).
        info: what adaptive and external solvers report (accepted times, per-sample NFE, ...).
    """

    score: CountedScore
    sde: SDE
    grid: Tensor | None
    noise: NoiseSource
    t_end: float
    callback: Callable[..., Any] | None = None
    trajectory: list[Tensor] | None = None
    progress: Any = None
    final: str = "none"
    xdtype: torch.dtype = torch.float32
    wdtype: torch.dtype = torch.float32
    intervals: list[Interval] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def t(self, i: int, x: Tensor) -> Tensor:
        """Grid time ``i`` as a ``(B,)`` tensor in ``x``'s dtype and device."""
        assert self.grid is not None
        return self.grid[i].to(device=x.device, dtype=x.dtype).expand(x.shape[0])

    def denoise(self, y: Tensor, t: float, sigma: float, alpha: float) -> Tensor:
        r"""Counted evaluation in the EDM variables: :math:`D(y, \tilde\sigma) = y + \tilde\sigma^2\alpha\,
        s_\theta(\alpha y, t)`, in the working dtype."""
        x = (y * alpha).to(self.xdtype)
        tt = torch.full((y.shape[0],), t, device=y.device, dtype=self.xdtype)
        score = self.score(x, tt).to(self.wdtype)
        return y + (sigma * sigma * alpha) * score

    def after_step(self, i: int, t: Tensor, x: Tensor, x_mean: Tensor | None = None) -> None:
        """Bookkeeping after step ``i``: finiteness of the state, trajectory, callback, progress."""
        self.score.watch_state(x, t)
        if self.trajectory is not None:
            self.trajectory.append(x.detach().clone())
        if self.callback is not None:
            self.callback(step=i, t=t, x=x, x_mean=x if x_mean is None else x_mean)
        if self.progress is not None:
            self.progress.update(1)


class Solver:
    """A sampling method: declarations, and either :meth:`GridSolver.step` (the loop in
    :mod:`scoresolve.solvers.loop` runs it over the grid) or a whole-run :meth:`solve` (adaptive solvers and
    the external-integrator wrappers).

    Class attributes (declarations, checked by the tests):
        order: convergence order (strong order for stochastic solvers).
        nfe_per_step: score evaluations per grid interval (fixed-grid solvers).
        stochastic: whether it injects noise.
        adaptive: whether it chooses its own steps.
        reference: the paper (with arXiv id) it comes from.
        default_grid: name of the registered grid used when the user gives none.
        default_steps: grid intervals when neither ``steps=`` nor ``nfe=`` is given (``None``: the SDE's ``N``).
        default_final: how :func:`scoresolve.sample` ends the run by default (``"tweedie"``: one more
            evaluation, the posterior mean at ``eps``; ``"none"``; ``"zero"``).

    :meth:`variants` lists the option sets that change the declared order (each is tested).
    """

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    adaptive: ClassVar[bool] = False
    reference: ClassVar[str] = ""
    default_grid: ClassVar[str] = "uniform"
    default_steps: ClassVar[int | None] = None
    default_final: ClassVar[str] = "tweedie"

    @classmethod
    def variants(cls) -> tuple[dict[str, Any], ...]:
        """The option sets that change what the solver declares (its order): the tests check each one. The
        default options alone by default."""
        return ({},)

    def solve(self, ctx: SolveContext, x: Tensor) -> Tensor:
        """Integrate from ``x`` at ``T`` to the final time and return the state there (whole-run solvers)."""
        raise NotImplementedError(f"{type(self).__name__} takes steps on a grid: run it with scoresolve.sample")


class GridSolver(Solver, ABC):
    r"""A solver on a fixed time grid: declarations plus :meth:`step`; the loop is shared.

    ``step`` receives the solver state returned by the previous step (``None`` at first) and returns a
    :class:`Step`. Multistep history lives in the state, never on the object, so one solver object can
    serve concurrent runs.

    Declarations of the fixed-grid solvers, besides :class:`Solver`'s:
        variables: ``"x"`` (the state is the sample) or ``"edm"`` (the state is :math:`y = x/\alpha_t` in
            the working dtype; the loop converts at the start and the end).
        nfe_last: evaluations of the last interval when the run ends there (``final="none"``), if fewer
            than ``nfe_per_step`` (EDM's Heun takes an Euler step there); ``None``: ``nfe_per_step``.
        budgeted: ``steps=`` used to mean evaluations for this solver (now ``nfe=``); ``steps=`` alone
            warns.
        prefix_direction: the solver seeds its history with the Gaussian direction at ``T`` after the
            analytical first interval (:meth:`seed`).
    """

    variables: ClassVar[str] = "x"
    nfe_last: ClassVar[int | None] = None
    budgeted: ClassVar[bool] = False
    prefix_direction: ClassVar[bool] = False

    @abstractmethod
    def step(self, ctx: SolveContext, x: Tensor, iv: Interval, state: Any) -> Step:
        """Advance from ``iv.t`` to ``iv.t_next``."""

    def seed(self, direction: Tensor, iv: Interval) -> Any:
        """Solver state after the analytical first interval, given the Gaussian direction at ``T``
        (only called when ``prefix_direction``)."""
        return None

    def correct(self, ctx: SolveContext, y: Tensor, D: Tensor, state: Any) -> Tensor:
        """A predictor–corrector solver's correction of the last state with the final evaluation ``D`` at
        ``eps`` (``final="tweedie"|"zero"``); the state itself by default."""
        return y


class EDMSolver(GridSolver):
    r"""Base of the budgeted few-step ODE solvers, which integrate the probability-flow ODE in the EDM
    variables :math:`y = x/\alpha_t`, :math:`\tilde\sigma = \sigma_t/\alpha_t = e^{-\lambda}`:

    .. math:: \frac{dy}{d\tilde\sigma} = \frac{y - D(y,\tilde\sigma)}{\tilde\sigma},\qquad
              \frac{dy}{d\lambda} = D - y,\qquad D = y + \tilde\sigma^2\alpha_t\,s_\theta(x, t)

    (Karras et al. 2022, arXiv:2206.00364). Only the SDE's ``alpha`` and ``sigma`` are used, so every SDE
    shares the code. Deterministic; the run's budget is ``nfe=``.
    """

    variables: ClassVar[str] = "edm"
    budgeted: ClassVar[bool] = True
    default_grid: ClassVar[str] = "log_snr"
    default_final: ClassVar[str] = "none"

    def config(self) -> dict[str, Any]:
        """JSON-friendly description of the solver (name + options), used in calibration fingerprints."""
        return {"class": type(self).__name__, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}
