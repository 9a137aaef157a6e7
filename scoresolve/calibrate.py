r"""Time grids calibrated for a given model, solver and evaluation budget, and their cache (docs/fast_samplers.md).

:func:`calibrate_grid` chooses the interior noise levels of a budgeted solver's grid (and, with a step to 0, the
last level, bounded below by ``eps``) to minimise that solver's own endpoint error against a fine teacher of the
probability-flow ODE on a calibration batch :math:`x_T^{(b)}` drawn from its own noise stream:

.. math:: \min_{\tilde\sigma_1 > \dots > \tilde\sigma_{n-1}}\ \mathrm{RMSE}\big(\Phi_{solver}(x_T^{(b)};\tilde\sigma),
          \ x^{(b)}_{teacher}\big),

the teacher 4th-order Adams (:mod:`~scoresolve.solvers.ipndm`) on ``teacher_steps`` log-SNR steps, the grid the
softmax of its log-noise increments, searched by a derivative-free coordinate pattern search from the best
standard grid (in the spirit of GITS, arXiv:2405.11326); ``metric=`` picks RMSE, the local metric, both, or
``"logp"``. Cost: the teacher, plus one solver run on the batch per objective evaluation (:class:`CalibratedGrid`
reports it). Grids are kept where ``cache=`` says (a :class:`CalibrationCache` or an atomic JSON file), keyed by a
fingerprint of model, SDE, solver, final step, Gaussian fit, metric, budget, ``eps`` and shape."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._util import atomic_write, check_int, model_signature, one_of, same_signature
from .gaussian import GaussianFit, as_gaussian_fit
from .metrics.frechet import frechet_distance, gaussian_moments
from .models import ScoreModel, as_score_fn, cpu_facing, model_device
from .noise import NoiseSource
from .progress import Progress
from .registry import SOLVERS
from .sde import SDE
from .solvers.base import CountedScore, GridSolver, SolveContext
from .solvers.finish import check_final
from .solvers.grids import make_grid
from .solvers.ipndm import IPNDM
from .solvers.loop import integrate, plan

__all__ = [
    "CalibratedGrid",
    "CalibrationCache",
    "DEFAULT_CACHE",
    "CalibrationMismatchError",
    "calibrate_grid",
    "calibrated_run",
    "calibration_options",
    "grid_calibration",
    "model_signature",
    "teacher_solution",
    "gits_grid",
]

_CALIB_STREAM = 0x0CA1_1B00  # calibration noise: seed + this, away from the small seeds users sample with
#: calibration objectives (``metric=`` of :func:`calibrate_grid`)
METRICS = ("rmse", "local", "both", "logp")


class CalibrationMismatchError(ValueError):
    """A cached calibrated grid was made for another model, SDE, solver, budget, eps or shape."""


def _f64(v: float | Sequence[float]) -> Tensor:
    return torch.tensor(v, dtype=torch.float64)


@dataclass
class CalibratedGrid:
    """A grid calibrated for one model, SDE, solver and budget.

    Attributes:
        times: the grid (float64 times, decreasing from ``T``), as passed to ``sample(grid=...)``.
        steps: the evaluation budget it was made for.
        eps: the final time the solver was asked for.
        sde: ``sde.config()``.
        solver: the solver's configuration (name and options).
        shape: the sample shape (without the batch).
        signature: :func:`model_signature` of the model.
        nfe: evaluations spent on calibration (probe + teacher + search), batched calls count once.
        seconds: wall time of the calibration.
        rmse_initial, rmse: calibration-batch RMSE against the teacher on the starting grid and on
            the calibrated one.
        init: the starting grid's name.
        seed, n_samples: calibration noise seed and batch size.
    """

    times: list[float]
    steps: int
    eps: float
    sde: dict[str, Any]
    solver: dict[str, Any]
    shape: list[int]
    signature: list[float]
    nfe: int = 0
    seconds: float = 0.0
    rmse_initial: float = math.nan
    rmse: float = math.nan
    init: str = ""
    seed: int = 0
    n_samples: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: whether this grid came from a cache (file or :class:`CalibrationCache`) rather than a new search
    cached: bool = field(default=False, repr=False)

    @property
    def grid(self) -> Tensor:
        return _f64(self.times)

    def gaussian_fit(self) -> Any:
        """The Gaussian fit estimated during calibration (``gaussian_prior="estimate"``), or ``None`` (also
        when the grid was calibrated with a model's ``data_moments``, recorded with kind ``"model"`` and
        their digest only: that fit is the model's, ``ScoreModel.data_fit``)."""
        gp = self.extra.get("gaussian_prior")
        if gp is None or "mean" not in gp:
            return None
        return GaussianFit(_f64(gp["mean"]), float(gp["var"]) if gp.get("cov") is None else _f64(gp["cov"]))

    def key(self) -> str:
        return json.dumps([self.sde, self.solver, self.steps, self.eps, self.shape], sort_keys=True, default=str)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as JSON, atomically (temporary file in the same folder, then ``os.replace``)."""
        with atomic_write(path, mkdir=True) as tmp, open(tmp, "w") as f:
            record = {k: v for k, v in asdict(self).items() if k != "cached"}
            json.dump({"format": "scoresolve.calibrated_grid/1", **record}, f, default=str)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CalibratedGrid:
        with open(path) as f:
            data = json.load(f)
        if data.pop("format", None) != "scoresolve.calibrated_grid/1":
            raise ValueError(f"{path} is not a scoresolve calibrated-grid file")
        return cls(**data, cached=True)

    def check(
        self, *, signature: Sequence[float] | None, sde: SDE, solver: Any, steps: int, eps: float, shape: Sequence[int]
    ) -> None:
        """Raise :class:`CalibrationMismatchError` naming the argument that differs."""
        checks = [
            ("sde", self.sde, sde.config()),
            ("solver", self.solver, solver),
            ("steps", self.steps, int(steps)),
            ("shape", self.shape, list(shape)),
        ]
        for name, have, want in checks:
            if json.dumps(have, sort_keys=True, default=str) != json.dumps(want, sort_keys=True, default=str):
                raise CalibrationMismatchError(
                    f"the cached calibrated grid was made for {name}={have!r}, not {name}={want!r}; "
                    "delete the cache file or pass another path to recalibrate"
                )
        if not math.isclose(self.eps, float(eps), rel_tol=1e-9):
            raise CalibrationMismatchError(f"the cached calibrated grid was made for eps={self.eps}, not eps={eps}")
        if signature is not None and not same_signature(self.signature, signature):
            raise CalibrationMismatchError(
                "the cached calibrated grid was made for another model (its outputs at the probe points differ); "
                "delete the cache file or pass another path to recalibrate"
            )


class CalibrationCache:
    """Calibrated grids held in memory by their owner, keyed by what they were made for (SDE, solver, final
    step, Gaussian fit, metric, budget, ``eps``, shape); the model is compared by its signature on every
    lookup. :func:`scoresolve.sample` uses :data:`DEFAULT_CACHE` for ``calibrate=True``; pass your own
    (``calibrate={"cache": CalibrationCache()}``) to own its lifetime, or a file path to keep grids across
    processes."""

    def __init__(self) -> None:
        self.grids: dict[str, CalibratedGrid] = {}

    def lookup(self, key: str, signature: Sequence[float]) -> CalibratedGrid | None:
        """The grid stored under ``key`` if it was made for a model with this signature."""
        hit = self.grids.get(key)
        return hit if hit is not None and same_signature(hit.signature, signature) else None

    def store(self, cg: CalibratedGrid) -> None:
        self.grids[cg.key()] = cg

    def clear(self) -> None:
        self.grids.clear()

    def __len__(self) -> int:
        return len(self.grids)


#: the cache of ``scoresolve.sample(..., calibrate=True)`` (one process; ``DEFAULT_CACHE.clear()`` empties it)
DEFAULT_CACHE = CalibrationCache()


# --- teacher and objective ----------------------------------------------------------------------------
def _run(model, sde: SDE, solver: Any, grid: Tensor, x_T: Tensor, final: str = "none",
         prefix: GaussianFit | None = None, callback: Any = None) -> tuple[Tensor, int]:
    """``solver`` on ``grid`` from ``x_T`` through the fixed-grid loop; returns ``(x, nfe)``."""
    counted = CountedScore(model, check_every=10**9)
    wd = torch.float64 if x_T.dtype == torch.float64 else torch.float32
    ctx = SolveContext(score=counted, sde=sde, grid=grid, noise=NoiseSource(), t_end=float(grid[-1]), final=final,
                       xdtype=x_T.dtype, wdtype=wd, callback=callback)
    with torch.no_grad():
        out = integrate(solver, ctx, x_T, prefix)
    return out, counted.nfe


def teacher_solution(
    model: Callable[[Tensor, Tensor], Tensor], sde: SDE, x_T: Tensor, eps: float, *, to_zero: bool, steps: int = 200
) -> tuple[Tensor, int]:
    """Fine PF-ODE solution from ``x_T`` (at ``T``) to ``eps`` (or on to :math:`\\tilde\\sigma = 0`):
    4th-order variable-step Adams on ``steps`` log-SNR steps. Returns ``(x, nfe)``."""
    grid = make_grid("log_snr", sde, steps, eps)
    return _run(model, sde, IPNDM(order=4), grid, x_T, final="zero" if to_zero else "none")


def _estimate_gaussian(
    fn: Callable[[Tensor, Tensor], Tensor], sde: SDE, x_T: Tensor, target: Tensor
) -> tuple[list[tuple[str, Any]], int]:
    r"""Candidate Gaussian fits of the model's data for ``gaussian_prior="estimate"``, from the
    calibration batch (``B`` samples, dimension ``D``).

    The mean is the batch mean of the denoiser at ``T``, :math:`D(x_T) = x_T/\alpha_T +
    \tilde\sigma_T^2\alpha_T s_\theta(x_T, T)` (its expectation under :math:`p_T` is the data mean
    exactly, and at :math:`\tilde\sigma_T \gg` the data scale it barely varies between samples: on
    digits × VP its error is 0.002 against 0.26 for the mean of 256 teacher endpoints). The covariance
    comes from the teacher's endpoints :math:`S`: ``"isotropic"`` :math:`vI` with :math:`v = \mathrm{tr}
    S/D`, and, when :math:`D < B`, ``"shrunk"`` :math:`(1-a)S + a\,vI` with :math:`a = D/B`. The
    caller calibrates a grid for each and keeps the better one (isotropic won on digits, the shrunk
    covariance on the 16-D anisotropic mixture). One evaluation (batched); returns ``(candidates, 1)``."""
    b = x_T.shape[0]
    tT = torch.full((b,), sde.T, dtype=x_T.dtype)
    a = float(sde.alpha(_f64(sde.T)))
    s = float(sde.sigma(_f64(sde.T)))
    with torch.no_grad():
        D = (x_T.double() / a + s * s * a * fn(x_T, tT).double()).reshape(b, -1)
    m = D.mean(0)
    ends = target.double().reshape(b, -1)
    d = ends.shape[1]
    var = float(ends.var(dim=0).mean())
    out: list[tuple[str, Any]] = [("isotropic", GaussianFit(m, var))]
    if d < b:
        sh = d / b
        S = torch.cov(ends.T).reshape(d, d)
        out.append(("shrunk", GaussianFit(m, (1 - sh) * S + sh * var * torch.eye(d, dtype=torch.float64))))
    return out, 1


def _fit_record(kind: str, fit: Any) -> dict[str, Any]:
    """JSON-friendly record of an estimated Gaussian fit (stored in ``CalibratedGrid.extra``)."""
    cov = None if fit.V is None else ((fit.V * fit.c) @ fit.V.T).tolist()
    return {"kind": kind, "mean": fit.mean.tolist(), "var": float(fit.c.mean()), "cov": cov}


def _grid_from_params(theta: Tensor, u0: float, u_end: float, free_end: bool, u_floor: float) -> Tensor:
    """Log-noise levels from parameters: increments = softmax; with ``free_end`` the last parameter
    sets the end between ``u_floor`` and ``u0``."""
    if free_end:
        inc_logits, e = theta[:-1], theta[-1]
        u_end = u_floor + (u0 - u_floor) * (1 - torch.sigmoid(e)) * 0.999
    else:
        inc_logits = theta
    w = torch.softmax(torch.cat([inc_logits, torch.zeros(1, dtype=torch.float64)]), 0)
    u = u0 - (u0 - u_end) * torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(w, 0)])
    u[-1] = u_end
    return u


def _params_from_grid(u: Tensor, free_end: bool, u_floor: float) -> Tensor:
    inc = (u[:-1] - u[1:]).clamp_min(1e-12)
    logits = torch.log(inc) - torch.log(inc[-1])
    theta = logits[:-1]
    if free_end:
        frac = float((u[-1] - u_floor) / (u[0] - u_floor)) / 0.999
        frac = min(max(frac, 1e-6), 1 - 1e-6)
        e = math.log((1 - frac) / frac)
        theta = torch.cat([theta, _f64([e])])
    return theta


def calibrate_grid(
    model: Callable[[Tensor, Tensor], Tensor] | ScoreModel,
    sde: SDE,
    solver: Any,
    nfe: int,
    *,
    final: str = "none",
    gaussian_prior: Any = None,
    shape: Sequence[int] | None = None,
    eps: float | None = None,
    n_samples: int = 128,
    seed: int = 0,
    teacher_steps: int = 200,
    max_evals: int | None = None,
    cache: str | os.PathLike[str] | CalibrationCache | None = None,
    init: str | None = None,
    dtype: torch.dtype = torch.float64,
    metric: str = "both",
    logp_tol: float = 1.0,
    logp_cap: float = 1.25,
    fd_weight: float = 0.0,
    progress: bool | None = None,
) -> CalibratedGrid:
    r"""Calibrate the grid of a budgeted solver for ``model`` and budget ``nfe`` (see the module docstring).

    Args:
        model: score callable or :class:`~scoresolve.ScoreModel`.
        sde: the SDE.
        solver: a registered budgeted solver name or instance (e.g. ``"ipndm"``; ``IPNDM(order=3)``).
        nfe: the evaluation budget the grid is for.
        final: how the runs end (``"none"``, ``"tweedie"``, ``"zero"``; :mod:`~scoresolve.solvers.finish`).
        gaussian_prior: ``None``, a Gaussian fit (``GaussianFit`` or ``(mean, cov)``) for the analytical first
            interval, or ``"estimate"``: the model's ``ScoreModel.data_moments`` if it carries them, else
            candidates estimated from the calibration batch (the better one is kept, ``.gaussian_fit()``).
        shape: sample shape without the batch (default: the model's ``sample_shape``).
        eps: final time (default ``sde.default_eps``).
        n_samples: calibration batch size (64–256 is enough).
        seed: calibration noise seed (drawn on a stream separate from sampling noise).
        teacher_steps: log-SNR steps of the 4th-order teacher.
        max_evals: cap on objective evaluations of the search (default ``60 + 25 * steps``).
        cache: a JSON file (loaded and checked against the fingerprint if it exists, written otherwise) or a
            :class:`CalibrationCache` (looked up, then stored into); the result's ``cached`` says which.
        init: start from this registered grid only (default: the best of log-SNR and Karras ρ 3/5/7).
        dtype: dtype of the calibration states (the model sees it); float64 by default.
        metric: what the search minimises on the calibration batch. ``"rmse"``: plain endpoint RMSE;
            ``"local"``: the endpoint error in the local metric of the data,
            :math:`\sqrt{\mathrm{mean}_b\,[\delta_b\cdot(s(x^{ref}_b) - s(x^{ref}_b+\delta_b))]_+ / D}`
            with the model's score at ``eps`` — a finite-difference :math:`\delta^\top\Sigma^{-1}\delta`
            that weights thin data directions as the log-density does (one extra evaluation per
            objective evaluation); ``"both"``: the geometric mean of the two; ``"logp"``: two stages, the
            RMSE optimum, then from it :math:`\mathrm{RMSE}\sqrt{1 + (\hat\Delta/\mathrm{logp\_tol})^2}`
            subject to RMSE ≤ ``logp_cap`` × the stage-1 optimum, with :math:`\hat\Delta` the batch mean of
            the trapezoid estimate :math:`\delta\cdot(s(x^{ref}) + s(x^{ref}+\delta))/2` of
            :math:`\log p_{eps}(x) - \log p_{eps}(x^{ref})` (exact for a locally Gaussian density; it fails
            for segments that cross modes, hence the cap; one extra evaluation per objective
            evaluation; twice the search budget). Default ``"both"`` (``solver="auto"`` sets it per budget). Plain RMSE
            ignores thin directions (mean :math:`\log p_0` tens of nats off); the local metric alone
            ignores the wide ones (Fréchet distance 14× the floor at 5 NFE on digits).

        logp_tol: nats at which the log-density gap doubles the ``"logp"`` objective (> 0).
        logp_cap: the ``"logp"`` stage's RMSE cap, relative to the RMSE optimum.
        fd_weight: ``w``: add ``w * FD(output batch, teacher batch) / D`` to the squared RMSE (a paired
            Fréchet distance between the Gaussian fits of the two batches: systematic errors that the
            per-sample RMSE under-weights); 0 (default) leaves it out.
        progress: a tqdm bar over the solver runs of the search, shown by default (:mod:`scoresolve.progress`).

    Returns:
        A :class:`CalibratedGrid`; pass ``.grid`` as ``sample(..., grid=...)`` with the same solver
        (for ``gaussian_prior="estimate"`` the fit is in ``.extra["gaussian_prior"]``, ``.gaussian_fit()``).
    """
    solver_obj = SOLVERS.get(solver, argument="solver")() if isinstance(solver, str) else solver
    if isinstance(solver_obj, type):
        solver_obj = solver_obj()
    if not (isinstance(solver_obj, GridSolver) and solver_obj.variables == "edm"):
        raise TypeError(f"solver must be a budgeted few-step solver (e.g. 'ipndm', 'dpmpp_2m'), got {solver!r}")
    final = check_final(final)
    one_of(metric, METRICS, "metric")
    if not (isinstance(logp_tol, (int, float)) and logp_tol > 0):
        raise ValueError(f"logp_tol must be a positive number (nats), got {logp_tol!r}")
    check_int(nfe, "nfe")
    steps = nfe
    estimate = isinstance(gaussian_prior, str) and gaussian_prior == "estimate"
    fit: GaussianFit | None = None
    if estimate and isinstance(model, ScoreModel) and model.data_fit is not None:
        # the model's own moments (ScoreModel.data_moments): nothing estimated
        fit, estimate = model.data_fit, False
    elif not estimate and gaussian_prior is not None:
        fit = as_gaussian_fit(gaussian_prior)
    n = plan(solver_obj, nfe, final, prefix=estimate or fit is not None)
    fingerprint = _fingerprint(solver_obj, final, metric, "estimate" if estimate else fit,
                               dict(logp_tol=logp_tol, logp_cap=logp_cap, fd_weight=fd_weight))
    if shape is None:
        if isinstance(model, ScoreModel) and model.sample_shape is not None:
            shape = model.sample_shape
        else:
            raise ValueError("shape= (the sample shape without the batch) is required for a plain callable model")
    shape = [int(s) for s in shape]
    eps_ = sde.default_eps if eps is None else float(eps)
    if not (0 < eps_ < sde.T):
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps!r}")
    fn = cpu_facing(as_score_fn(model), model_device(model))  # states stay on the CPU
    start = time.perf_counter()
    sig = model_signature(fn, sde, shape)
    cost = 3
    if isinstance(cache, CalibrationCache):
        key = json.dumps([sde.config(), fingerprint, steps, eps_, shape], sort_keys=True, default=str)
        hit = cache.lookup(key, sig)
        if hit is not None:
            return replace(hit, cached=True)
    elif cache is not None and Path(cache).exists():
        cg = CalibratedGrid.load(cache)
        cg.check(signature=sig, sde=sde, solver=fingerprint, steps=steps, eps=eps_, shape=shape)
        return cg

    bar = Progress(None, f"calibrating the {type(solver_obj).__name__} grid for {steps} NFE", unit="run",
                   progress=progress)
    g = torch.Generator().manual_seed(int(seed) + _CALIB_STREAM)
    x_T = (torch.randn((n_samples, *shape), generator=g, dtype=torch.float64) * sde.prior_std).to(dtype)
    to_zero = final != "none"
    target, t_nfe = teacher_solution(fn, sde, x_T, eps_, to_zero=to_zero, steps=teacher_steps)
    cost += t_nfe
    extra: dict[str, Any] = {}
    gauss_candidates: list[tuple[str, Any]] = []
    if estimate:
        gauss_candidates, k = _estimate_gaussian(fn, sde, x_T, target)
        cost += k
        fit = gauss_candidates[0][1]
    t_eps = torch.full((n_samples,), eps_, dtype=target.dtype)
    if metric != "rmse":
        with torch.no_grad():
            s_ref = fn(target, t_eps).to(torch.float64)
        cost += 1

    u0 = math.log(float(sde.sigma(_f64(sde.T))))
    u_eps = math.log(float(sde.sigma(_f64(eps_))))
    free_end = to_zero and n >= 1
    counter = {"nfe": 0, "evals": 0}

    def grid_of(u: Tensor) -> Tensor:
        t = sde.t_from_sigma(torch.exp(u))
        t[0] = sde.T
        if not free_end:
            t[-1] = eps_
        return t

    if fd_weight:
        t_mom = gaussian_moments(target.reshape(n_samples, -1).double())
    stage = {"metric": "rmse" if metric == "logp" else metric, "rmse_cap": math.inf}

    def objective_u(u: Tensor) -> float:
        t = grid_of(u)
        if not bool((t[1:] < t[:-1]).all()) or float(t[-1]) <= 0:
            return math.inf
        out, k = _run(fn, sde, solver_obj, t, x_T, final, fit)
        counter["nfe"] += k
        counter["evals"] += 1
        bar.update(1)
        delta = out.double() - target.double()
        rmse = float(delta.pow(2).mean().sqrt())
        if fd_weight and math.isfinite(rmse):
            # paired Frechet distance between the output batch and the teacher batch (systematic errors)
            mo, co = gaussian_moments(out.reshape(n_samples, -1).double())
            fdp = max(frechet_distance(mo, co, t_mom[0], t_mom[1]), 0.0)
            rmse = math.sqrt(rmse**2 + fd_weight * fdp / delta[0].numel())
        m = stage["metric"]
        if m == "rmse":
            return rmse if math.isfinite(rmse) else math.inf
        if rmse > stage["rmse_cap"] or not math.isfinite(rmse):
            return math.inf
        with torch.no_grad():  # a network's parameters may require grad: no graph for a score read
            s_out = fn(out, t_eps).to(torch.float64)
        counter["nfe"] += 1
        if m == "logp":
            # trapezoid estimate of the mean of log p_eps(out) - log p_eps(ref) along each segment (exact for a
            # locally Gaussian density; trusted only near the RMSE optimum, hence the cap)
            dlogp = float((delta * (s_ref + s_out)).reshape(n_samples, -1).sum(1).mean()) / 2
            err = rmse * math.sqrt(1.0 + (dlogp / logp_tol) ** 2)
        else:
            q = (delta * (s_ref - s_out)).reshape(n_samples, -1).sum(1).clamp_min(0)
            local = float((q.mean() / delta[0].numel()).sqrt())
            err = local if m == "local" else math.sqrt(rmse * local)
        return err if math.isfinite(err) else math.inf

    if gauss_candidates:
        extra["gaussian_prior"] = _fit_record(*gauss_candidates[0])
    elif fit is not None and fit.name == "data_moments":
        # the model's own moments (ScoreModel.data_moments): recorded by digest, they travel with the model
        extra["gaussian_prior"] = {"kind": "model", "digest": fit.digest, "dim": fit.dim}
    if n == 1 and not free_end:
        t = make_grid("log_snr", sde, 1, eps_)
        e = objective_u(torch.log(sde.sigma(t)))
        cg = CalibratedGrid(
            times=t.tolist(), steps=steps, eps=eps_, sde=sde.config(), solver=fingerprint, shape=shape,
            signature=sig, nfe=cost + counter["nfe"], seconds=time.perf_counter() - start, rmse_initial=e, rmse=e,
            init="log_snr", seed=int(seed), n_samples=int(n_samples), extra=extra,
        )
        _keep(cg, cache)
        bar.close(evaluations=cg.nfe)
        return cg

    def search() -> tuple[Tensor, float, float, str]:
        """Best starting grid, then the pattern search (two stages for ``metric="logp"``)."""
        stage.update(metric="rmse" if metric == "logp" else metric, rmse_cap=math.inf)
        inits = [init] if init else ["log_snr", "karras_3", "karras_5", "karras_7"]
        best_u, best_e, best_name = None, math.inf, ""
        for name in inits:
            if name.startswith("karras_"):
                t = make_grid("karras", sde, n, eps_, rho=float(name.split("_")[1]))
            else:
                t = make_grid(name, sde, n, eps_)
            u = torch.log(sde.sigma(t))
            e = objective_u(u)
            if e < best_e:
                best_u, best_e, best_name = u, e, name
        if best_u is None:
            raise FloatingPointError("every starting grid gave a non-finite endpoint error; check the model")
        theta = _params_from_grid(best_u, free_end, u_eps)

        def objective(th: Tensor) -> float:
            return objective_u(_grid_from_params(th, u0, u_eps, free_end, u_eps))

        budget = max_evals if max_evals is not None else 60 + 25 * steps
        theta, cur = _pattern_search(objective, theta, counter["evals"] + budget, counter, step0=0.5)
        if metric == "logp":
            # stage 2: from the RMSE optimum, trade RMSE (capped at logp_cap x its optimum) for the log-density gap
            stage.update(metric="logp", rmse_cap=logp_cap * cur)
            theta, cur = _pattern_search(objective, theta, counter["evals"] + budget, counter, step0=0.2)
        return theta, cur, best_e, best_name

    if gauss_candidates:
        # one search per candidate Gaussian fit; keep the fit (and grid) with the lowest objective
        results = []
        for kind, cand in gauss_candidates:
            fit = cand
            results.append((search(), kind, cand))
        (theta, cur, e_init, best_name), kind, fit = min(results, key=lambda r: r[0][1])
        extra["gaussian_prior"] = _fit_record(kind, fit)
        extra["gaussian_prior"]["objective"] = {r[1]: r[0][1] for r in results}
    else:
        theta, cur, e_init, best_name = search()
    u = _grid_from_params(theta, u0, u_eps, free_end, u_eps)
    times = grid_of(u)
    cg = CalibratedGrid(
        times=times.tolist(), steps=steps, eps=eps_, sde=sde.config(), solver=fingerprint, shape=shape,
        signature=sig, nfe=cost + counter["nfe"], seconds=time.perf_counter() - start, rmse_initial=e_init, rmse=cur,
        init=best_name, seed=int(seed), n_samples=int(n_samples), extra={"objective_evals": counter["evals"], **extra},
    )
    _keep(cg, cache)
    bar.close(evaluations=cg.nfe)
    return cg


def _keep(cg: CalibratedGrid, cache: str | os.PathLike[str] | CalibrationCache | None) -> None:
    if isinstance(cache, CalibrationCache):
        cache.store(cg)
    elif cache is not None:
        cg.save(cache)


def _pattern_search(
    objective: Callable[[Tensor], float], theta: Tensor, budget: int, counter: dict[str, int], step0: float
) -> tuple[Tensor, float]:
    """Derivative-free coordinate pattern search: try +-step on each coordinate, grow a step that
    helped (x1.5), shrink one that did not (x0.5); stop when every step is below 0.01 or after
    ``budget`` objective evaluations in all (``counter["evals"]``)."""
    cur = objective(theta)
    step = torch.full_like(theta, step0)
    while counter["evals"] < budget and float(step.max()) > 0.01:
        improved = False
        for j in range(theta.numel()):
            for sgn in (1.0, -1.0):
                trial = theta.clone()
                trial[j] += sgn * step[j]
                e = objective(trial)
                if e < cur:
                    theta, cur, improved = trial, e, True
                    step[j] *= 1.5
                    break
            else:
                step[j] *= 0.5
            if counter["evals"] >= budget:
                break
        if not improved and float(step.max()) <= 0.01:
            break
    return theta, cur


def calibration_options(value: Any) -> tuple[dict[str, Any] | None, Any]:
    """``calibrate=`` of :func:`scoresolve.sample` as ``(options of the calibration or None for none, cache)``."""
    if value is None or value is False:
        return None, None
    if value is True:
        return {}, None
    if isinstance(value, dict):
        opts = dict(value)
        return opts, opts.pop("cache", None)
    if isinstance(value, (str, os.PathLike, CalibrationCache)):
        return {}, value
    raise TypeError(f"calibrate must be a bool, a cache file path or a dict of calibrate_grid options, got "
                    f"{type(value).__name__}")


def grid_calibration(value: Any, budget: Any = None) -> Callable[..., Any] | None:
    """``calibrate=`` of :func:`scoresolve.sample` for a named solver: :func:`calibrated_run` with its options, or
    ``None`` (no calibration)."""
    if budget is not None:
        raise ValueError("calibration_budget= bounds the calibration of solver='auto'; pass solver='auto'")
    options, cache = calibration_options(value)
    return None if options is None else partial(calibrated_run, options=options, cache=cache)


def calibrated_run(score_fn: Callable[[Tensor, Tensor], Tensor], model: Any, sde: SDE, solver: GridSolver, nfe: int,
                   final: str, gaussian_prior: Any, shape: Sequence[int], eps: float, dtype: torch.dtype,
                   progress: bool | None, info: dict[str, Any], *, options: dict[str, Any],
                   cache: Any) -> tuple[GridSolver, str, Tensor, Any]:
    """A calibration as :func:`scoresolve.sample` runs one: ``(solver, final, grid, gaussian_prior)`` with the grid
    from :func:`calibrate_grid` (cache ``cache``, else :data:`DEFAULT_CACHE`) and its cost in ``info["calibration"]``
    (a cached grid costs the 3 evaluations of the model's signature); an estimated Gaussian fit replaces
    ``"estimate"``."""
    cg = calibrate_grid(score_fn, sde, solver, nfe, final=final, gaussian_prior=gaussian_prior, shape=shape, eps=eps,
                        dtype=dtype, cache=DEFAULT_CACHE if cache is None else cache, progress=progress, **options)
    info["calibration"] = {"nfe": 3 if cg.cached else cg.nfe, "seconds": 0.0 if cg.cached else cg.seconds,
                           "cached": cg.cached, "rmse_initial": cg.rmse_initial, "rmse": cg.rmse, "init": cg.init}
    return solver, final, cg.grid, cg.gaussian_fit() if isinstance(gaussian_prior, str) else gaussian_prior


def _fingerprint(solver: Any, final: str, metric: str, fit: Any, options: dict[str, Any]) -> dict[str, Any]:
    """What a calibrated grid was made for, besides the model, SDE, budget, eps and shape (JSON-friendly)."""
    gp = fit if fit is None or isinstance(fit, str) else as_gaussian_fit(fit).digest
    cfg = {**solver.config(), "final": final, "calibrate_metric": metric, "gaussian_prior": gp,
           "options": {k: options[k] for k in sorted(options)}}
    return json.loads(json.dumps(cfg, default=str))


# --- GITS ---------------------------------------------------------------------------------------------
def gits_grid(
    model: Callable[[Tensor, Tensor], Tensor] | ScoreModel,
    sde: SDE,
    steps: int,
    *,
    shape: Sequence[int] | None = None,
    eps: float | None = None,
    n_samples: int = 256,
    fine: int = 100,
    seed: int = 0,
) -> tuple[Tensor, dict[str, Any]]:
    r"""GITS-style grid (Chen et al. 2024, arXiv:2405.11326): teacher trajectories on ``fine``
    log-SNR points, the cost of every one-step Euler (DDIM) jump :math:`i \to j` between teacher
    states, :math:`c_{ij} = \mathrm{mean}\,\|y_i + (\tilde\sigma_j-\tilde\sigma_i)\hat\varepsilon_i -
    y_j\|^2`, and dynamic programming for the ``steps``-jump path from ``T`` to ``eps`` of least total
    cost. Returns ``(grid, info)`` with the cost in evaluations and seconds. The grid is chosen for
    Euler jumps; for multistep solvers :func:`calibrate_grid` is better."""
    start = time.perf_counter()
    if shape is None:
        if isinstance(model, ScoreModel) and model.sample_shape is not None:
            shape = model.sample_shape
        else:
            raise ValueError("shape= is required for a plain callable model")
    check_int(steps, "steps", max=fine)
    fn = cpu_facing(as_score_fn(model), model_device(model))  # states stay on the CPU
    eps_ = sde.default_eps if eps is None else float(eps)
    g = torch.Generator().manual_seed(int(seed) + _CALIB_STREAM)
    x = torch.randn((n_samples, *shape), generator=g, dtype=torch.float64) * sde.prior_std
    tgrid = make_grid("log_snr", sde, fine, eps_)
    # teacher trajectory: 4 Adams sub-steps per fine interval
    sub = make_grid("log_snr", sde, 4 * fine, eps_)
    traj = []

    def grab(step: int, t: Tensor, x: Tensor, x_mean: Tensor) -> None:
        if (step + 1) % 4 == 0:
            traj.append(x.clone())

    with torch.no_grad():
        _, t_nfe = _run(fn, sde, IPNDM(order=4), sub, x, callback=grab)
        ys = [x] + traj  # states at tgrid (x-space)
        s = sde.sigma(tgrid)
        a = sde.alpha(tgrid)
        Y = torch.stack([ys[i] / a[i] for i in range(fine + 1)])  # (fine+1, B, ...)
        eps_hat = []
        for i in range(fine):
            ti = torch.full((n_samples,), float(tgrid[i]), dtype=torch.float64)
            sc = fn(ys[i], ti).to(torch.float64)
            eps_hat.append(-(sde.marginal_std(ti)[0]) * sc)
        cost = torch.full((fine + 1, fine + 1), math.inf, dtype=torch.float64)
        for i in range(fine):
            ds = (s[i + 1 :] - s[i]).reshape(-1, *([1] * (Y.ndim - 1)))
            pred = Y[i][None] + ds * eps_hat[i][None]
            cost[i, i + 1 :] = (pred - Y[i + 1 :]).pow(2).reshape(fine - i, n_samples, -1).mean(dim=(1, 2))
    # DP: best[k][j] = least cost to reach j in k jumps
    best = torch.full((steps + 1, fine + 1), math.inf, dtype=torch.float64)
    arg = torch.zeros((steps + 1, fine + 1), dtype=torch.long)
    best[0, 0] = 0.0
    for k in range(1, steps + 1):
        tot = best[k - 1][:, None] + cost  # from i to j
        best[k], arg[k] = tot.min(dim=0)
    path = [fine]
    for k in range(steps, 0, -1):
        path.append(int(arg[k, path[-1]]))
    path = path[::-1]
    grid = tgrid[path].clone()
    info = {"nfe": t_nfe + fine, "seconds": time.perf_counter() - start, "cost": float(best[steps, fine])}
    return grid, info
