"""The ``scoresolve`` command line: ``sample``, ``likelihood``, ``solvers``, ``bench`` and ``train``.

    scoresolve solvers                                   # registered solvers with their declarations
    scoresolve sample --model digits --solver pc --steps 500 --n 64 --out samples
    scoresolve sample --model analytic --solver ode --n 16 --png grid.png --npz x.npz
    scoresolve sample --model digits --solver dpmpp_2m --nfe 20 --out grid.png   # 8x8 grid of 64 samples
    scoresolve likelihood --model analytic --n 128       # NLL / bits-per-dim through the PF-ODE
    scoresolve bench --quick                             # benchmarks/nfe_vs_fid.py
    scoresolve train --data digits --steps 20000 --out runs/digits   # python -m scoresolve.train

Models (``--model``): ``digits`` / ``mnist`` (the trained models bundled with scoresolve), ``analytic`` /
``analytic:digits`` / ``analytic:grid2d`` / ``analytic:anisotropic`` (exact Gaussian-mixture scores),
a checkpoint file or folder, or a Hugging Face Hub id ``org/name`` (see :func:`scoresolve.io.load`).
``python -m scoresolve`` is the same program.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import scoresolve as ss
from scoresolve import distributed as ssd
from scoresolve import io as ssio
from scoresolve._version import __version__

from ._cli_help import HelpFormatter
from ._util import atomic_write, make_folder
from .aliases import describe
from .io.image import save_grid
from .likelihood import likelihood as like
from .progress import Progress
from .registry import SOLVERS
from .train.__main__ import main as train_main

__all__ = ["main", "build_parser", "resolve_model", "write_png_grid", "solver_table", "solver_markdown"]

ANALYTIC = ("digits", "grid2d", "anisotropic")
SDE_NAMES = ("vp", "ve", "subvp", "flow")


class CLIError(Exception):
    """A user error: printed as ``scoresolve: error: ...`` with exit status 2."""


# ------------------------------------------------------------------------------------------------
# helpers shared by the commands
# ------------------------------------------------------------------------------------------------


def make_sde(name: str) -> Any:
    table = {"vp": ss.VPSDE, "ve": ss.VESDE, "subvp": ss.SubVPSDE, "flow": ss.RectifiedFlow}
    if name not in table:
        raise CLIError(f"unknown --sde {name!r}; expected one of {', '.join(table)}")
    return table[name]()


def resolve_model(spec: str, sde_name: str | None = None, device: str | None = None) -> tuple[Any, Any, Any]:
    """``--model`` → ``(score model, sde, analytic mixture or None)``.

    ``analytic[:name]`` builds the exact score of a mixture of :mod:`scoresolve.analytic` under
    ``sde_name`` (default VP); anything else goes to :func:`scoresolve.io.load` and uses the model's
    own SDE unless ``sde_name`` is given.
    """
    if spec == "analytic" or spec.startswith("analytic:"):
        which = spec.partition(":")[2] or "digits"
        if which not in ANALYTIC:
            raise CLIError(f"unknown analytic model {which!r}; expected one of {', '.join(ANALYTIC)}")
        mix = getattr(ss.analytic, which)()
        sde = make_sde(sde_name or "vp")
        return mix.score_model(sde), sde, mix
    try:
        model = ssio.load(spec, device=device)
    except FileNotFoundError as e:
        raise CLIError(f"{e}. Built-in choices: digits, mnist (bundled), analytic[:{'|'.join(ANALYTIC)}]") from e
    except Exception as e:  # noqa: BLE001 - CheckpointError, Hub errors: report, don't trace
        hint = " (try --model analytic, the exact digits mixture)" if spec == "digits" else ""
        raise CLIError(f"cannot load --model {spec!r}: {type(e).__name__}: {e}{hint}") from e
    sde = make_sde(sde_name) if sde_name else getattr(model, "sde", None)
    if sde is None:
        raise CLIError(f"model {spec!r} carries no SDE: pass --sde")
    return model, sde, None


def parse_options(items: Sequence[str] | None) -> dict[str, Any]:
    """``["snr=0.1", "corrector=none"]`` → ``{"snr": 0.1, "corrector": "none"}`` (Python literals or strings)."""
    out: dict[str, Any] = {}
    for item in items or ():
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise CLIError(f"--option expects key=value, got {item!r}")
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def write_png_grid(
    samples: Any, path: str | os.PathLike[str], data_range: tuple[float, float] = (-1.0, 1.0), nrow: int | None = None,
    pad: int = 2, scale: int = 1,
) -> Path:
    """Tile image samples ``(N, C, H, W)`` (C = 1 or 3) into one PNG with grey gutters
    (:func:`scoresolve.io.image.save_grid`: ``data_range`` maps to black..white; Pillow or zlib)."""
    try:
        return save_grid(samples, path, nrow=nrow, pad=pad, data_range=data_range, scale=scale)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _save_npz(path: str | os.PathLike[str], **arrays: Any) -> Path:
    import numpy as np

    path = Path(path)
    with atomic_write(path, mkdir=True, suffix=".tmp.npz") as tmp:
        np.savez(tmp, **arrays)
    return path


def solver_table() -> list[dict[str, Any]]:
    """Every registered solver with its declarations (order, NFE per step, stochastic, adaptive, grid)."""
    rows = []
    for name, desc in SOLVERS.describe().items():
        cls = SOLVERS.get(name)
        try:
            obj = cls()  # declarations that depend on defaults (pc: predictor + corrector evaluations)
        except Exception:  # noqa: BLE001 - a solver that needs arguments: read the class
            obj = cls
        nps = getattr(obj, "nfe_per_step", None)
        rows.append({
            "name": name,
            "order": getattr(obj, "order", None),
            "nfe_per_step": None if getattr(obj, "adaptive", False) else (nps if isinstance(nps, int) else None),
            "stochastic": bool(getattr(obj, "stochastic", False)),
            "adaptive": bool(getattr(obj, "adaptive", False)),
            "default_grid": None if getattr(obj, "adaptive", False) else getattr(obj, "default_grid", None),
            "default_final": getattr(obj, "default_final", "none"),
            "reference": getattr(obj, "reference", "") or "",
            "description": desc,
        })
    return rows


# ------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------


def solver_markdown() -> str:
    """The registered solvers as a Markdown table (``docs/solvers.md`` is made from it)."""
    lines = [
        "| solver | order | NFE / step | kind | default grid | default final | description | reference |",
        "|---|---:|---:|---|---|---|---|---|",
    ]
    for r in solver_table():
        kind = "stochastic" if r["stochastic"] else "deterministic"
        if r["adaptive"]:
            kind += ", adaptive"
        order = "—" if r["order"] is None else f"{r['order']:g}"
        nfe = "adaptive" if r["adaptive"] else ("—" if r["nfe_per_step"] is None else str(r["nfe_per_step"]))
        cells = [f"`{r['name']}`", order, nfe, kind, r["default_grid"] or "—", r["default_final"],
                 r["description"], r["reference"] or "—"]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def cmd_solvers(args: argparse.Namespace) -> int:
    if args.aliases:
        for name, line in describe().items():
            print(f"{name:<34} {line}")
        return 0
    rows = solver_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if args.markdown:
        print(solver_markdown(), end="")
        return 0
    head = f"{'name':<22} {'order':>5} {'NFE/step':>8} {'kind':<13} {'grid':<9} description"
    print(head)
    print("-" * len(head))
    for r in rows:
        kind = ("stochastic" if r["stochastic"] else "deterministic") + (" (adaptive)" if r["adaptive"] else "")
        kind = "adaptive" if r["adaptive"] and not r["stochastic"] else kind
        order = "—" if r["order"] is None else f"{r['order']:g}"
        nfe = "adaptive" if r["adaptive"] else ("—" if r["nfe_per_step"] is None else str(r["nfe_per_step"]))
        print(f"{r['name']:<22} {order:>5} {nfe:>8} {kind:<13} {r['default_grid'] or '—':<9} {r['description']}")
    return 0


def _outputs(args: argparse.Namespace, default_stem: str) -> tuple[Path | None, Path | None]:
    npz = Path(args.npz) if args.npz else None
    png = Path(args.png) if args.png else None
    if args.out:
        stem = Path(args.out)
        npz = npz or stem.with_suffix(".npz") if stem.suffix != ".npz" else stem
        png = png or stem.with_suffix(".png")
    if npz is None and png is None:
        npz, png = Path(default_stem + ".npz"), Path(default_stem + ".png")
    for p in (npz, png):
        if p is not None:
            if p.exists() and not args.overwrite:
                raise CLIError(f"{p} exists; pass --overwrite to replace it")
            parent = make_folder(p.parent, error=CLIError)
            if not os.access(parent, os.W_OK):
                raise CLIError(f"the folder {parent} is not writable")
    return npz, png


def cmd_sample(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise CLIError(f"--n must be >= 1, got {args.n}")
    if args.batch_size is not None and args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads:
        torch.set_num_threads(args.threads)
    check_device(args.device)
    npz, png = _outputs(args, "samples")
    if args.shard_dir:
        return _sample_sharded(args)
    model, sde, _ = resolve_model(args.model, args.sde, args.device)
    opts = parse_options(args.option)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    seeds = list(range(args.seed, args.seed + args.n))
    bs = args.batch_size or min(args.n, 256)
    if args.nfe is not None and args.steps is not None:
        raise CLIError("pass either --nfe or --steps, not both")
    chunks, nfe, t0 = [], 0, time.perf_counter()
    show = False if args.quiet else None
    # a bar over the samples when there are several batches, and one over the steps of each batch
    bar = Progress(args.n, f"sampling ({args.solver})", progress=show if args.n > bs else False, unit="sample")
    try:
        for i in range(0, args.n, bs):
            res = ss.sample(
                model, sde, solver=args.solver, steps=args.steps, nfe=args.nfe, final=args.final,
                seeds=seeds[i: i + bs], eps=args.eps,
                grid=args.grid, denoise=args.denoise, device=args.device, dtype=dtype, progress=show,
                return_result=True, **opts,
            )
            chunks.append(res.samples.detach().cpu())
            nfe = max(nfe, res.nfe)
            bar.update(res.samples.shape[0])
    except (ValueError, TypeError, FloatingPointError) as e:
        raise CLIError(str(e)) from e
    finally:
        bar.close(evaluations_per_batch=nfe)
    x = torch.cat(chunks)
    secs = time.perf_counter() - t0
    config = {
        "model": args.model, "sde": repr(sde), "solver": args.solver, "steps": args.steps, "nfe": args.nfe,
        "final": args.final, "options": opts,
        "eps": args.eps, "grid": args.grid, "denoise": args.denoise, "n": args.n, "seed": args.seed,
        "dtype": args.dtype, "nfe_per_batch": nfe, "seconds": secs, "scoresolve": __version__,
    }
    if npz is not None:
        _save_npz(npz, samples=x.numpy(), seeds=torch.tensor(seeds).numpy(), config=json.dumps(config))
        print(f"wrote {npz} ({tuple(x.shape)})", file=sys.stderr)
    if png is not None:
        rng = getattr(model, "data_range", None) or tuple(args.data_range)
        if x.ndim == 4 and x.shape[1] in (1, 3):
            write_png_grid(x[: args.png_max], png, data_range=rng, scale=args.png_scale)
            print(f"wrote {png}", file=sys.stderr)
        else:
            print(f"note: samples of shape {tuple(x.shape[1:])} are not images; no PNG written", file=sys.stderr)
    print(f"{args.n} samples, {nfe} NFE per batch, {secs:.2f} s")
    return 0


def _sample_sharded(args: argparse.Namespace) -> int:
    """``scoresolve sample --shard-dir``: resumable shards, across processes under torchrun."""
    rank, world = ssd.init()
    npz, png = (None, None)
    if rank == 0:
        npz, png = _outputs(args, str(Path(args.shard_dir) / "samples"))
    model, sde, _ = resolve_model(args.model, args.sde, args.device)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    try:
        res = ssd.sample_distributed(
            model, sde, n=args.n, out_dir=args.shard_dir, solver=args.solver, steps=args.steps, seed=args.seed,
            shard_size=args.batch_size or 256, eps=args.eps, grid=args.grid, denoise=args.denoise,
            device=args.device, dtype=dtype, progress=not args.quiet and None,
            **{k: v for k, v in (("nfe", args.nfe), ("final", args.final)) if v is not None},
            **parse_options(args.option),
        )
    except (ValueError, TypeError) as e:
        raise CLIError(str(e)) from e
    print(f"rank {rank}/{world}: {len(res.shards_done)} shards sampled, {len(res.shards_skipped)} already done",
          file=sys.stderr)
    if rank != 0 or res.samples is None:
        return 0
    x = res.samples
    if npz is not None:
        _save_npz(npz, samples=x.numpy(), seeds=res.seeds.numpy(),
                  config=(Path(args.shard_dir) / "config.json").read_text(encoding="utf-8"))
        print(f"wrote {npz} ({tuple(x.shape)})", file=sys.stderr)
    if png is not None and x.ndim == 4 and x.shape[1] in (1, 3):
        rng = getattr(model, "data_range", None) or tuple(args.data_range)
        write_png_grid(x[: args.png_max], png, data_range=rng, scale=args.png_scale)
        print(f"wrote {png}", file=sys.stderr)
    return 0


def _load_array(path: str) -> Any:
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--data {path!r} is not a file")
    if p.suffix not in (".npy", ".npz"):
        raise CLIError(f"--data {path!r}: expected a .npy or .npz file of samples, got {p.suffix or 'no suffix'!r}")
    try:
        arr = np.load(p, allow_pickle=False)
        if hasattr(arr, "files"):
            if not arr.files:
                raise ValueError("the archive holds no arrays")
            key = "samples" if "samples" in arr.files else arr.files[0]
            arr = arr[key]
    except Exception as e:  # noqa: BLE001 - object arrays (pickles), damaged archives: one line, no traceback
        raise CLIError(f"cannot read --data {path!r} as .npy/.npz of numbers: {e}") from e
    if arr.dtype.kind not in "fiu" or arr.ndim < 2:
        raise CLIError(f"--data {path!r}: expected a numeric array (N, *dims), got {arr.dtype} of shape {arr.shape}")
    return arr


def check_device(device: str | None) -> None:
    """Refuse a ``--device`` that torch does not know or that is not available here (one line, exit 2)."""
    if device is None:
        return

    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CLIError(f"--device {device!r} is not usable here: {first}") from None


def cmd_likelihood(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    check_device(args.device)
    model, sde, mix = resolve_model(args.model, args.sde, args.device)
    if args.data:
        x = torch.as_tensor(_load_array(args.data)).to(torch.float64 if args.dtype == "float64" else torch.float32)
        if args.n is not None:
            x = x[: args.n]
    elif mix is not None:
        x = mix.sample(args.n or 64, torch.Generator().manual_seed(args.seed)).to(
            torch.float64 if args.dtype == "float64" else torch.float32
        )
    else:
        raise CLIError("--data is required for a trained model (a .npy/.npz of samples, e.g. from scoresolve sample)")
    opts = parse_options(args.option)
    kwargs: dict[str, Any] = dict(opts)
    for key in ("method", "trace", "steps", "rtol", "atol"):
        if getattr(args, key, None) is not None:
            kwargs[key] = getattr(args, key)
    if args.seed is not None:
        kwargs.setdefault("generator", torch.Generator().manual_seed(args.seed))
    t0 = time.perf_counter()
    try:
        res = like(model, sde, x.to(args.device), **kwargs)
    except (ValueError, TypeError) as e:
        raise CLIError(str(e)) from e
    secs = time.perf_counter() - t0
    nll = torch.as_tensor(res if isinstance(res, torch.Tensor) else res.nll).detach().cpu()
    bpd = getattr(res, "bpd", None)
    out = {"n": int(x.shape[0]), "nll_mean": float(nll.mean()), "nll_stderr": float(nll.std() / nll.numel() ** 0.5)
           if nll.numel() > 1 else 0.0, "seconds": secs}
    if bpd is not None:
        out["bpd_mean"] = float(torch.as_tensor(bpd).mean())
    if getattr(res, "nfe", None) is not None:
        out["nfe"] = int(res.nfe) if not isinstance(res.nfe, torch.Tensor) else float(res.nfe.float().mean())
    if mix is not None:
        exact = -mix.log_prob(x.to(torch.float64))
        out["exact_nll_mean"] = float(exact.mean())
        out["mean_abs_error_vs_exact"] = float((nll.to(torch.float64) - exact).abs().mean())
    if args.npz:
        arrays = {"nll": nll.numpy(), "config": json.dumps({k: v for k, v in vars(args).items() if k != "option"})}
        if bpd is not None:
            arrays["bpd"] = torch.as_tensor(bpd).detach().cpu().numpy()
        _save_npz(args.npz, **arrays)
    print(likelihood_summary(out), file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0


def likelihood_summary(out: dict[str, Any]) -> str:
    """One line for people beside ``likelihood``'s JSON: the mean NLL in nats per sample with its standard
    error, bits/dim, and the exact value when there is one."""
    line = (f"mean negative log-likelihood {out['nll_mean']:.4g} ± {out['nll_stderr']:.2g} nats per sample "
            f"over {out['n']} samples")
    if "bpd_mean" in out:
        bpd = out["bpd_mean"]
        line += f", {bpd:.4g} bits/dim"
        if bpd < 0:
            line += " (negative: a continuous density above 1 per unit volume; pass -o data_range=... for images)"
    if "exact_nll_mean" in out:
        line += f"; exact {out['exact_nll_mean']:.4g} (mean |error| {out['mean_abs_error_vs_exact']:.2g})"
    extra = f"{out['nfe']:g} NFE, " if "nfe" in out else ""
    return f"{line} [{extra}{out['seconds']:.1f} s]"


def find_benchmark(name: str) -> Path:
    """Path of ``benchmarks/<name>.py`` in the source tree next to the installed package."""
    root = Path(__file__).resolve().parent.parent
    script = root / "benchmarks" / f"{name}.py"
    if not script.is_file():
        available = sorted(p.stem for p in (root / "benchmarks").glob("*.py") if not p.stem.startswith("_"))
        if available:
            raise CLIError(f"unknown benchmark {name!r}; available: {', '.join(available)}")
        raise CLIError(
            f"the benchmarks folder is not next to this installation ({root / 'benchmarks'}); run scoresolve "
            "bench from a source checkout (pip install -e .)"
        )
    return script


def cmd_bench(args: argparse.Namespace, rest: Sequence[str]) -> int:
    if args.list:
        root = Path(__file__).resolve().parent.parent / "benchmarks"
        for p in sorted(root.glob("*.py")):
            if not p.stem.startswith("_"):
                print(p.stem)
        return 0
    script = find_benchmark(args.name)
    return subprocess.call([sys.executable, str(script), *rest])


# ------------------------------------------------------------------------------------------------
# parser
# ------------------------------------------------------------------------------------------------


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="digits",
                   help="'digits' or 'mnist' (trained models bundled with scoresolve), "
                   "'analytic[:digits|grid2d|anisotropic]' (exact Gaussian-mixture score), a checkpoint file/folder, "
                   "or a Hugging Face Hub id 'org/name'")
    p.add_argument("--sde", choices=SDE_NAMES, default=None,
                   help="SDE to sample/evaluate under (default: the model's own; VP for analytic models)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: the model's)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="precision of the state")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--option", "-o", action="append", metavar="KEY=VALUE",
                   help="solver/likelihood option, repeatable (e.g. -o snr=0.16 -o corrector=none)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scoresolve",
        description="Sample, evaluate likelihoods of, and benchmark score-based diffusion models.",
        epilog="Run 'scoresolve COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"scoresolve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    ps = sub.add_parser("solvers", help="list the registered solvers with order, NFE per step and kind",
                        description="List every registered solver with its declarations: convergence order "
                        "(strong order for stochastic ones), score evaluations per step at default options, "
                        "deterministic/stochastic/adaptive, default time grid.")
    ps.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ps.add_argument("--markdown", action="store_true", help="print a Markdown table (as in docs/solvers.md)")
    ps.add_argument("--aliases", action="store_true",
                    help="list the familiar names (k-diffusion, diffusers, web UIs) and what they run")

    pa = sub.add_parser(
        "sample", help="draw samples; write them as .npz and a PNG grid",
        description="Draw samples by integrating the reverse SDE or probability-flow ODE. Every sample depends "
        "only on its seed (seed, seed+1, ...), not on the batch size.",
        formatter_class=HelpFormatter,
    )
    _add_model_args(pa)
    pa.add_argument("--solver", default="pc",
                    help="a registered solver or a familiar name such as euler_a, ddim, 'DPM++ 2M Karras' "
                    "(see 'scoresolve solvers')")
    pa.add_argument("--steps", type=int, default=None,
                    help="grid intervals (pc: predictor steps); default: the solver's/SDE's default")
    pa.add_argument("--nfe", type=int, default=None,
                    help="instead of --steps: the score-evaluation budget, final step included (any fixed-grid "
                    "solver; auto needs it)")
    pa.add_argument("--final", choices=("none", "tweedie", "zero"), default=None,
                    help="how the run ends after the grid (default: the solver's)")
    pa.add_argument("--n", "--num-samples", dest="n", type=int, default=64,
                    help="number of samples (write --num-samples after torchrun, whose parser takes --n for itself)")
    pa.add_argument("--batch-size", type=int, default=None, help="samples per batch (default min(n, 256))")
    pa.add_argument("--seed", type=int, default=0, help="seed of the first sample; sample i uses seed + i")
    pa.add_argument("--eps", type=float, default=None, help="final time (default: the SDE's default_eps)")
    pa.add_argument("--grid", default=None, help="registered time grid (default: the solver's)")
    pa.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=None,
                    help="deprecated: --final tweedie / --final none")
    pa.add_argument("--out", default=None,
                    help="output stem: writes STEM.npz and STEM.png (default samples.npz + samples.png)")
    pa.add_argument("--npz", default=None, help="write samples, seeds and the config to this .npz")
    pa.add_argument("--png", default=None, help="write a PNG grid of image samples here")
    pa.add_argument("--png-scale", type=int, default=4, help="pixel repetition in the PNG grid")
    pa.add_argument("--data-range", type=float, nargs=2, default=(-1.0, 1.0), metavar=("LOW", "HIGH"),
                    help="value range mapped to black..white in the PNG when the model does not declare one")
    pa.add_argument("--png-max", type=int, default=256, help="at most this many samples in the PNG grid")
    pa.add_argument("--shard-dir", default=None,
                    help="write resumable shards of --batch-size samples here (scoresolve.distributed): a killed "
                    "run resumes, and under torchrun the shards are shared out across the processes, e.g. "
                    "'torchrun --nproc-per-node 4 -m scoresolve sample --num-samples 50000 --shard-dir shards/'")
    pa.add_argument("--overwrite", action="store_true", help="replace existing output files")
    pa.add_argument("--quiet", action="store_true", help="no progress bar")

    pl = sub.add_parser(
        "likelihood", help="negative log-likelihood (nats) and bits/dim through the probability-flow ODE",
        description="Per-sample negative log-likelihood through the probability-flow ODE (instantaneous change of "
        "variables). For analytic models the exact NLL is printed beside it; without --data they are evaluated "
        "on exact samples.",
        formatter_class=HelpFormatter,
    )
    _add_model_args(pl)
    pl.add_argument("--data", default=None, help=".npy or .npz file of samples (key 'samples' or the first array)")
    pl.add_argument("--n", type=int, default=None, help="use the first N samples (analytic: draw N, default 64)")
    pl.add_argument("--seed", type=int, default=0, help="seed for exact samples and the trace estimator's noise")
    pl.add_argument("--method", default=None,
                    help="ODE method: budget, dopri5, rk4, adams, ... (default: budget with --steps, else dopri5)")
    pl.add_argument("--trace", choices=("exact", "hutchinson"), default=None,
                    help="divergence: exact (D backward passes; small D) or the Hutchinson-Skilling estimator "
                    "(default: exact for D <= 64, else hutchinson)")
    pl.add_argument("--steps", type=int, default=None,
                    help="score evaluations of the budget method, or steps of a fixed-step one")
    pl.add_argument("--rtol", type=float, default=None, help="relative tolerance of adaptive methods (default 1e-5)")
    pl.add_argument("--atol", type=float, default=None, help="absolute tolerance of adaptive methods (default 1e-5)")
    pl.add_argument("--npz", default=None, help="write per-sample NLL (and bits/dim) here")

    pb = sub.add_parser(
        "bench", help="run a benchmark script (default: nfe_vs_fid); other options are forwarded to it",
        description="Run benchmarks/<name>.py from the source tree; every option not listed here is passed on "
        "(see 'scoresolve bench -- --help').",
    )
    pb.add_argument("--name", default="nfe_vs_fid", help="which benchmark script")
    pb.add_argument("--list", action="store_true", help="list the benchmark scripts")

    sub.add_parser("train", add_help=False,
                   help="train a score model (python -m scoresolve.train; 'scoresolve train --help' lists its options)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scoresolve`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":  # its own parser: python -m scoresolve.train
        train_main(argv[1:], prog="scoresolve train")
        return 0
    parser = build_parser()
    if argv and argv[0] == "bench":
        args, rest = parser.parse_known_args(argv)
        if rest and rest[0] == "--":
            rest = rest[1:]
    else:
        args, rest = parser.parse_args(argv), []
    try:
        if args.command == "solvers":
            return cmd_solvers(args)
        if args.command == "sample":
            return cmd_sample(args)
        if args.command == "likelihood":
            return cmd_likelihood(args)
        return cmd_bench(args, rest)
    except CLIError as e:
        parser.exit(2, f"scoresolve {args.command}: error: {e}\n")
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
