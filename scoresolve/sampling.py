r"""``scoresolve.sample``: the one entry point for drawing samples from a score model."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .aliases import resolve as resolve_alias
from .models import ScoreModel, resolve_model, score_to_x0
from .progress import Progress
from .registry import SOLVERS
from .sde import SDE
from .solvers.base import CountedScore, NoiseSource, SolveContext, Solver, check_positive_int
from .solvers.grids import check_grid, make_grid

__all__ = ["sample", "SampleResult", "resolve_solver"]

DEFAULT_BATCH_SIZE = 64


@dataclass
class SampleResult:
    """What :func:`sample` returns with ``return_result=True``.

    Attributes:
        samples: the final samples, shape ``(B, *dims)``.
        nfe: score evaluations actually made (batched calls count once), final denoising included.
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
    if isinstance(solver, Solver):
        if options:
            raise TypeError(
                f"solver options {sorted(options)} were given with a solver instance; configure the instance instead"
            )
        return solver
    if isinstance(solver, str):  # a registered name or a familiar alias ("euler_a", "DPM++ 2M Karras")
        solver, options, _ = resolve_alias(solver, options)
    cls = SOLVERS.get(solver, argument="solver") if isinstance(solver, str) else solver
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise TypeError(f"solver must be a registered name or a scoresolve Solver, got {solver!r}")
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in options if k not in params or k == "self"]
    if unknown and not accepts_any:
        name = solver if isinstance(solver, str) else cls.__name__
        allowed = [k for k in params if k != "self"]
        raise TypeError(
            f"unknown option(s) {unknown} for solver {name!r}; it accepts: {', '.join(allowed) or 'no options'}"
        )
    return cls(**options)


def _model_device(model: Any) -> torch.device | None:
    net = model.fn if isinstance(model, ScoreModel) else model
    if isinstance(net, torch.nn.Module):
        for p in net.parameters():
            return p.device
    return None


def _resolve_shape(
    model: Any, shape: Sequence[int] | None, batch_size: int | None, noise: NoiseSource, x_T: Tensor | None
) -> tuple[int, ...]:
    model_shape = model.sample_shape if isinstance(model, ScoreModel) else None
    if x_T is not None:
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise ValueError(f"shape={tuple(shape)} disagrees with x_T.shape={tuple(x_T.shape)}")
        out = tuple(x_T.shape)
    elif shape is not None:
        out = tuple(int(s) for s in shape)
        if len(out) < 2:
            raise ValueError(f"shape must be (batch, *dims) with at least 2 entries, got {out}")
    elif model_shape is not None:
        b = batch_size or noise.batch_size or DEFAULT_BATCH_SIZE
        out = (b, *model_shape)
    else:
        raise ValueError("shape= is required when the model does not carry a sample_shape (wrap it in ss.ScoreModel)")
    if model_shape is not None and out[1:] != model_shape:
        raise ValueError(
            f"shape {out} does not match the model's sample_shape {model_shape} (expected (B, *{model_shape}))"
        )
    if batch_size is not None and batch_size != out[0]:
        raise ValueError(f"batch_size={batch_size} disagrees with the batch dimension of shape {out}")
    if noise.batch_size is not None and noise.batch_size != out[0]:
        raise ValueError(f"seeds has {noise.batch_size} entries but the batch has {out[0]} samples")
    if any(s < 1 for s in out):
        raise ValueError(f"shape entries must be positive, got {out}")
    return out


