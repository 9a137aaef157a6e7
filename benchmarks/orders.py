"""Empirical convergence orders of every registered solver, as the tests measure them (seconds of CPU each).

    python benchmarks/orders.py [--out DIR]

Deterministic fixed-grid solvers, each declared variant: slope of log2 RMSE against the PF-ODE reference over the
finest doubling of the steps (``tests/test_order.py``); deterministic adaptive solvers: slope of log error against
log NFE between tolerances 1e-5 and 1e-7; stochastic solvers: weak slope of the moment error of a Gaussian from
16 to 64 steps, ``gotta_go_fast`` against its evaluations (``tests/test_weak_order.py``). Writes orders.json and
orders.md.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import test_order  # noqa: E402
import test_weak_order  # noqa: E402
from _common import machine_info, markdown_table, prepare_out_dir, run_cli, write_json, write_text  # noqa: E402
from reference import registered, stochastic  # noqa: E402

from scoresolve.sampling import resolve_solver  # noqa: E402


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="output folder (default bench_out/orders)")
    args = ap.parse_args(argv)
    out = prepare_out_dir(args.out, "orders")
    warnings.simplefilter("ignore")
    t0, c0 = time.perf_counter(), time.process_time()
    rows = []
    for name, opts in test_order.CONFIGS:
        vp, flow = (test_order.empirical_order(name, opts, p)[0] for p in ("vp", "flow"))
        rows.append({"solver": name, "options": opts, "kind": "fixed grid, PF-ODE reference",
                     "declared": resolve_solver(name, dict(opts)).order, "vp": vp, "flow": flow})
    for name, opts in test_order.ADAPTIVE:
        slope = test_order.adaptive_order(name, opts)[0]
        rows.append({"solver": name, "options": opts, "kind": "adaptive, error vs NFE",
                     "declared": resolve_solver(name, dict(opts)).order, "vp": slope})
    for name in registered(stochastic):
        opts = test_weak_order.OPTIONS.get(name, {})
        solver = resolve_solver(name, dict(opts))
        slope = (test_weak_order.adaptive_weak_order if solver.adaptive else test_weak_order.weak_order)(name)[0]
        kind = "weak, Gaussian moments" + (" vs NFE" if solver.adaptive else "")
        rows.append({"solver": name, "options": opts, "kind": kind, "declared": solver.order, "vp": slope})
    cols = [("solver", "solver"), ("options", "options"), ("kind", "measured"), ("declared", "declared"),
            ("vp", "VP"), ("flow", "flow (shift 3)")]
    table = markdown_table(rows, cols)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    write_json(out / "orders.json", {"rows": rows, "wall_s": wall, "cpu_s": cpu, "machine": machine_info()})
    write_text(out / "orders.md", table)
    print(table)
    print(f"{wall:.0f} s wall, {cpu:.0f} s CPU; written to {out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
