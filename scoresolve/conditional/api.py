r"""``scoresolve.inpaint``: sample the missing entries given the observed ones, with an unconditional
score model.

One API for every conditional task built on observations (inpainting here; linear observations and
colorisation in :mod:`scoresolve.conditional.linear` reduce to it by an orthogonal change of basis):

    x = ss.inpaint(model, sde, y, mask, method="smc", particles=64, steps=200, generator=g)

returns one sample per row of ``y`` (rows may repeat an observation: each row gets an independent
draw), with the observed entries equal to ``y``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._util import check_int, one_of
from ..models import ScoreModel
from ..sampling import SampleResult, resolve_solver, sample
from ..sde import SDE
from ..solvers.base import Solver, check_grid
from ..solvers.grids import make_grid
from ._common import Observation, check_particles, merge_times, resolve_model
from .particles import smc_inpaint
from .replace import ReplacementSolver

__all__ = ["inpaint", "METHODS"]

METHODS = ("smc", "replace")
_DEFAULT_STEPS = {"smc": 200}
_DEFAULT_PARTICLES = 64


def inpaint(
    model: Callable[[Tensor, Tensor], Tensor] | ScoreModel,
    sde: SDE | None,
    y: Tensor,
    mask: Tensor | Sequence[bool],
    *,
    method: str = "smc",
    steps: int | None = None,
    particles: int | None = None,
    noise_std: float | Tensor = 0.0,
    eps: float | None = None,
    grid: str | Sequence[float] | Tensor | None = None,
    denoise: bool | None = None,
    generator: torch.Generator | None = None,
    return_result: bool = False,
    **method_options: Any,
) -> Tensor | SampleResult:
    r"""Sample :math:`x \sim p(x_m \mid x_o = y_o)` under the model, one sample per row of ``y``.

    Args:
        model: a score model ``score(x, t)`` or :class:`~scoresolve.ScoreModel` of the **unconditional**
            data distribution.
        sde: its SDE (``None``: the model's).
        y: ``(n, *sample_shape)``; the entries where ``mask`` is True are the observation (others are
            ignored and may be anything, e.g. NaN). Rows may repeat the same observation.
        mask: boolean, broadcastable to ``y`` (e.g. of ``sample_shape`` for one mask for all rows);
            True marks an observed entry.
        method: ``"smc"`` (default; asymptotically exact, :mod:`~scoresolve.conditional.particles`)
            or ``"replace"`` (the paper's method, :mod:`~scoresolve.conditional.replace`; cheap but
            not consistent — the documented baseline).
        steps: grid steps (default 200 for ``smc``, ``sde.N`` for ``replace``). For ``smc`` extra
            particles buy more than extra steps.
        particles: particles per output for ``smc`` (default 64). Not used by ``replace``.
        noise_std: standard deviation of Gaussian noise on the observed entries (scalar or
            broadcastable to ``y``), on the data scale; 0 (default) for an exact observation. A
            noisy coordinate is an exact observation of the diffused state at the time
            :math:`t^*` where :math:`\sigma_{t^*}/\alpha_{t^*}` equals its noise level; ``smc``
            inserts those times into the grid (one extra step per distinct level).
        eps: final time (default ``sde.default_eps``).
        grid: a registered grid name or explicit decreasing times (default: the solver's for
            ``replace``; ``"log_snr"`` for ``smc``, which spreads the particle filter's information evenly —
            a uniform-``t`` grid under VP takes too few steps at low noise, where the weights collapse).
        denoise: end with one Tweedie step (default True).
        generator: the one source of randomness (noise, observation paths, resampling).
        return_result: return a :class:`~scoresolve.SampleResult` (``nfe`` counts batched calls;
            ``info["score_rows"]`` the single-sample evaluations for ``smc``; ``info["log_z"]``
            each system's estimate of the log evidence :math:`\log p(y)`, for ``y`` seen through noise
            :math:`\max(\nu, \sigma(\epsilon))`).
        **method_options: ``smc``: ``kernel`` (``"ancestral"``, ``"reverse_diffusion"``,
            ``"euler_maruyama"``), ``ess_threshold`` (0.1), ``exact_variance`` (False; True: the ancestral
            kernel's weights include :math:`\mathrm{Var}(x_0 \mid x_t)`, at one more evaluation per particle and
            step, so that ``info["log_z"]`` converges with the steps), ``twist`` (False; True: a guided proposal
            and twisted weights after TDS, arXiv:2306.17775, at one more evaluation per particle and step, shared
            with ``exact_variance``: a lower-variance ``info["log_z"]``), ``refine`` (0; ``R > 0``: finish each
            output with ``R`` Metropolis-adjusted Langevin moves on its unobserved block at the last time, one
            evaluation per output and move, :mod:`scoresolve.conditional.refine`). ``replace``: ``solver`` (any
            fixed-grid solver, default ``"pc"``) and its options (``predictor=``, ``corrector=``,
            ``snr=``, ...). Both: ``progress`` (a tqdm bar over the steps, shown by default;
            ``False`` silences it, :mod:`scoresolve.progress`).

    Returns:
        ``(n, *sample_shape)`` samples whose exactly-observed entries equal ``y``, or a
        :class:`~scoresolve.SampleResult`.

    Cost (score evaluations of single samples): ``smc``: ``n·(particles·steps + 1)`` (``n·(2·particles·steps +
    1)`` with ``exact_variance=True``, ``twist=True`` or both; ``+ n·refine``); ``replace``:
    that of the unconditional solver, ``n·steps·nfe_per_step (+ n)``.
    """
    score_fn, sde = resolve_model(model, sde)
    method = one_of(method, METHODS, "method")
    event_shape = model.sample_shape if isinstance(model, ScoreModel) else None
    obs = Observation.from_inpainting(y, mask, event_shape, noise_std=noise_std)
    return run_method(score_fn, sde, obs, method=method, steps=steps, particles=particles, eps=eps, grid=grid,
                      denoise=denoise, generator=generator, return_result=return_result, **method_options)


def run_method(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    obs: Observation,
    *,
    method: str = "smc",
    steps: int | None = None,
    particles: int | None = None,
    eps: float | None = None,
    grid: str | Sequence[float] | Tensor | None = None,
    denoise: bool | None = None,
    generator: torch.Generator | None = None,
    return_result: bool = False,
    **method_options: Any,
) -> Tensor | SampleResult:
    """Dispatch an :class:`Observation` to a method (shared by inpaint, linear_inverse, colorize); the options
    are :func:`inpaint`'s."""
    method = one_of(method, METHODS, "method")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if steps is not None:
        check_int(steps, "steps")
    if method == "replace":
        if particles is not None:
            check_particles(particles)
            if particles != 1:
                raise ValueError("particles applies to method='smc'; method='replace' draws one path per output")
        solver = method_options.pop("solver", "pc")
        progress = method_options.pop("progress", None)
        inner = resolve_solver(solver, method_options) if not isinstance(solver, Solver) else solver
        wrapped = ReplacementSolver(inner, obs)
        res = sample(
            score_fn,
            sde,
            solver=wrapped,
            steps=steps,
            shape=(obs.n, *obs.event_shape),
            eps=eps,
            grid=grid,
            final=None if denoise is None else ("tweedie" if denoise else "none"),
            generator=generator,
            device=obs.y.device,
            dtype=obs.y.dtype,
            return_result=True,
            progress=progress,
        )
        assert isinstance(res, SampleResult)
        exact = obs.mask & (obs.nu == 0)
        out = torch.where(exact, obs.y, res.samples.reshape(obs.n, -1)).reshape(res.samples.shape)
        if not return_result:
            return out
        res.samples = out
        res.info.update(method="replace", score_rows=res.nfe * obs.n)
        return res

    # smc
    k = _DEFAULT_PARTICLES if particles is None else check_particles(particles)
    n_steps = _DEFAULT_STEPS["smc"] if steps is None else steps
    if grid is not None and not isinstance(grid, str):
        times = check_grid(grid, sde)
        if steps is not None:
            raise ValueError("pass either steps= or an explicit grid=, not both")
        eps_ = float(times[-1])
    else:
        eps_ = sde.default_eps if eps is None else float(eps)
        if not (math.isfinite(eps_) and 0 < eps_ < sde.T):
            raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps!r}")
        times = make_grid(grid or "log_snr", sde, n_steps, eps_)
    times = merge_times(times, obs.observation_times(sde, eps_))
    unknown = set(method_options) - {"kernel", "ess_threshold", "exact_variance", "twist", "refine", "progress"}
    if unknown:
        raise TypeError(
            f"unknown option(s) {sorted(unknown)} for method='smc'; it accepts: kernel, ess_threshold, exact_variance, "
            "twist, refine, progress"
        )
    return smc_inpaint(
        score_fn,
        sde,
        obs,
        times,
        particles=k,
        denoise=True if denoise is None else bool(denoise),
        generator=generator,
        return_result=return_result,
        **method_options,
    )
