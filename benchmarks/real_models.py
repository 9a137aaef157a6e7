#!/usr/bin/env python
r"""Few-step samplers on trained networks, against a converged sampler from the same prior noise.

Models (``--model``, comma-separated; offline):

- ``digits``: the bundled 8×8 digits network (VP, ε);
- ``mnist``: the bundled 28×28 MNIST network (VP, ε; :mod:`scoresolve.train.bundled_mnist`);
- ``pulfer``: Brian Pulfer's MIT-licensed MNIST DDPM (:mod:`scoresolve.adapters.pulfer`), read from
  ``--pulfer PATH`` or ``$SCORESOLVE_PULFER_DDPM``; skipped with a message when neither names a file;
- a scoresolve checkpoint path (or anything :func:`scoresolve.io.load` accepts), or a Pulfer ``.pt`` file.

Metric: the Fréchet distance (FD) between Gaussians fitted to the 64-D penultimate features of the
bundled classifier for the image size (8×8: :func:`~scoresolve.metrics.classifier.load_classifier`
``"digits"``, against the 359 held-out digits; 28×28: ``"mnist"``, against the 2,000 held-out MNIST
images, whose feature moments ship with the classifier), samples clamped to ``[-1, 1]``. For each model,
solver, NFE budget and noise seed the benchmark reports

- the **teacher ratio** ``FD(samples) / FD(teacher samples)``, where the teacher starts from the *same
  prior noise*: for deterministic networks the probability-flow ODE solved by dopri5 at
  ``rtol = atol = 1e-5`` (torchdiffeq) followed by the Tweedie step; for ``pulfer`` (whose deterministic
  samples are blank images: only clipped ancestral sampling gives digits) its own 1000-step DDPM
  (ancestral sampling on the 1000 trained timesteps, :math:`\hat x_0` clipped to ``[-1, 1]``), and only
  stochastic samplers with ``clip_x0`` are run on it;
- the **paired RMSE** (root mean square over pixels and samples) against the teacher's samples, for
  deterministic samplers on deterministic networks (a stochastic sampler's distance to one ODE solution
  measures its noise, not its error: left empty);
- the **wall time of calibration and of sampling, separately** (calibration: the grid fit a solver
  reports in ``SampleResult.info["calibration"]``, 0 for the others; ``auto`` runs with
  ``calibrate=False`` unless ``--calibrate``).

The teacher's samples are cached per (model weights' sha256, teacher, noise seed, n) in ``--cache``
(default ``<out>/teacher_cache/``): a rerun does not recompute them. Budgets are spent as in
``benchmarks/nfe_vs_fid.py`` (whose planning and peer runners this script reuses): a fixed-grid solver
runs the largest ``steps`` whose declared NFE fits the budget, and the NFE counted is reported. The peers
(k-diffusion, diffusers) start from the same prior noise as scoresolve's solvers.

Outputs in ``--out`` (default ``bench_out/real_models/``): ``results.json``, ``results.md`` and one PNG
per model (teacher ratio against NFE, mean over seeds).

Examples::

    python benchmarks/real_models.py --quick                       # < 3 minutes
    python benchmarks/real_models.py --full --pulfer PATH/pulfer_ddpm_mnist.pt
    python benchmarks/real_models.py --model runs/x/model.safetensors --solvers dpmpp_2m,auto --nfe 5,10
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BenchError,
    machine_info,
    markdown_table,
    plot_metric_vs_nfe,
    prepare_out_dir,
    run_cli,
    versions,
    write_json,
    write_text,
)
from nfe_vs_fid import (  # noqa: E402
    KDIFF_STOCHASTIC,
    Problem,
    _parse_ints,
    _sample_ours,
    _split_specs,
    check_solver_names,
    execute,
    on_device,
    parse_solver_spec,
    plan_runs,
)

from scoresolve.metrics import frechet_distance, gaussian_moments  # noqa: E402
from scoresolve.progress import Progress  # noqa: E402

NAME = "real_models"
DEFAULT_MODELS = ("digits", "mnist", "pulfer")
QUICK_MODELS = ("digits", "mnist")
PULFER_ENV = "SCORESOLVE_PULFER_DDPM"
NFE, FULL_NFE, QUICK_NFE = (5, 10, 20), (5, 10, 20, 50), (5, 10)
STOCHASTIC_NFE, QUICK_STOCHASTIC_NFE = (20, 50), (20,)
N, QUICK_N = 1000, 64
SEEDS, QUICK_SEEDS = 3, 1
TEACHER_ODE = {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5}
#: deterministic solvers on deterministic networks (ours, then peers); the grid variants are the default-grid
#: comparisons of the few-step issue (Karras and log-SNR grids for iPNDM and DPM-Solver++(2M))
SOLVERS = ("dpmpp_2m", "dpmpp_2m[grid=karras]", "dpmpp_2m[grid=log_snr]", "ipndm", "ipndm[grid=karras]",
           "ipndm[grid=log_snr]", "unipc", "dpmpp_3m", "heun_edm", "auto", "k_diffusion:dpmpp_2m",
           "k_diffusion:lms", "k_diffusion:heun", "diffusers:dpmsolver_multistep", "diffusers:unipc",
           "diffusers:deis")
QUICK_SOLVERS = ("dpmpp_2m", "ipndm", "auto", "k_diffusion:dpmpp_2m", "diffusers:dpmsolver_multistep")
#: stochastic samplers for networks whose deterministic samples fail (pulfer), all on the clipped model
STOCHASTIC_SOLVERS = ("pc[predictor=ancestral_sampling,corrector=none]", "sde_dpmpp_2m", "sde_dpmpp_3m",
                      "k_diffusion:euler_ancestral", "k_diffusion:dpmpp_2m_sde", "k_diffusion:dpmpp_2s_ancestral")
QUICK_STOCHASTIC_SOLVERS = ("pc[predictor=ancestral_sampling,corrector=none]", "k_diffusion:euler_ancestral")


# --------------------------------------------------------------------------------------------------
# models and their references
# --------------------------------------------------------------------------------------------------


@dataclass
class RealModel:
    """A trained network, how its teacher is run and the feature moments its samples are scored against."""

    name: str
    model: Any
    weights: Path  # hashed for the teacher cache
    stochastic_only: bool
    teacher: tuple[str, dict[str, Any]]  # (solver, options) of the converged / reference sampler
    teacher_label: str
    features: Callable[[Tensor], Tensor]
    ref_mean: Tensor
    ref_cov: Tensor
    ref_description: str


def _classifier_reference(shape: tuple[int, ...]) -> tuple[Callable[[Tensor], Tensor], Tensor, Tensor, str]:
    from scoresolve.metrics.classifier import digits_with_labels, load_classifier, reference_moments
    from scoresolve.metrics.fid import classifier_features

    if shape == (1, 8, 8):
        clf = load_classifier(name="digits")
        mean, cov = gaussian_moments(classifier_features(digits_with_labels("test")[0], classifier=clf))
        desc = "359 held-out 8x8 digits, bundled digits classifier features"
    elif shape == (1, 28, 28):
        clf = load_classifier(name="mnist")
        ref = reference_moments("mnist")
        if ref is None:
            raise BenchError("the bundled MNIST classifier carries no held-out feature moments")
        mean, cov, n_ref = ref
        desc = f"{n_ref} held-out MNIST images, bundled MNIST classifier features"
    else:
        raise BenchError(f"no bundled classifier for sample shape {shape}: the metric needs (1, 8, 8) or (1, 28, 28)")

    def features(x: Tensor) -> Tensor:
        return classifier_features(x.detach().cpu().float().clamp(-1, 1), classifier=clf)

    return features, mean, cov, desc


def _pulfer_path(spec: str, pulfer: str | None) -> Path | None:
    if spec != "pulfer":
        return Path(spec)
    given = pulfer or os.environ.get(PULFER_ENV)
    return Path(given) if given else None


def load_real_model(spec: str, pulfer: str | None = None) -> RealModel:
    """``--model`` entry → :class:`RealModel` (raises :class:`BenchError`, or ``FileNotFoundError`` for an
    absent Pulfer file)."""
    from scoresolve.adapters.pulfer import is_pulfer_state_dict, load_pulfer_ddpm
    from scoresolve.io import BUNDLED, load, torch_load_safe

    path = _pulfer_path(spec, pulfer)
    if spec == "pulfer" and (path is None or not path.is_file()):
        where = f"{path} does not exist" if path is not None else f"neither --pulfer nor ${PULFER_ENV} is set"
        raise FileNotFoundError(f"the Pulfer MNIST DDPM (pulfer_ddpm_mnist.pt, MIT) is not available: {where}")
    is_pulfer = spec == "pulfer" or (
        path is not None and path.suffix in (".pt", ".pth") and path.is_file() and is_pulfer_state_dict(
            torch_load_safe(path)))
    if is_pulfer:
        assert path is not None
        model = load_pulfer_ddpm(path, clip_x0=True)
        trained = model.metadata["time_map"].grid(torch.arange(999, -1, -1))
        teacher = ("pc", {"predictor": "ancestral_sampling", "corrector": "none", "grid": trained})
        label = "1000-step clipped DDPM (ancestral sampling on the trained timesteps)"
        weights, stochastic_only = path, True
    else:
        try:
            model = load(spec)
        except Exception as e:  # noqa: BLE001 - reported as the user's input error
            raise BenchError(f"cannot load --model {spec!r} ({type(e).__name__}: {e}); use digits, mnist, pulfer, "
                             "or a path scoresolve.io.load accepts") from e
        weights = BUNDLED.get(spec, path)
        if weights.is_dir():
            weights = weights / "model.safetensors"
        teacher = ("ode", dict(TEACHER_ODE))
        label = "probability-flow ODE, dopri5 rtol = atol = 1e-5, Tweedie step"
        stochastic_only = False
    shape = tuple(model.sample_shape or ())
    features, mean, cov, desc = _classifier_reference(shape)
    return RealModel(spec, model, weights, stochastic_only, teacher, label, features, mean, cov, desc)


def _digest(path: Path) -> str:
    """sha256 of the weights file (of the name, for a Hub id that is not a local file)."""
    h = hashlib.sha256()
    if not path.is_file():
        h.update(str(path).encode())
        return h.hexdigest()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# the teacher, cached
# --------------------------------------------------------------------------------------------------


def teacher_samples(rm: RealModel, problem: Problem, seed: int, cache: Path, device: str) -> dict[str, Any]:
    """The teacher's samples from the prior noise of ``seed`` (``_sample_ours``'s first draw), from the cache
    file when present. Returns ``{"samples", "nfe", "seconds", "cached", "file"}``."""
    from safetensors.torch import load_file, save_file

    n = problem.shape[0]
    tag = rm.teacher[0] + "_" + "_".join(f"{k}{v}" for k, v in sorted(rm.teacher[1].items()) if k != "grid")
    f = cache / f"{_digest(rm.weights)[:16]}_{tag}_seed{seed}_n{n}.safetensors"
    if f.is_file():
        d = load_file(str(f))
        return {"samples": d["samples"], "nfe": int(d["nfe"]), "seconds": float(d["seconds"]), "cached": True,
                "file": str(f)}
    x, nfe, secs, _ = _sample_ours(problem, rm.teacher[0], dict(rm.teacher[1]), None, seed, device)
    if not torch.isfinite(x).all():
        raise BenchError(f"the teacher of {rm.name} produced NaN/inf samples (seed {seed})")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f.name + ".tmp")
    save_file({"samples": x.detach().cpu().float().contiguous(), "nfe": torch.tensor(nfe),
               "seconds": torch.tensor(secs, dtype=torch.float64)}, str(tmp))
    os.replace(tmp, f)
    return {"samples": x.detach().cpu().float(), "nfe": nfe, "seconds": secs, "cached": False, "file": str(f)}


# --------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------


def _fd(rm: RealModel, x: Tensor) -> float:
    if not torch.isfinite(x).all():
        return math.inf
    return frechet_distance(*gaussian_moments(rm.features(x)), rm.ref_mean, rm.ref_cov)


def _is_stochastic(row: dict[str, Any]) -> bool:
    name = row["solver"].split("[")[0]
    return bool(row.get("stochastic")) or (name.startswith("k_diffusion:") and name.split(":")[1] in KDIFF_STOCHASTIC)


def run_model(rm: RealModel, specs: Sequence[str], budgets: Sequence[int], n: int, seeds: Sequence[int],
              cache: Path, device: str, quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All runs of one model over ``seeds``; returns (rows, reference figures per seed)."""
    current: dict[str, Any] = {}

    def evaluate(x: Tensor) -> dict[str, float]:
        fd = _fd(rm, x)
        out = {"fd": fd, "teacher_ratio": fd / current["fd"]}
        if torch.isfinite(x).all():
            out["rmse"] = float((x.detach().cpu().float() - current["samples"]).pow(2).mean().sqrt())
        return out

    problem = on_device(Problem(name=rm.name, model=rm.model, sde=rm.model.sde, shape=(n, *rm.model.sample_shape),
                                metric_name="teacher_ratio", evaluate=evaluate, score_fn=rm.model), device)
    runs, skipped = _plan(problem, specs, budgets, quick)
    rows: list[dict[str, Any]] = [dict(s, seed=None) for s in skipped]
    refs: dict[str, Any] = {}
    for seed in seeds:
        t = teacher_samples(rm, problem, seed, cache, device)
        current.update(t, fd=_fd(rm, t["samples"]))
        refs[str(seed)] = {"teacher_fd": current["fd"], "teacher_nfe": t["nfe"], "teacher_seconds": t["seconds"],
                           "cached": t["cached"], "file": t["file"]}
        bar = Progress(len(runs), f"{NAME} {rm.name} seed {seed}", unit="run")
        for r in runs:
            bar.update(0, run=f"{r['solver']} @ {r.get('budget')}")
            row = execute(problem, r, seed, device)
            bar.update(1)
            row["seed"] = seed
            cal = row.get("calibration") or {}
            cal_s = float(cal.get("seconds", 0.0)) if isinstance(cal.get("seconds"), (int, float)) else 0.0
            if row.get("seconds") is not None:
                row["calibration_seconds"] = cal_s
                row["sampling_seconds"] = row["seconds"] - cal_s
            if rm.stochastic_only or _is_stochastic(row):
                row.pop("rmse", None)  # a stochastic sampler or teacher: no pairing
            rows.append(row)
        bar.close()
    return rows, refs


