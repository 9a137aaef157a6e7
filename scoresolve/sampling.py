r"""``scoresolve.sample``: the one entry point for drawing samples from a score model."""

from __future__ import annotations

import inspect
import math
import operator
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ._util import check_int
from .aliases import resolve as resolve_alias
from .calibrate import grid_calibration
from .gaussian import GaussianFit
from .models import ScoreModel, cpu_facing, model_device, resolve_gaussian_prior, resolve_model
from .noise import NoiseSource, check_seeds
from .progress import Progress
from .recipes import auto
from .registry import SOLVERS
from .sde import SDE
from .solvers.base import CountedScore, GridSolver, SolveContext, Solver, check_grid
from .solvers.finish import FINALS, check_final, finish
from .solvers.grids import make_grid
from .solvers.loop import integrate, plan

__all__ = ["sample", "SampleResult", "resolve_solver"]

DEFAULT_BATCH_SIZE = 64


@dataclass
class SampleResult:
    """What :func:`sample` returns with ``return_result=True``.

    Attributes:
        samples: the final samples, shape ``(B, *dims)``.
        nfe: score evaluations actually made (batched calls count once), the final step included.
        grid: the time grid used (float64, decreasing), or the accepted times of an adaptive solver.
        trajectory: the state after every step, stacked ``(steps + 1, B, *dims)`` starting from
            ``x_T``, if requested.
        seconds: wall time of the run.
        info: solver-specific extras (e.g. per-sample NFE of adaptive solvers).
    """

    samples: Tensor
    nfe: int
    grid: Tensor | None
    trajectory: Tensor | None = None
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def resolve_solver(solver: str | Solver | type[Solver], options: dict[str, Any]) -> Solver:
    """Turn a registered name, a :class:`Solver` class or instance into a configured instance."""
    return _solver_and_grid(solver, options)[0]


def _solver_and_grid(solver: str | Solver | type[Solver], options: dict[str, Any]) -> tuple[Solver, Any]:
    """:func:`resolve_solver` and the grid a familiar alias brings (``None`` for none)."""
    if isinstance(solver, Solver):
        if options:
            raise TypeError(
                f"solver options {sorted(options)} were given with a solver instance; configure the instance instead"
            )
        return solver, None
    grid = None
    if isinstance(solver, str):  # a registered name or a familiar alias ("euler_a", "DPM++ 2M Karras")
        solver, options, grid = resolve_alias(solver, options)
    cls = SOLVERS.get(solver, argument="solver") if isinstance(solver, str) else solver
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise TypeError(f"solver must be a registered name or a scoresolve Solver, got {solver!r}")
    if options:  # checked against the constructor's parameters
        params = inspect.signature(cls.__init__).parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        unknown = [k for k in options if k not in params or k == "self"]
        if unknown and not accepts_any:
            name = solver if isinstance(solver, str) else cls.__name__
            allowed = [k for k in params if k != "self"]
            raise TypeError(
                f"unknown option(s) {unknown} for solver {name!r}; it accepts: {', '.join(allowed) or 'no options'}"
            )
    return cls(**options), grid


