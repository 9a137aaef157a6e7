"""The pieces every solver shares: the noise source, the counted score, the solve context and the
:class:`Solver` base classes.

Layers (see DESIGN.md): the SDE says *what* is integrated, a solver takes *one step*, a grid or a
controller says *where* the steps go, the noise source supplies randomness, and
:func:`scoresolve.sample` runs the loop.
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..sde import SDE

__all__ = [
    "NoiseSource",
    "CountedScore",
    "NonFiniteScoreError",
    "SolveContext",
    "Solver",
    "GridSolver",
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


class NoiseSource:
    """Standard normal noise, reproducible from one generator or from one seed per sample.

    With ``seeds`` (one integer per sample) every row draws from its own generator, so a sample's
    value depends only on its seed: not on the batch size, its neighbours, or how many processes
    share the work. With a single ``generator`` (or none: the global RNG) the whole batch draws
    from one stream.
    """

    def __init__(
        self,
        generator: torch.Generator | None = None,
        seeds: Sequence[int] | Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if generator is not None and seeds is not None:
            raise ValueError("pass either generator= or seeds=, not both")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        self.generators: list[torch.Generator] | None = None
        if seeds is not None:
            seed_list = _check_seeds(seeds)
            dev = torch.device(device) if device is not None else torch.device("cpu")
            self.generators = [torch.Generator(device=dev).manual_seed(s) for s in seed_list]

    @property
    def batch_size(self) -> int | None:
        """Number of per-sample seeds, or ``None`` for a shared generator."""
        return None if self.generators is None else len(self.generators)

    def randn(self, shape: Sequence[int], *, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Draw ``N(0, I)`` noise of ``shape`` (first dimension = batch)."""
        shape = tuple(shape)
        if self.generators is None:
            gen = self.generator
            if gen is not None and gen.device.type != torch.device(device).type:
                # a CPU generator for an accelerator: draw on the CPU, move once
                return torch.randn(shape, generator=gen, dtype=dtype).to(device)
            return torch.randn(shape, generator=gen, device=device, dtype=dtype)
        if shape[0] != len(self.generators):
            raise ValueError(f"seeds has {len(self.generators)} entries but the batch has {shape[0]} samples")
        rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in self.generators]
        return torch.stack(rows).to(device)

    def randn_like(self, x: Tensor) -> Tensor:
        return self.randn(x.shape, device=x.device, dtype=x.dtype)


def _check_seeds(seeds: Any) -> list[int]:
    """``seeds`` as a list of Python ints, refusing fractions, bools and out-of-range values (never truncating)."""
    if isinstance(seeds, Tensor):
        if seeds.is_floating_point() or seeds.is_complex() or seeds.dtype == torch.bool or seeds.ndim != 1:
            raise TypeError(f"seeds must be a 1-D integer tensor, got dtype {seeds.dtype}, shape {tuple(seeds.shape)}")
        seeds = seeds.tolist()
    if isinstance(seeds, (str, bytes, dict)) or not hasattr(seeds, "__iter__"):
        raise TypeError(f"seeds must be a sequence of integers (one per sample), got {type(seeds).__name__}")
    out = []
    for s in seeds:
        if isinstance(s, (bool, float)) or not hasattr(s, "__index__"):
            raise TypeError(f"seeds must be integers, got {s!r} ({type(s).__name__})")
        v = operator.index(s)
        if not -(2**63) <= v < 2**64:
            raise ValueError(f"seeds must lie in [-2**63, 2**64), got {v}")
        out.append(v)
    if not out:
        raise ValueError("seeds is empty; give one integer per sample")
    return out


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
        bad_rows = ~torch.isfinite(out.reshape(out.shape[0], -1)).all(dim=1)
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
    """

    score: CountedScore
    sde: SDE
    grid: Tensor | None
    noise: NoiseSource
    t_end: float
    callback: Callable[..., Any] | None = None
    trajectory: list[Tensor] | None = None
    progress: Any = None
    info: dict[str, Any] = field(default_factory=dict)

    def t(self, i: int, x: Tensor) -> Tensor:
        """Grid time ``i`` as a ``(B,)`` tensor in ``x``'s dtype and device."""
        assert self.grid is not None
        return self.grid[i].to(device=x.device, dtype=x.dtype).expand(x.shape[0])

    def after_step(self, i: int, t: Tensor, x: Tensor, x_mean: Tensor | None = None) -> None:
        """Bookkeeping after step ``i``: finiteness of the state, trajectory, callback, progress."""
        self.score.watch_state(x, t)
        if self.trajectory is not None:
            self.trajectory.append(x.detach().clone())
        if self.callback is not None:
            self.callback(step=i, t=t, x=x, x_mean=x if x_mean is None else x_mean)
        if self.progress is not None:
            self.progress.update(1)


