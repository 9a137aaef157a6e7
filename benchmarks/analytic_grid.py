#!/usr/bin/env python
"""The analytic grid (``grid="analytic"``, no model calls) against the Karras and log-SNR grids on the bundled
networks, uncalibrated: paired RMSE against a fine teacher (4th-order Adams on 80 Karras steps, Tweedie step) from
the same prior draws, for iPNDM and DPM-Solver++(2M) at a few budgets (``final="none"``).

Example::

    python benchmarks/analytic_grid.py --model digits,mnist --nfe 5 --n 128
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, prepare_out_dir, versions, write_json, write_text  # noqa: E402

from scoresolve.calibrate import _run  # noqa: E402
from scoresolve.calibrate_dp import teacher_trajectories  # noqa: E402
from scoresolve.io import load  # noqa: E402
from scoresolve.models import as_score_fn  # noqa: E402
from scoresolve.registry import SOLVERS  # noqa: E402
from scoresolve.solvers.grids import make_grid  # noqa: E402
from scoresolve.solvers.loop import plan  # noqa: E402

GRIDS = ("analytic", "karras", "log_snr")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits,mnist")
    p.add_argument("--solvers", default="ipndm,dpmpp_2m")
    p.add_argument("--nfe", default="5")
    p.add_argument("--n", type=int, default=128, help="prior draws (one batch)")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    out = prepare_out_dir(args.out, "analytic_grid")
    rows = []
    start, cpu = time.perf_counter(), time.process_time()
    for name in args.model.split(","):
        model = load(name)
        fn, sde = as_score_fn(model), model.sde
        eps = sde.default_eps
        x = torch.randn(args.n, *model.sample_shape, generator=torch.Generator().manual_seed(args.seed))
        x = x * sde.prior_std
        tr = teacher_trajectories(fn, sde, x, eps, fine=40, sub=2, spacing="karras")
        end = tr.end.double()
        for solver_name in args.solvers.split(","):
            solver = SOLVERS.get(solver_name)()
            for nfe in (int(v) for v in args.nfe.split(",")):
                n = plan(solver, nfe, "none")
                for grid in GRIDS:
                    y, k = _run(fn, sde, solver, make_grid(grid, sde, n, eps), x, "none")
                    rmse = float((y.double() - end).pow(2).mean().sqrt())
                    rows.append({"model": name, "solver": solver_name, "nfe": k, "grid": grid, "rmse": rmse})
                    print(rows[-1], flush=True)
    info = {"machine": machine_info(), "versions": versions(), "n": args.n, "seed": args.seed,
            "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu, "rows": rows}
    write_json(out / "results.json", info)
    table = markdown_table(rows, [("model", "model"), ("solver", "solver"), ("nfe", "NFE"), ("grid", "grid"),
                                  ("rmse", "RMSE vs teacher")])
    write_text(out / "results.md", table + f"\nwall {info['wall_s']:.0f} s, CPU {info['cpu_s']:.0f} s\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