def _plan(problem: Problem, specs: Sequence[str], budgets: Sequence[int],
          quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``plan_runs`` per spec, with ``grid=`` taken out of the solver's options (it is an argument of
    ``ss.sample``, not of the solver) and put back into the run's options."""
    runs, skipped = [], []
    for spec in specs:
        name, opts = parse_solver_spec(spec)
        grid = opts.pop("grid", None)
        base = name + ("[" + ",".join(f"{k}={v}" for k, v in opts.items()) + "]" if opts else "")
        r, sk = plan_runs(problem, check_solver_names([base]), budgets, quick)
        for row in r + sk:
            row["solver"] = spec
        if grid is not None:
            for row in r:
                row["options"] = {**(row.get("options") or {}), "grid": grid}
        runs += r
        skipped += sk
    return runs, skipped


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean (and standard deviation over seeds) per (model, solver, budget)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    out = []
    for r in rows:
        if r.get("seed") is None:
            out.append(dict(r))
            continue
        groups.setdefault((r["model"], r["solver"], r.get("budget")), []).append(r)

    def mean(vals: list[float]) -> float | None:
        vals = [v for v in vals if v is not None and math.isfinite(v)]
        return sum(vals) / len(vals) if vals else None

    for (model, solver, budget), rs in groups.items():
        ok = [r for r in rs if r.get("error") is None]
        s: dict[str, Any] = {"model": model, "solver": solver, "budget": budget, "seeds": len(rs),
                             "steps": rs[0].get("steps"), "nfe": mean([r.get("nfe") for r in ok])}
        for k in ("teacher_ratio", "fd", "rmse", "calibration_seconds", "sampling_seconds"):
            s[k] = mean([r.get(k) for r in ok])
        ratios = [r["teacher_ratio"] for r in ok if r.get("teacher_ratio") is not None]
        if len(ratios) > 1:
            m = sum(ratios) / len(ratios)
            s["teacher_ratio_sd"] = math.sqrt(sum((v - m) ** 2 for v in ratios) / (len(ratios) - 1))
        errors = sorted({r["error"] for r in rs if r.get("error")})
        if errors:
            s["error"] = "; ".join(errors)
        out.append(s)
    return out