def _resolve_shape(
    model: Any, shape: Sequence[int] | None, batch_size: int | None, seeds: Any, x_T: Tensor | None
) -> tuple[int, ...]:
    model_shape = model.sample_shape if isinstance(model, ScoreModel) else None
    n_seeds = None if seeds is None else len(check_seeds(seeds))
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size")
    if x_T is not None:
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise ValueError(f"shape={tuple(shape)} disagrees with x_T.shape={tuple(x_T.shape)}")
        out = tuple(x_T.shape)
    elif shape is not None:
        if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
            raise TypeError(f"shape must be a sequence of integers (batch, *dims), got {shape!r}")
        entries = []
        for s in shape:  # integers (numpy's too); anything else gets check_int's error
            entries.append(operator.index(s) if hasattr(s, "__index__") and not isinstance(s, bool)
                           else check_int(s, "shape"))
        out = tuple(entries)
        if len(out) < 2:
            raise ValueError(f"shape must be (batch, *dims) with at least 2 entries, got {out}")
    elif model_shape is not None:
        b = batch_size or n_seeds or DEFAULT_BATCH_SIZE
        out = (b, *model_shape)
    else:
        raise ValueError("shape= is required when the model does not carry a sample_shape (wrap it in ss.ScoreModel)")
    if model_shape is not None and out[1:] != model_shape:
        raise ValueError(
            f"shape {out} does not match the model's sample_shape {model_shape} (expected (B, *{model_shape}))"
        )
    if batch_size is not None and batch_size != out[0]:
        raise ValueError(f"batch_size={batch_size} disagrees with the batch dimension of shape {out}")
    if n_seeds is not None and n_seeds != out[0]:
        raise ValueError(f"seeds has {n_seeds} entries but the batch has {out[0]} samples")
    if min(out) < 1:
        raise ValueError(f"shape entries must be positive, got {out}")
    return out