class Solver(ABC):
    """A sampling method. Subclasses declare what they are and implement :meth:`solve`.

    Class attributes (declarations, checked by the tests):
        order: convergence order (strong order for stochastic solvers).
        nfe_per_step: score evaluations per grid step (fixed-grid solvers).
        stochastic: whether it injects noise.
        adaptive: whether it chooses its own steps.
        reference: the paper (with arXiv id) it comes from.
        default_grid: name of the registered grid used when the user gives none.
        denoise_default: whether :func:`scoresolve.sample` ends with a Tweedie step by default.
    """

    order: ClassVar[float] = 1.0
    nfe_per_step: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    adaptive: ClassVar[bool] = False
    reference: ClassVar[str] = ""
    default_grid: ClassVar[str] = "uniform"
    denoise_default: ClassVar[bool] = True

    def steps_to_grid(self, steps: int) -> int:
        """Number of grid intervals for a user's ``steps`` (identity by default)."""
        return steps

    def grid_for(self, steps: int) -> str:
        """Registered grid for a user's ``steps`` when none is given (``default_grid`` by default; a
        solver whose best grid depends on the budget overrides this)."""
        return self.default_grid

    def nfe_for(self, n_intervals: int) -> int:
        """Score evaluations spent on ``n_intervals`` grid steps (before the final denoising)."""
        return n_intervals * self.nfe_per_step

    def for_model(self, model: Any) -> Solver:
        """The solver to run for ``model`` (a :class:`~scoresolve.ScoreModel` or a plain callable), called
        by :func:`scoresolve.sample` before the grid is made: ``self`` by default. A solver that uses the
        model's metadata (e.g. the budgeted solvers and ``ScoreModel.data_moments``) returns a configured
        copy and never modifies ``self``."""
        return self

    @abstractmethod
    def solve(self, ctx: SolveContext, x: Tensor) -> Tensor:
        """Integrate from ``x`` at ``T`` to the final time and return the state there."""


class GridSolver(Solver):
    """A solver on a fixed time grid: implements :meth:`step`; the loop is shared.

    ``step`` receives the solver state returned by the previous step (``None`` at first) and
    returns ``(x_next, x_mean, state)``; ``x_mean`` is the noise-free part of a stochastic update
    (equal to ``x_next`` for deterministic ones). Multistep history lives in ``state``, never on the
    object, so one solver object can serve concurrent runs.
    """

    @abstractmethod
    def step(self, ctx: SolveContext, x: Tensor, i: int, state: Any) -> tuple[Tensor, Tensor, Any]:
        """Advance from ``ctx.grid[i]`` to ``ctx.grid[i + 1]``."""

    def solve(self, ctx: SolveContext, x: Tensor) -> Tensor:
        assert ctx.grid is not None
        state: Any = None
        n = ctx.grid.numel() - 1
        x_mean = x
        for i in range(n):
            ctx.score.step = i
            x, x_mean, state = self.step(ctx, x, i, state)
            ctx.after_step(i, ctx.t(i + 1, x), x, x_mean)
        ctx.info["x_mean"] = x_mean
        return x


def check_positive_int(value: Any, name: str) -> int:
    """Validate a positive integer argument, naming it in the error."""
    if isinstance(value, bool) or not isinstance(value, (int,)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_float(value: Any, name: str, positive: bool) -> float:
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number {bound}, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number {bound}, got {value!r}") from None
    if not math.isfinite(v) or (v <= 0 if positive else v < 0):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def check_positive_float(value: Any, name: str) -> float:
    """Validate a finite float argument > 0, naming it in the error (TypeError for a non-number)."""
    return _check_float(value, name, positive=True)


def check_nonneg_float(value: Any, name: str) -> float:
    """Validate a finite float argument >= 0, naming it in the error (TypeError for a non-number)."""
    return _check_float(value, name, positive=False)