# --------------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------------

COLUMNS = [("solver", "solver"), ("budget", "budget"), ("steps", "steps"), ("nfe", "NFE"),
           ("teacher_ratio", "FD / teacher FD"), ("teacher_ratio_sd", "sd (seeds)"), ("fd", "FD"),
           ("rmse", "RMSE vs teacher"), ("calibration_seconds", "calibration s"),
           ("sampling_seconds", "sampling s"), ("remark", "note")]


def _sort_key(r: dict[str, Any]) -> tuple:
    return (r.get("budget") or 0, ":" in r["solver"], r["solver"])


def report(models: list[RealModel], summary: list[dict[str, Any]], rows: list[dict[str, Any]],
           refs: dict[str, Any], skipped: list[dict[str, str]], config: dict[str, Any], out: Path,
           plot: bool = True) -> dict[str, Path]:
    m = config["machine"]
    md = ["# Few-step samplers on trained networks", "", f"Command: `{config['command']}`", "",
          f"Machine: {m['processor']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}, device "
          f"{m['device']}; n = {config['n']} samples per run, noise seeds {config['seeds']}; `auto` "
          f"{'with' if config['calibrate'] else 'without'} calibration.", ""]
    files: dict[str, Path] = {}
    for rm in models:
        ref = refs[rm.name]
        fds = [v["teacher_fd"] for v in ref.values()]
        md += [f"## {rm.name}", "",
               f"Teacher: {rm.teacher_label}; its FD against the {rm.ref_description}: "
               + ", ".join(f"{v:.4g}" for v in fds) + " (per seed); teacher NFE "
               + ", ".join(str(v["teacher_nfe"]) for v in ref.values())
               + (" (from the cache)" if all(v["cached"] for v in ref.values()) else "") + ".", ""]
        prow = sorted([dict(r) for r in summary if r["model"] == rm.name], key=_sort_key)
        for r in prow:
            r["remark"] = r.get("skipped") or r.get("error") or ""
        md += [markdown_table(prow, COLUMNS), ""]
        series: dict[str, list[tuple[float, float]]] = {}
        for r in prow:
            if r.get("nfe") and r.get("teacher_ratio") is not None:
                series.setdefault(r["solver"], []).append((float(r["nfe"]), float(r["teacher_ratio"])))
        png = None if not plot else plot_metric_vs_nfe(
            out / f"teacher_ratio_{rm.name if rm.name in DEFAULT_MODELS else 'model'}.png", series,
            ylabel="FD / teacher FD", title=f"{rm.name}, n = {config['n']}", hline=1.0, hline_label="teacher")
        if png is not None:
            files[f"plot_{rm.name}"] = png
            md += [f"![{rm.name}]({png.name})", ""]
    if skipped:
        md += ["## Skipped", ""] + [f"- model `{s['model']}`: {s['reason']}" for s in skipped] + [""]
    files["json"] = write_json(out / "results.json", {
        "benchmark": NAME, "config": config, "teachers": refs, "skipped_models": skipped,
        "summary": summary, "runs": rows})
    files["markdown"] = write_text(out / "results.md", "\n".join(md))
    return files


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="real_models.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Few-step samplers on trained networks: FD / teacher FD, paired RMSE, calibration and "
        "sampling time, scoresolve's solvers beside k-diffusion's and diffusers'.")
    p.add_argument("--model", default=None,
                   help=f"comma-separated: digits, mnist, pulfer, a checkpoint path or a Pulfer .pt file (default "
                   f"{','.join(DEFAULT_MODELS)}; --quick {','.join(QUICK_MODELS)})")
    p.add_argument("--pulfer", default=None, help=f"the Pulfer MNIST DDPM file (default ${PULFER_ENV})")
    p.add_argument("--solvers", default=None,
                   help="comma-separated solvers for deterministic networks: registered names, name[key=value,...], "
                   "k_diffusion:<sampler>, diffusers:<scheduler> (default: a representative set)")
    p.add_argument("--stochastic-solvers", default=None, help="the same for stochastic-only networks (pulfer)")
    p.add_argument("--nfe", default=None, help=f"NFE budgets (default {','.join(map(str, NFE))}; --full "
                   f"{','.join(map(str, FULL_NFE))}; --quick {','.join(map(str, QUICK_NFE))})")
    p.add_argument("--stochastic-nfe", default=None,
                   help=f"NFE budgets on stochastic-only networks (default {','.join(map(str, STOCHASTIC_NFE))})")
    p.add_argument("--n", type=int, default=None, help=f"samples per run (default {N}; --quick {QUICK_N})")
    p.add_argument("--seeds", type=int, default=None, help=f"noise seeds 0..k-1 (default {SEEDS}; --quick 1)")
    p.add_argument("--calibrate", action="store_true", help="let auto calibrate its grid (default: calibrate=False)")
    p.add_argument("--full", action="store_true", help="more budgets")
    p.add_argument("--quick", action="store_true", help="a run under 3 minutes: two models, few solvers, n = 64")
    p.add_argument("--cache", default=None, help="folder of cached teacher samples (default <out>/teacher_cache)")
    p.add_argument("--device", default="cpu", help="torch device for scoresolve's solvers")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", default=None, help=f"output folder (default bench_out/{NAME}/)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plots")
    return p