def sample(
    model: Callable[[Tensor, Tensor], Tensor] | ScoreModel,
    sde: SDE | None = None,
    solver: str | Solver = "pc",
    steps: int | None = None,
    *,
    nfe: int | None = None,
    final: str | None = None,
    shape: Sequence[int] | None = None,
    batch_size: int | None = None,
    x_T: Tensor | None = None,
    eps: float | None = None,
    grid: str | Sequence[float] | Tensor | None = None,
    gaussian_prior: tuple[Tensor | float, Tensor | float] | GaussianFit | str | None = "default",
    calibrate: bool | str | os.PathLike[str] | None = None,
    calibration_budget: float | dict[str, float] | None = None,
    denoise: bool | None = None,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool | None = None,
    callback: Callable[..., Any] | None = None,
    return_trajectory: bool = False,
    return_result: bool = False,
    check_every: int | None = None,
    **solver_options: Any,
) -> Tensor | SampleResult:
    r"""Draw samples by integrating the reverse-time SDE or the probability-flow ODE of ``sde``
    driven by the score ``model`` (Song et al. 2021, arXiv:2011.13456).

    Args:
        model: any callable ``score(x, t)`` (``x``: ``(B, *dims)``, ``t``: ``(B,)``) or a
            :class:`~scoresolve.ScoreModel`, which also supplies ``sde`` and the sample shape.
        sde: the forward SDE (:class:`~scoresolve.VESDE`, :class:`~scoresolve.VPSDE`,
            :class:`~scoresolve.SubVPSDE` or your own subclass); defaults to the model's.
        solver: a registered solver name or a familiar alias such as ``"euler_a"``, ``"ddim"``,
            ``"DPM++ 2M Karras"`` (see :func:`scoresolve.solvers`), or a ``Solver``.
        steps: grid intervals, for every fixed-grid solver (``pc``: predictor steps, the paper's N; default
            the solver's ``default_steps`` or ``sde.N``).
        nfe: instead of ``steps``, the evaluation budget, final step included: the grid is planned from the
            solver's declarations (:func:`scoresolve.solvers.loop.plan`) and the run spends at most ``nfe``
            evaluations (exactly, except ``heun_edm`` at even budgets with ``final="none"``: one fewer).
        final: how the run ends after the grid: ``"none"`` (the state at ``eps``), ``"tweedie"`` (one more
            evaluation, the posterior mean :math:`\hat x_0 = (x + \sigma_\epsilon^2 s(x,\epsilon))/\alpha_\epsilon`)
            or ``"zero"`` (one more evaluation, an Adams step onto :math:`\sigma = 0` through the last
            directions; :mod:`~scoresolve.solvers.finish`). Default: the solver's ``default_final``
            (``"tweedie"`` for ``pc`` and the ODE solvers, as in the paper; ``"none"`` for the few-step ones).
        shape: ``(B, *dims)``; inferred from ``x_T`` or the model's ``sample_shape`` + ``batch_size``.
        batch_size: number of samples when the shape comes from the model (default 64, or
            ``len(seeds)``).
        x_T: start from this prior sample instead of drawing one.
        eps: the final (smallest) time; default ``sde.default_eps`` (1e-5 VE, 1e-3 VP/sub-VP).
        grid: a registered grid name or an explicit decreasing sequence of times (which then sets
            the number of steps and the final time).
        gaussian_prior: the first grid interval is the exact PF-ODE flow of a Gaussian fit of the data (no
            evaluation; few-step solvers in the EDM variables): ``(mean, cov)`` (``cov``: ``(D, D)``, ``(D,)``
            or a scalar), a :class:`~scoresolve.gaussian.GaussianFit`, or ``"estimate"`` (the model's
            ``ScoreModel.data_moments``, else estimated by the calibration) or ``None`` (off). ``"default"``:
            ``"estimate"`` for ``solver="auto"``, ``None`` otherwise.
        calibrate: replace the grid by one calibrated for this model, solver and budget
            (:func:`scoresolve.calibrate.calibrate_grid`; needs ``nfe``; cost in ``info["calibration"]``):
            ``True`` (kept in ``scoresolve.calibrate.DEFAULT_CACHE``), a cache file path, a
            :class:`~scoresolve.calibrate.CalibrationCache`, or a dict of ``calibrate_grid`` options (``cache=``
            among them).
            ``solver="auto"``: on by default up to 25 evaluations; for a network (a model whose function calls a
            ``torch.nn.Module`` anywhere, closures and wrappers included: :func:`scoresolve.digest.holds_network`), or
            with ``calibration_budget``, or ``calibrate={"method": "trajectory"}``, the grid comes from one
            teacher run and a dynamic programme (:mod:`scoresolve.calibrate_dp`), chosen on held-out draws among
            iPNDM / UniPC / DPM-Solver++(2M) on fitted and fixed grids, and cached to a file keyed
            by the model's weights (``$SCORESOLVE_CALIBRATION_CACHE``).
        calibration_budget: bound of that calibration: seconds, or ``{"seconds": s, "evaluations": k}``
            (default 60 s); when it cannot pay for itself ``auto`` runs its uncalibrated recipe and says so
            in ``info["calibration"]["fallback"]``.
        denoise: deprecated: ``final="tweedie"`` (``True``) or ``final="none"`` (``False``).
        generator: one ``torch.Generator`` for all the randomness of the run.
        seeds: one integer seed per sample instead: each sample then depends only on its seed.
        device, dtype: where and in which precision the state lives (default: ``x_T``'s, else
            the model's device, ``float32``).
        progress: a tqdm bar over the steps (``None``: shown unless ``SCORESOLVE_PROGRESS=0``; :mod:`.progress`).
        callback: called after every step as ``callback(step=i, t=t, x=x, x_mean=x_mean)``.
        return_trajectory: keep every intermediate state (implies a :class:`SampleResult`).
        return_result: return a :class:`SampleResult` (samples, NFE, grid, ...) instead of a tensor.
        check_every: check the score for NaN/inf every this many calls (default: every call on
            the CPU, every 32 on accelerators, to avoid host–device syncs).
        **solver_options: passed to the solver, e.g. ``predictor=``, ``corrector=``, ``snr=``,
            ``n_corrector_steps=`` for ``pc``.

    Returns:
        The samples, or a :class:`SampleResult`.

    Example::

        x = ss.sample(score_fn, ss.VPSDE(), solver="pc", steps=1000, shape=(64, 2),
                      predictor="reverse_diffusion", corrector="langevin", snr=0.16,
                      generator=torch.Generator().manual_seed(0))
        x = ss.sample(model, solver="dpmpp_2m", nfe=10)   # exactly 10 evaluations
    """
    if x_T is not None and not isinstance(x_T, Tensor):
        raise TypeError(f"x_T must be a tensor, got {type(x_T).__name__}")
    if x_T is not None and not x_T.is_floating_point():
        raise TypeError(f"x_T must be a floating-point tensor, got dtype {x_T.dtype}")
    if dtype is not None and not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    dev = (
        torch.device(device)
        if device is not None
        else (x_T.device if x_T is not None else (model_device(model) or torch.device("cpu")))
    )
    dt = dtype or (x_T.dtype if x_T is not None else torch.float32)
    wd = torch.float64 if dt == torch.float64 else torch.float32
    shp = _resolve_shape(model, shape, batch_size, seeds, x_T)
    score_fn, sde = resolve_model(model, sde)
    is_auto = isinstance(solver, str) and solver == "auto"
    if isinstance(gaussian_prior, str) and gaussian_prior == "default":
        gaussian_prior = "estimate" if is_auto else None
    gaussian_prior = resolve_gaussian_prior(model, gaussian_prior)
    info: dict[str, Any] = {}
    # the words this function used to take: last_step= (a solver option) and denoise= fold into final=
    if "last_step" in solver_options:
        last = solver_options.pop("last_step")
        warnings.warn(f"last_step={last!r} is deprecated: pass final={last!r} to scoresolve.sample",
                      DeprecationWarning, stacklevel=2)
        final = last if final is None else final
    if denoise is not None:
        warnings.warn(f"denoise={denoise!r} is deprecated: pass final={'tweedie' if denoise else 'none'!r}",
                      DeprecationWarning, stacklevel=2)
        final = ("tweedie" if denoise else "none") if final is None else final
    if nfe is not None:
        if not (type(nfe) is int and nfe >= 1):
            check_int(nfe, "nfe")  # raises, naming the argument
        if steps is not None:
            raise ValueError("pass either steps= (grid intervals) or nfe= (evaluations), not both")
    if is_auto:  # a table of budgets (scoresolve.recipes)
        solver_obj, final, grid, gaussian_prior, nfe, calibration = auto(
            model, nfe, steps, final, grid, gaussian_prior, calibrate, calibration_budget, solver_options, info)
        steps = None
    else:
        solver_obj, alias_grid = _solver_and_grid(solver, solver_options)  # an alias's grid; the caller's wins
        grid = alias_grid if grid is None else grid
        calibration = grid_calibration(calibrate, calibration_budget)
    final = solver_obj.default_final if final is None else final
    if final not in FINALS:
        check_final(final)

    # a noise source when there is noise to draw (or the caller gave one): ctx.noise is None for a deterministic run
    draws = x_T is None or solver_obj.stochastic or generator is not None or seeds is not None
    noise = NoiseSource(generator=generator, seeds=seeds, device=dev) if draws else None
    x = x_T.to(device=dev, dtype=dt) if x_T is not None else noise.randn(shp, device=dev, dtype=dt) * sde.prior_std

    # time grid
    prefix = gaussian_prior is not None
    if grid is not None and not isinstance(grid, str):
        times = check_grid(grid, sde)
        if steps is not None and check_int(steps, "steps") != times.numel() - 1:
            raise ValueError(
                f"steps={steps!r} was given with an explicit grid of {times.numel() - 1} intervals; the grid sets the "
                "number of steps: drop steps= (or pass a grid name)"
            )
        if eps is not None and not math.isclose(float(times[-1]), eps, rel_tol=1e-9):
            raise ValueError(f"eps={eps} disagrees with the grid's last time {float(times[-1])}")
        eps_ = float(times[-1])
        if nfe is not None and isinstance(solver_obj, GridSolver):
            n = plan(solver_obj, nfe, final, prefix)
            if n != times.numel() - 1:
                raise ValueError(f"grid: a budget of nfe={nfe} with {type(solver_obj).__name__} needs {n} grid "
                                 f"intervals, got {times.numel() - 1}")
    else:
        eps_ = sde.default_eps if eps is None else float(eps)
        if not (math.isfinite(eps_) and 0 < eps_ < sde.T):
            raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps!r}")
        if solver_obj.adaptive:
            times = None
            if steps is not None or grid is not None or nfe is not None:
                raise ValueError(f"solver {solver!r} is adaptive: it takes no steps=, nfe= or grid=")
        else:
            if nfe is not None:
                if not isinstance(solver_obj, GridSolver):
                    raise ValueError(f"solver {solver!r} declares no cost per step, so nfe= cannot be planned for "
                                     "it: pass steps=")
                n_steps = plan(solver_obj, nfe, final, prefix)
            else:
                if steps is not None and getattr(solver_obj, "budgeted", False):
                    warnings.warn(
                        f"steps={steps} now means {steps} grid intervals for every solver; for "
                        f"{type(solver_obj).__name__} it used to mean {steps} evaluations, which is now nfe={steps}",
                        DeprecationWarning, stacklevel=2)
                n_steps = check_int(solver_obj.default_steps or sde.N if steps is None else steps, "steps")
            times = make_grid(grid or solver_obj.default_grid, sde, n_steps, eps_)
    if calibration is not None and times is not None:  # a function returning the grid (and what runs on it)
        if nfe is None:
            raise ValueError("calibrate= calibrates the grid for an evaluation budget: pass nfe=")
        solver_obj, final, times, gaussian_prior = calibration(cpu_facing(score_fn, dev), model, sde, solver_obj, nfe,
                                                               final, gaussian_prior, shp[1:], eps_, wd, progress, info)
    if isinstance(gaussian_prior, str):
        raise ValueError(
            "gaussian_prior='estimate' estimates the data's moments during calibration: pass calibrate=True "
            "(or a cache file path), give gaussian_prior=(mean, cov), or sample a ScoreModel that carries "
            "data_moments=(mean, cov)"
        )
    if gaussian_prior is not None and gaussian_prior.name == "data_moments":
        info["gaussian_prior"] = "model"

    counted = CountedScore(score_fn, check_every=check_every)
    traj: list[Tensor] | None = [x.clone()] if return_trajectory else None
    n_int = times.numel() - 1 if times is not None else 0
    desc = f"scoresolve {solver if isinstance(solver, str) else type(solver).__name__}"
    bar = None if progress is False else Progress(n_int, desc, progress=progress)
    ctx = SolveContext(
        score=counted, sde=sde, grid=times, noise=noise, t_end=eps_, callback=callback, trajectory=traj,
        progress=bar if bar is not None and bar.active else None, final=final, xdtype=dt, wdtype=wd,
    )
    start = time.perf_counter()
    try:
        with torch.no_grad():
            if isinstance(solver_obj, GridSolver):
                x = integrate(solver_obj, ctx, x, gaussian_prior)
            else:
                if gaussian_prior is not None:
                    raise ValueError(f"gaussian_prior needs a fixed-grid solver, not {type(solver_obj).__name__}")
                x = solver_obj.solve(ctx, x)
                if final != "none":
                    counted.step = n_int
                    x = finish(solver_obj, ctx, x, None, None).to(dt)
                    if traj is not None:  # the final step is in the trajectory; callbacks see the solver's steps
                        traj.append(x.clone())
            counted.check()
    finally:
        if bar is not None:
            bar.close(evaluations=counted.nfe)
    seconds = time.perf_counter() - start
    if not (return_result or return_trajectory):
        return x
    info.update({k: v for k, v in ctx.info.items() if k not in ("times", "x_mean")})
    grid_out = ctx.info.get("times", times)
    return SampleResult(
        samples=x,
        nfe=counted.nfe,
        grid=grid_out,
        trajectory=torch.stack(traj) if traj is not None else None,
        seconds=seconds,
        info=info,
    )

