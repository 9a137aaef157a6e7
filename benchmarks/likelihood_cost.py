"""Where the likelihood methods spend their CPU time: per evaluation, the network (score forward + the Hutchinson
vector-Jacobian products, ``Field.traces_with_variance``) against everything else (the integrator, its
coefficients, the error bar, torchdiffeq's step control), on one batch of held-out MNIST digits with the bundled
28x28 network.

Rows: the budget method at K = 100 and 80 with one probe kept along the path (the paired benchmark's setting), at
K = 100 with its default (one fresh probe per node) and with 4 probes, and dopri5 at rtol = atol = 1e-5 with one
probe (its default). One torch thread; CPU seconds
from ``time.process_time`` (fair under a shared machine's load, unlike wall time).

    python benchmarks/likelihood_cost.py --mnist PATH [--n 25] [--out bench_out/likelihood_cost]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, prepare_out_dir, versions, write_json, write_text

import scoresolve.io as sio
from scoresolve.data.mnist import mnist
from scoresolve.likelihood import likelihood
from scoresolve.likelihood.field import Field

CASES: list[tuple[str, dict[str, Any]]] = [
    ("budget K=100, 1 probe along the path", {"steps": 100, "probes": 1, "fresh_probes": False}),
    ("budget K=80, 1 probe along the path", {"steps": 80, "probes": 1, "fresh_probes": False}),
    ("budget K=100, 1 fresh probe per node (its default)", {"steps": 100}),
    ("budget K=100, 4 probes along the path", {"steps": 100, "probes": 4, "fresh_probes": False}),
    ("dopri5 rtol=1e-5, 1 probe (its default)", {"rtol": 1e-5, "atol": 1e-5, "probes": 1}),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mnist", required=True, help="MNIST t10k images (idx, .gz) or their folder")
    ap.add_argument("--n", type=int, default=25, help="digits in the batch (the first held-out ones; default 25)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = prepare_out_dir(args.out, "likelihood_cost")
    model = sio.load("mnist")
    x = mnist(args.mnist, "test")[: args.n].to(torch.float32)
    traces = Field.traces_with_variance
    spent = {"cpu": 0.0, "calls": 0}

    def timed(self: Field, *a: Any, **k: Any) -> Any:
        c0 = time.process_time()
        try:
            return traces(self, *a, **k)
        finally:
            spent["cpu"] += time.process_time() - c0
            spent["calls"] += 1

    Field.traces_with_variance = timed  # type: ignore[method-assign]
    rows = []
    try:
        for label, kw in CASES:
            spent.update(cpu=0.0, calls=0)
            c0 = time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = likelihood(model, x, trace="hutchinson", generator=torch.Generator().manual_seed(1000),
                               dequantize="uniform", **kw)
            cpu = time.process_time() - c0
            rows.append({"label": label, "nfe": r.nfe, "cpu_s": cpu, "ms_per_eval": 1000 * cpu / r.nfe,
                         "network_ms_per_eval": 1000 * spent["cpu"] / spent["calls"],
                         "other_ms_per_eval": 1000 * (cpu - spent["cpu"]) / r.nfe,
                         "cpu_s_per_digit": cpu / args.n})
            print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()),
                  flush=True)
    finally:
        Field.traces_with_variance = traces  # type: ignore[method-assign]
    cmd = " ".join(["python", "benchmarks/likelihood_cost.py", *(argv if argv is not None else sys.argv[1:])])
    write_json(out / "results.json", {"meta": {"machine": machine_info(), "versions": versions(), "n": args.n,
                                                "command": cmd}, "rows": rows})
    cols = [("label", "method"), ("nfe", "NFE"), ("cpu_s", "CPU s"), ("ms_per_eval", "CPU ms per evaluation"),
            ("network_ms_per_eval", "of which the network (score + VJPs)"),
            ("other_ms_per_eval", "of which the rest"), ("cpu_s_per_digit", "CPU s per digit")]
    write_text(out / "results.md", markdown_table(rows, cols) + f"\n{args.n} digits in one batch. Command: `{cmd}`\n")
    print(f"wrote {out}/results.json, results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