def sample(
    model: Callable[[Tensor, Tensor], Tensor] | ScoreModel,
    sde: SDE | None = None,
    solver: str | Solver = "pc",
    steps: int | None = None,
    *,
    shape: Sequence[int] | None = None,
    batch_size: int | None = None,
    x_T: Tensor | None = None,
    eps: float | None = None,
    grid: str | Sequence[float] | Tensor | None = None,
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
        steps: number of grid steps (``pc``: predictor steps, the paper's N; default ``sde.N``).
            Solvers that take an evaluation budget document it.
        shape: ``(B, *dims)``; inferred from ``x_T`` or the model's ``sample_shape`` + ``batch_size``.
        batch_size: number of samples when the shape comes from the model (default 64, or
            ``len(seeds)``).
        x_T: start from this prior sample instead of drawing one.
        eps: the final (smallest) time; default ``sde.default_eps`` (1e-5 VE, 1e-3 VP/sub-VP).
        grid: a registered grid name or an explicit decreasing sequence of times (which then sets
            the number of steps and the final time).
        denoise: finish with one Tweedie step :math:`\hat x_0 = (x + \sigma_\epsilon^2 s(x,\epsilon))
            /\alpha_\epsilon` (one extra evaluation, counted in the NFE). ``None`` (default): the
            solver's own choice (``Solver.denoise_default``: on for ``pc`` and the ODE solvers, as in
            the paper; budgeted few-step solvers spend their last evaluation themselves).
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
    """
    score_fn, sde = resolve_model(model, sde)
    if isinstance(solver, str):  # an alias may bring options and a grid; the caller's win
        solver, solver_options, alias_grid = resolve_alias(solver, solver_options)
        grid = alias_grid if grid is None else grid
    # the solver for this model (e.g. with ScoreModel.data_moments as its Gaussian fit): before the grid is made
    solver_obj = resolve_solver(solver, solver_options).for_model(model)

    if x_T is not None and not isinstance(x_T, Tensor):
        raise TypeError(f"x_T must be a tensor, got {type(x_T).__name__}")
    if x_T is not None and not x_T.is_floating_point():
        raise TypeError(f"x_T must be a floating-point tensor, got dtype {x_T.dtype}")
    if dtype is not None and not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    dev = (
        torch.device(device)
        if device is not None
        else (x_T.device if x_T is not None else (_model_device(model) or torch.device("cpu")))
    )
    dt = dtype or (x_T.dtype if x_T is not None else torch.float32)

    noise = NoiseSource(generator=generator, seeds=seeds, device=dev)
    shp = _resolve_shape(model, shape, batch_size, noise, x_T)

    # time grid
    n_steps: int | None = None
    if grid is not None and not isinstance(grid, str):
        times = check_grid(grid, sde)
        if eps is not None and not math.isclose(float(times[-1]), eps, rel_tol=1e-9):
            raise ValueError(f"eps={eps} disagrees with the grid's last time {float(times[-1])}")
        eps_ = float(times[-1])
    else:
        eps_ = sde.default_eps if eps is None else float(eps)
        if not (math.isfinite(eps_) and 0 < eps_ < sde.T):
            raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps!r}")
        if solver_obj.adaptive:
            times = None
            if steps is not None or grid is not None:
                raise ValueError(f"solver {solver!r} is adaptive: it takes no steps= or grid=")
        else:
            n_steps = check_positive_int(getattr(solver_obj, "default_steps", sde.N) if steps is None else steps,
                                         "steps")
            # grids that are fitted to a model (e.g. "calibrated", "gits") receive it, with the solver and shape
            context = {"model": model, "solver": solver_obj, "shape": shp[1:]}
            times = make_grid(grid or solver_obj.grid_for(n_steps), sde, solver_obj.steps_to_grid(n_steps), eps_,
                              context=context)

    x = x_T.to(device=dev, dtype=dt) if x_T is not None else noise.randn(shp, device=dev, dtype=dt) * sde.prior_std

    counted = CountedScore(score_fn, check_every=check_every)
    traj: list[Tensor] | None = [x.clone()] if return_trajectory else None
    n_int = times.numel() - 1 if times is not None else 0
    desc = f"scoresolve {solver if isinstance(solver, str) else type(solver).__name__}"
    bar = Progress(n_int, desc, progress=progress)
    ctx = SolveContext(
        score=counted, sde=sde, grid=times, noise=noise, t_end=eps_, callback=callback, trajectory=traj,
        progress=bar if bar.active else None,
    )
    if n_steps is not None:
        ctx.info["steps"] = n_steps  # the user's budget, for solvers whose grid intervals differ from it
    start = time.perf_counter()
    try:
        with torch.no_grad():
            x = solver_obj.solve(ctx, x)
            if solver_obj.denoise_default if denoise is None else denoise:
                counted.step = n_int
                t_end = torch.full((x.shape[0],), eps_, device=x.device, dtype=x.dtype)
                x = score_to_x0(counted(x, t_end), x, t_end, sde)
                if traj is not None:
                    traj.append(x.clone())
            counted.check()
    finally:
        bar.close(evaluations=counted.nfe)
    seconds = time.perf_counter() - start
    if not (return_result or return_trajectory):
        return x
    info = {k: v for k, v in ctx.info.items() if k not in ("x_mean", "times", "steps")}
    grid_out = ctx.info.get("times", times)
    return SampleResult(
        samples=x,
        nfe=counted.nfe,
        grid=grid_out,
        trajectory=torch.stack(traj) if traj is not None else None,
        seconds=seconds,
        info=info,
    )
