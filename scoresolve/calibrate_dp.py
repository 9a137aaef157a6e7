r"""Grid calibration that scales to networks: teacher trajectories once, then a dynamic programme.

GITS-style (Chen et al. 2024, arXiv:2405.11326) with the *actual solver's* step as the local cost. The teacher
(4th-order Adams on ``fine * sub`` Karras steps, :func:`teacher_trajectories`) runs **once** on a few dozen prior
draws, keeping states and scores at ``fine + 1`` nodes. The cost of a step :math:`i\to j` after :math:`p\to i` is
the solver's own step from the teacher state with its history, scores read from the teacher (no model call),
weighted by the share of the error that reaches the end (:func:`local_costs`, :func:`end_weights`); a dynamic
programme gives the least-cost ``n``-interval path (:func:`dp_path`, :math:`O(nM^3)`). Every candidate (solver,
grid), fitted or fixed, then runs with the model on **held-out** draws and is scored by how far its samples'
distribution is from the teacher's endpoints (:func:`moment_mismatch`). The uncalibrated recipe (``default``) is
kept unless a candidate beats it there by more than ``z`` jackknife standard errors of the paired difference
(:func:`paired_margin`): a choice within the criterion's noise is no choice (:func:`calibrate_trajectory`). Cost:
``fine * sub + 1`` batched evaluations plus the held-out runs, within ``budget``. Results are cached to a file keyed
by the model's **weights** (:func:`cache_path`).
Details and measurements: docs/fast_samplers.md, "Trajectory calibration on networks".
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._util import check_int
from .calibrate import _CALIB_STREAM, CalibratedGrid, CalibrationMismatchError, _run
from .digest import content_digest
from .models import cpu_facing, model_device
from .noise import NoiseSource
from .progress import Progress
from .sde import SDE
from .solvers.base import CountedScore, GridSolver, Interval, SolveContext
from .solvers.grids import make_grid
from .solvers.ipndm import IPNDM
from .solvers.loop import plan

__all__ = ["TeacherTrajectories", "teacher_trajectories", "local_costs", "end_weights", "dp_path",
           "calibrate_trajectory", "Candidate", "check_budget", "moment_mismatch", "paired_margin", "choose",
           "cache_dir", "cache_key", "cache_path", "CACHE_ENV"]

#: environment variable naming the folder of calibration files (default ``~/.cache/scoresolve/calibration``)
CACHE_ENV = "SCORESOLVE_CALIBRATION_CACHE"
#: the fixed grids every candidate also runs on held-out draws (the analytic one needs no model call)
FIXED_GRIDS = ("karras", "log_snr", "analytic")
#: powers of the end weights the local costs are weighted by; each gives a fitted grid, chosen on held-out draws
POWERS = (0.5, 1.0)


@dataclass(frozen=True)
class Candidate:
    """A solver the calibration may choose, with how its run ends (``final``)."""

    name: str
    solver: GridSolver
    final: str

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **self.solver.config(), "final": self.final}


@dataclass
class TeacherTrajectories:
    """Teacher states ``ys`` (EDM variables :math:`y = x/\\alpha`, ``(M + 1, B, *shape)``) and x-space scores at
    the ``M + 1`` nodes ``times`` (``T`` to ``eps``), the Tweedie endpoint ``end`` and the cost."""

    times: Tensor
    ys: Tensor
    scores: Tensor
    end: Tensor
    nfe: int
    seconds: float


def teacher_trajectories(fn: Callable[[Tensor, Tensor], Tensor], sde: SDE, x_T: Tensor, eps: float, *,
                         fine: int = 32, sub: int = 2, spacing: str = "log_snr",
                         tick: Callable[[], None] | None = None) -> TeacherTrajectories:
    """One run of 4th-order Adams on ``fine * sub`` log-SNR steps from ``x_T`` (then the Tweedie step),
    keeping the state and score at every ``sub``-th node. ``fine * sub + 1`` batched evaluations."""
    start = time.perf_counter()
    sub_grid = make_grid(spacing, sde, fine * sub, eps)
    times = sub_grid[::sub].clone()
    scores: list[Tensor] = []
    xs: list[Tensor] = [x_T]
    calls = {"k": 0}

    def recorder(x: Tensor, t: Tensor) -> Tensor:
        out = fn(x, t)
        if calls["k"] % sub == 0:
            scores.append(out.detach().clone())
        calls["k"] += 1
        if tick is not None:
            tick()
        return out

    def grab(step: int, t: Tensor, x: Tensor, x_mean: Tensor) -> None:
        if (step + 1) % sub == 0:
            xs.append(x.detach().clone())

    end, nfe = _run(recorder, sde, IPNDM(order=4), sub_grid, x_T, final="tweedie", callback=grab)
    alpha = sde.alpha(times).reshape(-1, *([1] * x_T.ndim))
    ys = torch.stack(xs).double() / alpha
    return TeacherTrajectories(times, ys, torch.stack(scores).double(), end, nfe, time.perf_counter() - start)


def local_costs(solver: GridSolver, sde: SDE, tr: TeacherTrajectories, rows: int) -> tuple[Tensor, Tensor]:
    r"""``(c0, c)``: ``c0[j]`` the mean squared error of the solver's first step ``0 -> j`` from the teacher state,
    ``c[p, i, j]`` of its step ``i -> j`` with the history of a step ``p -> i`` (both from teacher states, scores
    read from the teacher: no model call); ``inf`` where not ``p < i < j``. Uses the first ``rows`` draws."""
    t = tr.times.tolist()
    m = len(t) - 1
    a = sde.alpha(tr.times).tolist()
    s = sde.sigma(tr.times).tolist()
    index = {v: k for k, v in enumerate(t)}
    scores = tr.scores[:, :rows]
    ys = tr.ys[:, :rows]

    def lookup(x: Tensor, tt: Tensor) -> Tensor:
        return scores[index[float(tt[0])]]

    ctx = SolveContext(score=CountedScore(lookup, check_every=10**9), sde=sde, grid=tr.times, noise=NoiseSource(),
                       t_end=t[-1], xdtype=torch.float64, wdtype=torch.float64)

    def iv(i: int, j: int) -> Interval:
        return Interval(0 if i == 0 else 1, 10**6, t[i], t[j], a[i], a[j], s[i], s[j], -math.log(s[i]),
                        -math.log(s[j]))

    def err(y: Tensor, j: int) -> float:
        return float((y - ys[j]).pow(2).mean())

    c0 = torch.full((m + 1,), math.inf, dtype=torch.float64)
    c = torch.full((m + 1, m + 1, m + 1), math.inf, dtype=torch.float64)
    with torch.no_grad():
        first = {}
        for j in range(1, m + 1):
            st = solver.step(ctx, ys[0], iv(0, j), None)
            c0[j] = err(st.x, j)
            first[j] = st.state
        for p in range(0, m - 1):
            for i in range(p + 1, m):
                state = first[i] if p == 0 else solver.step(ctx, ys[p], iv(p, i), None).state
                for j in range(i + 1, m + 1):
                    c[p, i, j] = err(solver.step(ctx, ys[i], iv(i, j), state).x, j)
    return c0, c


def end_weights(sde: SDE, tr: TeacherTrajectories, rows: int) -> Tensor:
    r"""How much of an error at node ``j`` reaches the end: :math:`c/(c + \tilde\sigma_j^2)` for squared errors
    (exact for Gaussian data of per-element variance :math:`c`, estimated from the teacher's endpoints)."""
    var = float(tr.end[:rows].double().var(dim=0).mean())
    s = sde.sigma(tr.times)
    return var / (var + s * s)


def dp_path(c0: Tensor, c: Tensor, n: int) -> list[int]:
    """The nodes ``0 = k_0 < ... < k_n = M`` of least total cost ``c0[k_1] + sum c[k_{r-1}, k_r, k_{r+1}]``."""
    m = c0.numel() - 1
    if not 1 <= n <= m:
        raise ValueError(f"a path of {n} intervals needs 1..{m} (the fine grid's intervals)")
    if n == 1:
        return [0, m]
    k = torch.arange(m + 1)
    ok = (k[:, None, None] < k[None, :, None]) & (k[None, :, None] < k[None, None, :])  # p < i < j
    c = torch.where(ok, c, torch.full_like(c, math.inf))
    best = torch.full((m + 1, m + 1), math.inf, dtype=torch.float64)  # best[i, j]: last two nodes i, j
    best[0, 1:] = c0[1:]
    back = []
    for _ in range(n - 1):
        tot = best[:, :, None] + c  # [p, i, j]
        new, arg = tot.min(dim=0)  # [i, j]
        back.append(arg)
        best = new
    i = int(torch.argmin(best[:, m]))
    path = [m, i]
    for arg in reversed(back):
        p = int(arg[path[-1], path[-2]])
        path.append(p)
    return path[::-1]


def moment_mismatch(x: Tensor, ref: Tensor, directions: int = 64, seed: int = 0) -> float:
    r"""How far the distribution of the rows of ``x`` is from that of ``ref`` (same count, e.g. paired draws):
    :math:`\overline{(\mu_v(x)-\mu_v(r))^2 + (s_v(x)-s_v(r))^2}` over the directions :math:`v`: every coordinate
    and ``directions`` random unit vectors (seeded), :math:`\mu_v, s_v` the mean and standard deviation of the
    projections (the Fréchet distance of 1-D Gaussians, averaged; a sliced one). Unlike the paired RMSE it
    penalises samples that are too smooth: shrinking toward the conditional mean lowers the RMSE."""
    x2, r2 = x.double().flatten(1), ref.double().flatten(1)
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(x2.shape[1], directions, generator=g, dtype=torch.float64).to(x2.device)
    v = v / v.norm(dim=0)
    terms = [((a.mean(0) - b.mean(0)).pow(2) + (a.std(0) - b.std(0)).pow(2)) for a, b in ((x2, r2), (x2 @ v, r2 @ v))]
    return float(torch.cat(terms).mean())


def paired_margin(x: Tensor, y: Tensor, ref: Tensor) -> tuple[float, float]:
    r"""``(d, se)``: :math:`d` = ``moment_mismatch(x, ref) - moment_mismatch(y, ref)`` (rows paired: the same prior
    draw) and its jackknife standard error over the ``n`` draws,
    :math:`\sqrt{(n-1)/n\,\sum_i (d_{(i)} - \bar d_{(\cdot)})^2}`, :math:`d_{(i)}` without draw ``i``
    (Efron & Stein 1981). ``2n + 2`` criterion evaluations, no model call."""
    n = x.shape[0]
    if not (y.shape[0] == ref.shape[0] == n and n >= 3):
        raise ValueError(f"paired_margin needs the same number (>= 3) of paired rows, got {n}, {y.shape[0]}, "
                         f"{ref.shape[0]}")
    d = moment_mismatch(x, ref) - moment_mismatch(y, ref)
    keep = torch.ones(n, dtype=torch.bool)
    loo = []
    for i in range(n):
        keep[i] = False
        loo.append(moment_mismatch(x[keep], ref[keep]) - moment_mismatch(y[keep], ref[keep]))
        keep[i] = True
    t = torch.tensor(loo, dtype=torch.float64)
    return d, float(((n - 1) / n * (t - t.mean()).pow(2).sum()).sqrt())


def choose(scores: dict[str, float], default: str | None, margin: Callable[[str], tuple[float, float]],
           z: float = 2.0) -> tuple[str, dict[str, Any]]:
    """The label to run: ``default`` unless some candidate's ``margin(label) = (d, se)`` against it has
    ``d < -z * se`` (better by more than ``z`` paired standard errors); of those, the least score. Without a
    ``default`` among ``scores``, the least score. Also the record of the test for ``info``."""
    best = min(scores, key=lambda k: scores[k])
    if default is None or default not in scores:
        return best, {"default": default, "rule": "least criterion (no default among the candidates)"}
    if not math.isfinite(scores[default]):
        return best, {"default": default, "rule": "the default failed on the held-out draws"}
    tested = {k: margin(k) for k in sorted(scores, key=lambda k: scores[k])
              if k != default and scores[k] < scores[default] and math.isfinite(scores[k])}
    better = [k for k, (d, se) in tested.items() if d < -z * se]
    pick = better[0] if better else default
    d, se = tested.get(best, (0.0, 0.0))
    return pick, {"default": default, "z": z, "rule": f"the default unless better by more than {z:g} paired SE",
                  "best": best, "margin": d, "se": se, "replaced": pick != default,
                  "margins": {k: [v[0], v[1]] for k, v in tested.items()}}


def check_budget(value: Any) -> tuple[float | None, int | None]:
    """``calibration_budget=`` as ``(seconds, evaluations)``: a number (seconds) or a dict with ``"seconds"``
    and/or ``"evaluations"`` (batched model calls)."""
    if value is None:
        return None, None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value), None
    if isinstance(value, dict) and value and set(value) <= {"seconds", "evaluations"}:
        sec, ev = value.get("seconds"), value.get("evaluations")
        ok = (sec is None or (isinstance(sec, (int, float)) and sec > 0)) and (
            ev is None or (isinstance(ev, int) and not isinstance(ev, bool) and ev > 0))
        if ok:
            return (None if sec is None else float(sec)), ev
    raise ValueError("calibration_budget must be a positive number of seconds or a dict with 'seconds' and/or "
                     f"'evaluations' (batched model calls), got {value!r}")


