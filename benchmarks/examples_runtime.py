#!/usr/bin/env python
"""Wall time of every ``examples/*.py`` with its default arguments (the budget: 60 s each on a 2-core CPU).

Each example runs as its own fresh interpreter (``python examples/<name>.py``, as a user runs it) in an
empty temporary folder, offline (``HF_HUB_OFFLINE=1``), one after the other. Reported per example: wall
seconds, CPU seconds (user + system of the child; on a machine shared with other work the wall time
grows while the CPU time does not), exit status, the files it wrote, and the 1-minute load average
before and after (a load above the core count means the wall times are inflated).

Outputs in ``--out`` (default ``bench_out/examples_runtime/``): ``results.json`` and ``results.md``.

    python benchmarks/examples_runtime.py
    python benchmarks/examples_runtime.py --only sample_digits.py,inpaint_digits.py
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, prepare_out_dir, versions, write_json, write_text  # noqa: E402

NAME = "examples_runtime"
ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 60.0


def run_one(path: Path, timeout: float) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, str(path)], cwd=d, env=env, capture_output=True, text=True,
                               timeout=timeout)
            rc, tail = p.returncode, (p.stdout + p.stderr)[-600:]
        except subprocess.TimeoutExpired:
            rc, tail = None, f"killed after {timeout:g} s"
        wall = time.perf_counter() - t0
        files = sorted(os.listdir(d))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"example": path.name, "seconds": wall, "cpu_seconds": cpu, "exit_status": rc,
            "within_budget": rc == 0 and wall <= BUDGET_S, "files": ", ".join(files) or "—",
            "load_before": load0, "load_after": os.getloadavg()[0], "output_tail": tail if rc != 0 else ""}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated example file names (default: all)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before an example is killed")
    ap.add_argument("--out", default=None, help=f"output folder (default bench_out/{NAME}/)")
    args = ap.parse_args(argv)
    paths = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))
    if args.only:
        want = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = want - {p.name for p in paths}
        if unknown:
            print(f"error: unknown example(s) {sorted(unknown)}; known: {', '.join(p.name for p in paths)}",
                  file=sys.stderr)
            return 2
        paths = [p for p in paths if p.name in want]
    out = prepare_out_dir(args.out, NAME)
    rows = []
    for p in paths:
        r = run_one(p, args.timeout)
        rows.append(r)
        print(f"{r['example']:<24} {r['seconds']:6.1f} s wall  {r['cpu_seconds']:6.1f} s CPU  exit {r['exit_status']}"
              f"  load {r['load_before']:.1f}->{r['load_after']:.1f}", file=sys.stderr)
    cols = [("example", "example"), ("seconds", "wall s"), ("cpu_seconds", "CPU s"), ("within_budget", "≤ 60 s"),
            ("exit_status", "exit"), ("load_before", "load before"), ("load_after", "load after"),
            ("files", "files written")]
    config = {"command": "python benchmarks/examples_runtime.py " + " ".join(argv or sys.argv[1:]),
              "budget_s": BUDGET_S, "versions": versions(), "machine": machine_info()}
    md = ["# Examples: wall time with default arguments", "", f"Command: `{config['command']}`", "",
          f"Machine: {config['machine']['processor']}, {config['machine']['cpu_count']} CPUs.", "",
          markdown_table(rows, cols)]
    write_json(out / "results.json", {"benchmark": NAME, "config": config, "runs": rows})
    write_text(out / "results.md", "\n".join(md))
    print("\n".join(md))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}", file=sys.stderr)
    return 0 if all(r["exit_status"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
