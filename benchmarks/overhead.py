"""Solver overhead per step against the cost of the score model.

For every registered fixed-grid solver (and pc with each predictor/corrector pairing) this times
``ss.sample`` twice on the same grid: with a free score (``-x``, so the time is the solver's own work)
and with a cheap but real model (an MLP, default 3×256 hidden units, batch 256, on 64-D data). It
reports microseconds of solver work per score evaluation and that work as a share of the run's time.

    python benchmarks/overhead.py [--quick] [--out bench_out/overhead] [--batch 256] [--device cpu]

Writes ``overhead.json`` and ``overhead.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import scoresolve as ss
from scoresolve.registry import SOLVERS


def mlp(dim: int, hidden: int, device: torch.device) -> torch.nn.Module:
    net = torch.nn.Sequential(
        torch.nn.Linear(dim + 1, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, dim),
    ).to(device)
    return net


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def configs(quick: bool) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    pairs = [("reverse_diffusion", "langevin"), ("euler_maruyama", "none")] if quick else [
        (p, c) for p in ss.predictors() for c in ss.correctors() if (p, c) != ("none", "none")]
    out += [("pc", {"predictor": p, "corrector": c}) for p, c in pairs]
    for name in SOLVERS.names():
        cls = SOLVERS.get(name)
        if name != "pc" and not getattr(cls, "adaptive", False) and name != "auto":
            out.append((name, {}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer solvers and steps")
    ap.add_argument("--out", default="bench_out/overhead", help="output folder")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--steps", type=int, default=None, help="grid steps per run (default 50, quick 20)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(args.device)
    steps = args.steps or (20 if args.quick else 50)
    repeats = 2 if args.quick else 5
    sde = ss.VPSDE()
    net = mlp(args.dim, args.hidden, dev).eval()

    def model(x, t):
        return net(torch.cat([x, t[:, None]], 1))

    x = torch.randn(args.batch, args.dim, device=dev)
    t = torch.full((args.batch,), 0.5, device=dev)
    with torch.no_grad():
        call = timed(lambda: model(x, t), 20) * 1e6

    rows = []
    for name, opts in configs(args.quick):
        label = name + ("" if not opts else f" ({opts['predictor']}+{opts['corrector']})")
        try:
            res = ss.sample(lambda x, t: -x, sde, solver=name, steps=steps, shape=(args.batch, args.dim),
                            device=dev, return_result=True, progress=False, **opts)
        except (ValueError, TypeError) as e:
            rows.append({"solver": label, "skipped": str(e)})
            continue
        nfe = res.nfe
        kw = dict(steps=steps, shape=(args.batch, args.dim), device=dev, progress=False, **opts)
        free = timed(lambda: ss.sample(lambda x, t: -x, sde, solver=name, **kw), repeats)  # noqa: B023
        real = timed(lambda: ss.sample(model, sde, solver=name, **kw), repeats)  # noqa: B023
        per_eval = free / nfe * 1e6
        rows.append({"solver": label, "nfe": nfe, "overhead_us_per_eval": per_eval,
                     "model_us_per_call": call, "overhead_share": free / real, "run_ms": real * 1e3})
        print(f"{label:48s} nfe {nfe:4d}  solver {per_eval:8.1f} µs/eval  model {call:8.1f} µs/call  "
              f"share {100 * free / real:5.1f} %", flush=True)

    machine = {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "device": str(dev)}
    (out / "overhead.json").write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=2))
    lines = [f"Solver overhead on {machine['platform']} ({machine['threads']} threads, {dev}); model: MLP "
             f"3×{args.hidden}, batch {args.batch}, {args.dim}-D, {call:.0f} µs per call; {steps} grid steps.", "",
             "| solver | NFE | solver µs / eval | share of run time |", "|---|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['solver']} | skipped: {r['skipped']} | | |")
        else:
            lines.append(f"| {r['solver']} | {r['nfe']} | {r['overhead_us_per_eval']:.1f} | "
                         f"{100 * r['overhead_share']:.1f} % |")
    (out / "overhead.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'overhead.json'} and {out / 'overhead.md'}")


if __name__ == "__main__":
    main()