def cache_dir() -> Path:
    """The folder of calibration files: ``$SCORESOLVE_CALIBRATION_CACHE``, else ``~/.cache/scoresolve/calibration``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "scoresolve" / "calibration"


def cache_key(model: Any, key: dict[str, Any]) -> str | None:
    """SHA-256 of ``model``'s weights and ``key`` (SDE, candidates, budget, eps, shape, options); ``None`` when the
    model holds no weights to key it by."""
    digest, has_weights = content_digest(model)
    if not has_weights:
        return None
    return hashlib.sha256((digest + json.dumps(key, sort_keys=True, default=str)).encode()).hexdigest()


def cache_path(digest: str | None) -> Path | None:
    """The calibration file in :func:`cache_dir` for a :func:`cache_key` digest (``None``: no weights to key it by)."""
    return None if digest is None else cache_dir() / f"grid-{digest[:32]}.json"


@dataclass
class _Plan:
    n_fit: int
    n_holdout: int
    fine: int
    sub: int
    fixed: tuple[str, ...] = field(default=FIXED_GRIDS)

    def evaluations(self, runs: int, nfe: int) -> int:
        return self.fine * self.sub + 1 + runs * nfe


def _plans(n_fit: int, n_holdout: int, fine: int, sub: int) -> list[_Plan]:
    """From the requested plan down to the smallest one worth running."""
    out = [_Plan(n_fit, n_holdout, fine, sub)]
    while out[-1].n_fit > 16 or out[-1].fine > 24:
        p = out[-1]
        out.append(_Plan(max(16, p.n_fit // 2), max(16, p.n_holdout // 2), max(24, p.fine * 3 // 4), p.sub))
    out.append(replace(out[-1], fixed=()))
    return out


def calibrate_trajectory(
    model: Any,
    fn: Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    candidates: Sequence[Candidate],
    nfe: int,
    *,
    shape: Sequence[int],
    eps: float,
    dtype: torch.dtype = torch.float32,
    n_fit: int = 48,
    n_holdout: int = 24,
    fine: int = 32,
    sub: int = 2,
    seed: int = 0,
    budget: Any = 60.0,
    cache: bool | str | os.PathLike[str] = True,
    progress: bool | None = None,
    default: str | None = None,
    z: float = 2.0,
    data_range: tuple[float, float] | None = None,
) -> tuple[CalibratedGrid | None, dict[str, Any]]:
    """Fit a grid per candidate from one teacher run, choose on held-out draws (module docstring).

    ``default`` (``"<candidate>@<fixed grid>"``, the uncalibrated recipe) is kept unless another candidate's
    ``extra["heldout_moments"]`` (:func:`moment_mismatch`) is below it by more than ``z`` paired standard errors
    (:func:`choose`; ``extra["choice"]`` records the test). With ``data_range`` (the model's ``(low, high)``) the
    criterion compares samples clamped to it, as they are used. Returns ``(grid, info)``: ``grid`` a
    :class:`~scoresolve.calibrate.CalibratedGrid` whose ``solver`` is the chosen candidate's config and whose
    ``extra["heldout_rmse"]`` holds every candidate's held-out RMSE; ``None`` when the budget cannot pay for the
    smallest plan (``info["fallback"]`` says why). ``info`` also has the cost
    (``nfe``: batched model calls; ``seconds``, ``cpu_seconds``)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn = cpu_facing(fn, model_device(model))  # the states stay on the CPU
    nfe = check_int(nfe, "nfe")
    seconds, evaluations = check_budget(budget)
    shape = [int(v) for v in shape]
    key = {"sde": sde.config(), "candidates": [c.config() for c in candidates], "nfe": int(nfe), "eps": float(eps),
           "shape": shape, "options": {"n_fit": n_fit, "n_holdout": n_holdout, "fine": fine, "sub": sub,
                                       "seed": int(seed), "dtype": str(dtype), "method": "trajectory-dp",
                                       "choice": "moments-se", "default": default, "z": float(z),
                                       "data_range": None if data_range is None else [float(v) for v in data_range],
                                       "fixed": list(FIXED_GRIDS)}}
    digest = cache_key(model, key)
    own_file = isinstance(cache, (str, os.PathLike))
    path = Path(cache) if own_file else (cache_path(digest) if cache else None)
    if path is not None and path.is_file():
        cg = CalibratedGrid.load(path)
        if own_file and cg.extra.get("key") != digest:  # the caller's file: refused when made for anything else
            raise CalibrationMismatchError(f"{path} holds a grid calibrated for other weights, SDE, budget or "
                                           "options; delete it or pass another path to recalibrate")
        return cg, {"nfe": 0, "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
                    "cached": True, "file": str(path)}
    ns = {c.name: plan(c.solver, nfe, c.final) for c in candidates}
    # the cost of one batched evaluation at the full batch, to size the plan within the budget
    g = torch.Generator().manual_seed(int(seed) + _CALIB_STREAM)
    plans = _plans(n_fit, n_holdout, fine, sub)
    x_all = torch.randn((plans[0].n_fit + plans[0].n_holdout, *shape), generator=g, dtype=torch.float64)
    x_all = (x_all * sde.prior_std).to(dtype)
    tT = torch.full((x_all.shape[0],), sde.T, dtype=dtype)
    with torch.no_grad():
        fn(x_all, tT)  # the first call of a network pays for warm-up; the second is timed
        t0 = time.perf_counter()
        fn(x_all, tT)
    per_row = (time.perf_counter() - t0) / x_all.shape[0]
    spent = 2
    chosen, est, need = None, math.inf, 0
    for p in plans:
        runs = len(candidates) * (len(POWERS) + len(p.fixed))
        est = per_row * ((p.n_fit + p.n_holdout) * (p.fine * p.sub + 1) + p.n_holdout * runs * nfe)
        est += 2e-8 * len(candidates) * p.n_fit * math.prod(shape) * p.fine**3 / 6  # the local costs (arithmetic)
        need = spent + p.evaluations(runs, nfe)
        fits = (seconds is None or est <= seconds) and (evaluations is None or need <= evaluations)
        if fits and max(ns.values()) <= p.fine:
            chosen = p
            break
    if chosen is None:
        reason = (f"calibration_budget={budget!r} cannot pay for the smallest calibration (about {est:.1f} s, "
                  f"{need} evaluations)")
        return None, {"nfe": spent, "seconds": time.perf_counter() - start, "cached": False, "fallback": reason}
    p = chosen
    x_T = x_all[: p.n_fit + p.n_holdout]
    runs = len(candidates) * (len(POWERS) + len(p.fixed))
    bar = Progress(p.fine * p.sub + 1 + runs * nfe, f"calibrating the grid for {nfe} NFE", unit="evaluation",
                   progress=progress)
    tr = teacher_trajectories(fn, sde, x_T, eps, fine=p.fine, sub=p.sub, spacing="karras", tick=lambda: bar.update(1))
    spent += tr.nfe
    x_h, end_h = x_T[p.n_fit:], tr.end[p.n_fit:].double()
    lo, hi = (-math.inf, math.inf) if data_range is None else (float(data_range[0]), float(data_range[1]))
    end_c = end_h.clamp(lo, hi)
    table: dict[str, float] = {}
    moments: dict[str, float] = {}
    outs: dict[str, Tensor] = {}
    grids: dict[str, Tensor] = {}
    w = end_weights(sde, tr, p.n_fit)
    for cand in candidates:  # the fixed grids first: the budget's cut (if any) falls on the fitted ones
        for gname in p.fixed:
            grids[f"{cand.name}@{gname}"] = make_grid(gname, sde, ns[cand.name], eps)
    for cand in candidates:
        c0, c = local_costs(cand.solver, sde, tr, p.n_fit)
        for power in POWERS:
            wp = w.pow(power)
            nodes = dp_path(c0 * wp, c * wp, ns[cand.name])
            grids[f"{cand.name}@fitted{power:g}"] = tr.times[nodes].clone()
    if default is not None and default.split("@")[0] in ns:  # the default runs first, whatever the plan and budget
        name, gname = default.split("@", 1)
        grids = {default: grids.get(default, make_grid(gname, sde, ns[name], eps)), **grids}
    by_name = {c.name: c for c in candidates}
    cut, last = [], 0.0
    for label, grid in grids.items():
        if seconds is not None and table and time.perf_counter() - start + last > seconds:
            cut.append(label)  # the next run would end over the budget: the remaining candidates are not run
            continue
        cand = by_name[label.split("@")[0]]
        t_run = time.perf_counter()
        try:
            out, k = _run(_ticking(fn, bar), sde, cand.solver, grid, x_h, cand.final)
            outs[label] = out.double().clamp(lo, hi)
            table[label] = float((out.double() - end_h).pow(2).mean().sqrt())
            moments[label] = moment_mismatch(outs[label], end_c)
        except FloatingPointError:
            k, table[label], moments[label] = nfe, math.inf, math.inf
        spent += k
        last = time.perf_counter() - t_run
    best, test = choose(moments, default, lambda k: paired_margin(outs[k], outs[default], end_c), z)
    cand = by_name[best.split("@")[0]]
    seconds_used = time.perf_counter() - start
    bar.close(evaluations=spent)
    fitted_best = min((v for k, v in table.items() if "@fitted" in k), default=math.inf)
    cg = CalibratedGrid(
        times=grids[best].tolist(), steps=int(nfe), eps=float(eps), sde=sde.config(), solver=cand.config(),
        shape=shape, signature=[], nfe=spent, seconds=seconds_used, rmse_initial=fitted_best, rmse=table[best],
        init=best, seed=int(seed), n_samples=p.n_fit,
        extra={"method": "trajectory-dp", "heldout_rmse": table, "heldout_moments": moments, "n_holdout": p.n_holdout,
               "fine": p.fine, "sub": p.sub, "teacher_nfe": tr.nfe, "teacher_seconds": tr.seconds, "key": digest,
               "not_run": cut, "choice": test},
    )
    if path is not None:
        cg.save(path)
    return cg, {"nfe": spent, "seconds": seconds_used, "cpu_seconds": time.process_time() - cpu, "cached": False,
                "file": None if path is None else str(path)}


def _ticking(fn: Callable[[Tensor, Tensor], Tensor], bar: Progress) -> Callable[[Tensor, Tensor], Tensor]:
    def wrapped(x: Tensor, t: Tensor) -> Tensor:
        bar.update(1)
        return fn(x, t)

    return wrapped
