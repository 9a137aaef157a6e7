#!/usr/bin/env python
"""Default grids on the bundled networks, uncalibrated: the Fréchet distance (FD) to held-out real images.

For each model, solver, NFE budget and grid (``analytic``, no model calls, against ``karras`` and ``log_snr``;
``name(key=value,...)`` passes grid options, ``default`` is the solver's own) the samples of ``ss.sample`` from
the prior noise of each seed (the draws of ``benchmarks/real_models.py``) are scored by the FD in the bundled
classifier's features against the held-out images (``real_models.load_real_model``), clamped to ``[-1, 1]``.
All grids of a seed share the noise, so the per-seed differences are paired. ``--teacher`` adds the teacher
ratio and paired RMSE against ``real_models``' cached dopri5 teacher (computed when absent: minutes on 28×28).

Example::

    python benchmarks/analytic_grid.py --model digits,mnist --nfe 5 --n 1000 --seeds 3
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, prepare_out_dir, versions, write_json, write_text  # noqa: E402
from nfe_vs_fid import Problem  # noqa: E402
from real_models import load_real_model, teacher_samples  # noqa: E402

import scoresolve as ss  # noqa: E402
from scoresolve.metrics import frechet_distance, gaussian_moments  # noqa: E402
from scoresolve.registry import SOLVERS  # noqa: E402
from scoresolve.solvers.grids import make_grid  # noqa: E402
from scoresolve.solvers.loop import plan  # noqa: E402

GRIDS = "analytic,karras,log_snr"


def parse_grid(spec: str) -> tuple[str, dict[str, float]]:
    """``name`` or ``name(key=value,...)`` (numbers) -> (name, options)."""
    m = re.fullmatch(r"\s*(\w+)\s*(?:\((.*)\))?\s*", spec)
    if not m:
        raise SystemExit(f"error: cannot parse grid {spec!r}: expected name or name(key=value,...)")
    opts = {k.strip(): float(v) for k, v in (p.split("=") for p in m.group(2).split(","))} if m.group(2) else {}
    return m.group(1), opts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits,mnist")
    p.add_argument("--solvers", default="ipndm,dpmpp_2m")
    p.add_argument("--grids", default=GRIDS, help="grid specs, e.g. 'analytic,analytic(c=0.3),karras,default'")
    p.add_argument("--nfe", default="5")
    p.add_argument("--n", type=int, default=1000, help="samples per run")
    p.add_argument("--seeds", type=int, default=3, help="noise seeds 0..k-1")
    p.add_argument("--teacher", action="store_true", help="teacher ratio and paired RMSE (real_models' teacher)")
    p.add_argument("--cache", default="bench_out/real_models/teacher_cache", help="teacher cache folder")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    out = prepare_out_dir(args.out, "analytic_grid")
    grids = [parse_grid(s) for s in re.split(r",(?![^()]*\))", args.grids) if s.strip()]
    rows: list[dict[str, Any]] = []
    start, cpu = time.perf_counter(), time.process_time()
    for name in args.model.split(","):
        rm = load_real_model(name)
        model, sde = rm.model, rm.model.sde
        eps = sde.default_eps
        shape = (args.n, *model.sample_shape)
        problem = Problem(name=name, model=model, sde=sde, shape=shape, metric_name="fd", evaluate=lambda x: {},
                          score_fn=model)
        for seed in range(args.seeds):
            x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * sde.prior_std
            teacher = teacher_samples(rm, problem, seed, Path(args.cache), "cpu") if args.teacher else None
            t_fd = None if teacher is None else frechet_distance(*gaussian_moments(rm.features(teacher["samples"])),
                                                                 rm.ref_mean, rm.ref_cov)
            for solver_name in args.solvers.split(","):
                solver = SOLVERS.get(solver_name)()
                for nfe in (int(v) for v in args.nfe.split(",")):
                    steps = plan(solver, nfe, solver.default_final)
                    for gname, gopts in grids:
                        label = gname + (f"({','.join(f'{k}={v:g}' for k, v in gopts.items())})" if gopts else "")
                        grid = None if gname == "default" else make_grid(gname, sde, steps, eps, **gopts)
                        res = ss.sample(model, solver=solver_name, nfe=nfe, grid=grid, x_T=x_T, progress=False,
                                        return_result=True)
                        x = res.samples.detach().float()
                        fd = frechet_distance(*gaussian_moments(rm.features(x)), rm.ref_mean, rm.ref_cov) \
                            if torch.isfinite(x).all() else math.inf
                        row = {"model": name, "solver": solver_name, "nfe": int(res.nfe), "grid": label, "seed": seed,
                               "fd": fd, "std": float(x.flatten(1).std(0).mean())}
                        if teacher is not None:
                            row["teacher_ratio"] = fd / t_fd
                            row["rmse"] = float((x - teacher["samples"]).pow(2).mean().sqrt())
                        rows.append(row)
                        print(row, flush=True)
    summary = summarize(rows)
    info = {"machine": machine_info(), "versions": versions(), "n": args.n, "seeds": args.seeds,
            "command": "python benchmarks/analytic_grid.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
            "load_average": os.getloadavg(), "summary": summary, "rows": rows}
    write_json(out / "results.json", info)
    cols = [("model", "model"), ("solver", "solver"), ("nfe", "NFE"), ("grid", "grid"), ("fd", "FD (mean)"),
            ("fd_sd", "sd (seeds)"), ("fd_seeds", "FD per seed"), ("diff", "FD − best other grid, per seed"),
            ("std", "per-pixel std")]
    if args.teacher:
        cols += [("teacher_ratio", "FD / teacher FD"), ("rmse", "RMSE vs teacher")]
    table = markdown_table(summary, cols)
    write_text(out / "results.md", table + f"\nn = {args.n}, seeds 0..{args.seeds - 1}; wall {info['wall_s']:.0f} s, "
               f"CPU {info['cpu_s']:.0f} s, load average {info['load_average'][0]:.1f}\n")
    print(table)
    print(f"wall {info['wall_s']:.0f} s, CPU {info['cpu_s']:.0f} s")
    return 0


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, solver, NFE, grid): mean FD over seeds, its sd, and the per-seed FD minus the best of the
    other grids on the same noise (negative: this grid wins that seed)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["solver"], r["nfe"], r["grid"]), []).append(r)
    out = []
    for (model, solver, nfe, grid), rs in groups.items():
        fds = [r["fd"] for r in rs]
        m = sum(fds) / len(fds)
        sd = math.sqrt(sum((v - m) ** 2 for v in fds) / (len(fds) - 1)) if len(fds) > 1 else None
        diffs = []
        for r in rs:
            others = [o["fd"] for o in rows if (o["model"], o["solver"], o["nfe"], o["seed"]) == (model, solver, nfe,
                      r["seed"]) and o["grid"] != grid]
            diffs.append(r["fd"] - min(others) if others else None)
        s = {"model": model, "solver": solver, "nfe": nfe, "grid": grid, "fd": m, "fd_sd": sd,
             "fd_seeds": " / ".join(f"{v:.3g}" for v in fds),
             "diff": " / ".join("—" if d is None else f"{d:+.3g}" for d in diffs),
             "std": sum(r["std"] for r in rs) / len(rs)}
        for k in ("teacher_ratio", "rmse"):
            if k in rs[0]:
                s[k] = sum(r[k] for r in rs) / len(rs)
        out.append(s)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