def _with_auto_option(specs: Sequence[str], calibrate: bool) -> list[str]:
    return [s if calibrate or s.split("[")[0] != "auto" or "calibrate" in s else
            (s[:-1] + ",calibrate=False]" if s.endswith("]") else s + "[calibrate=False]") for s in specs]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns ``{"summary", "rows", "files", "config"}``."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    default_nfe = QUICK_NFE if args.quick else FULL_NFE if args.full else NFE
    budgets = _parse_ints(args.nfe, "nfe") if args.nfe else list(default_nfe)
    s_budgets = _parse_ints(args.stochastic_nfe, "stochastic-nfe") if args.stochastic_nfe else list(
        QUICK_STOCHASTIC_NFE if args.quick else STOCHASTIC_NFE)
    n = args.n if args.n is not None else (QUICK_N if args.quick else N)
    if n < 2:
        raise BenchError(f"--n must be >= 2, got {n}")
    n_seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else SEEDS)
    if n_seeds < 1:
        raise BenchError(f"--seeds must be >= 1, got {n_seeds}")
    specs = _split_specs(args.solvers) if args.solvers else list(QUICK_SOLVERS if args.quick else SOLVERS)
    s_specs = _split_specs(args.stochastic_solvers) if args.stochastic_solvers else list(
        QUICK_STOCHASTIC_SOLVERS if args.quick else STOCHASTIC_SOLVERS)
    specs, s_specs = _with_auto_option(specs, args.calibrate), _with_auto_option(s_specs, args.calibrate)
    check_solver_names(specs + s_specs)
    names = [m.strip() for m in (args.model or ",".join(QUICK_MODELS if args.quick else DEFAULT_MODELS)).split(",")]
    if not any(names):
        raise BenchError("--model is empty")
    out = prepare_out_dir(args.out, NAME)
    cache = Path(args.cache) if args.cache else out / "teacher_cache"

    models, skipped = [], []
    for name in filter(None, names):
        try:
            models.append(load_real_model(name, args.pulfer))
        except FileNotFoundError as e:
            if name != "pulfer":
                raise BenchError(str(e)) from e
            skipped.append({"model": name, "reason": str(e)})
            print(f"note: skipping model {name!r}: {e}", file=sys.stderr)
    seeds = list(range(n_seeds))
    rows: list[dict[str, Any]] = []
    refs: dict[str, Any] = {}
    t0 = time.perf_counter()
    for rm in models:
        r, refs[rm.name] = run_model(rm, s_specs if rm.stochastic_only else specs,
                                     s_budgets if rm.stochastic_only else budgets, n, seeds, cache, args.device,
                                     args.quick)
        rows += r
    summary = summarize(rows)
    argv_list = list(argv) if argv is not None else sys.argv[1:]
    config = {
        "command": "python benchmarks/real_models.py " + " ".join(argv_list), "models": [m.name for m in models],
        "solvers": specs, "stochastic_solvers": s_specs, "nfe_budgets": budgets, "stochastic_nfe_budgets": s_budgets,
        "n": n, "seeds": seeds, "calibrate": args.calibrate, "teacher_ode": TEACHER_ODE, "device": args.device,
        "cache": str(cache), "wall_seconds": time.perf_counter() - t0, "versions": versions(),
        "machine": machine_info(args.device), "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    files = report(models, summary, rows, refs, skipped, config, out, plot=not args.no_plot)
    print((out / "results.md").read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(f) for f in files.values()), file=sys.stderr)
    return {"summary": summary, "rows": rows, "files": files, "config": config, "teachers": refs}


if __name__ == "__main__":
    sys.exit(run_cli(main))
