#!/usr/bin/env python
"""The README's two pictures, regenerated from their seeds.

- ``docs/readme_samples.png``: 64 samples of the bundled digits network (``scoresolve.io.load("digits")``),
  DPM-Solver++(2M) at 20 evaluations, seeds 0..63, through the one image writer
  (:func:`scoresolve.io.image.save_grid`).
- ``docs/readme_nfe_vs_fd_analytic.png`` / ``docs/readme_nfe_vs_fd_bundled.png``: the plots of the main
  benchmark's default run (``python benchmarks/nfe_vs_fid.py``), and ``docs/readme_nfe_vs_fd.json``: the
  figures they show (model, solver, NFE, metric).

Reproducibility is checked without re-drawing anything by hand: ``--check`` regenerates the samples grid
and compares its pixels with the committed PNG (tests/test_readme_pictures.py); ``--check-results
RESULTS.json`` compares a default run's ``results.json`` (e.g. the README's first command, in CI) with
the committed figures.

    python benchmarks/readme_pictures.py                    # regenerate all three (runs the default benchmark)
    python benchmarks/readme_pictures.py --only samples     # the samples grid only (seconds)
    python benchmarks/readme_pictures.py --check            # exit 1 if the samples grid differs
    python benchmarks/readme_pictures.py --check-results bench_out/nfe_vs_fid/results.json
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SAMPLES_PNG = DOCS / "readme_samples.png"
FIGURES_JSON = DOCS / "readme_nfe_vs_fd.json"
SEED, N, SOLVER, NFE = 0, 64, "dpmpp_2m", 20
#: pixels of the regenerated grid may differ from the committed one by this many grey levels (float
#: rounding of a network's output on another CPU can flip a value across a quantisation step)
PIXEL_TOL = 2
REL_TOL = 1e-3


def samples_grid(path: Path) -> Path:
    """64 samples of the bundled digits network, seeds 0..63, written as a PNG grid."""
    import scoresolve as ss
    from scoresolve.io import load
    from scoresolve.io.image import save_grid

    model = load("digits")
    x = ss.sample(model, solver=SOLVER, nfe=NFE, seeds=range(SEED, SEED + N), progress=False)
    return save_grid(x, path, data_range=model.data_range or (-1, 1), scale=4)


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The plotted figures of a ``results.json``: ``[{model, solver, budget, nfe, metric, value}]``."""
    out = []
    for r in results["runs"]:
        if "skipped" in r or r.get("error"):
            continue
        metric = "fd_ratio" if r["model"] == "analytic" else "fid_ratio"
        out.append({"model": r["model"], "solver": r["solver"], "budget": r.get("budget"), "nfe": r["nfe"],
                    "metric": metric, "value": r[metric]})
    return sorted(out, key=lambda f: (f["model"], f["solver"], f["budget"] or 0))


def compare_figures(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> list[str]:
    """Differences between two figure lists (same runs, values within ``REL_TOL``)."""
    key = lambda f: (f["model"], f["solver"], f["budget"])  # noqa: E731
    g, w = {key(f): f for f in got}, {key(f): f for f in want}
    errs = [f"missing run {k}" for k in w if k not in g] + [f"extra run {k}" for k in g if k not in w]
    for k in w.keys() & g.keys():
        a, b = g[k], w[k]
        if a["nfe"] != b["nfe"] or not math.isclose(a["value"], b["value"], rel_tol=REL_TOL):
            errs.append(f"{k}: NFE {a['nfe']} {a['metric']} {a['value']:.6g}, committed NFE {b['nfe']} "
                        f"{b['value']:.6g}")
    return errs


def plots() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import nfe_vs_fid

    with tempfile.TemporaryDirectory() as d:
        res = nfe_vs_fid.main(["--out", d])
        for name in ("analytic", "bundled"):
            src = res["files"].get(f"plot_{name}")
            if src is not None:
                shutil.copyfile(src, DOCS / f"readme_nfe_vs_fd_{name}.png")
                print(f"wrote {DOCS / f'readme_nfe_vs_fd_{name}.png'}")
        data = json.loads((Path(d) / "results.json").read_text(encoding="utf-8"))
    FIGURES_JSON.write_text(json.dumps({"command": "python benchmarks/nfe_vs_fid.py", "seed": 0,
                                        "figures": figures(data)}, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {FIGURES_JSON}")


def check_samples() -> list[str]:
    from scoresolve.io.image import read_png

    with tempfile.TemporaryDirectory() as d:
        new = read_png(samples_grid(Path(d) / "grid.png")).to(torch.int16)
    old = read_png(SAMPLES_PNG).to(torch.int16)
    if new.shape != old.shape:
        return [f"samples grid: shape {tuple(new.shape)}, committed {tuple(old.shape)}"]
    worst = int((new - old).abs().max())
    return [] if worst <= PIXEL_TOL else [f"samples grid: pixels differ by up to {worst} grey levels (> {PIXEL_TOL})"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("samples", "plots"), default=None, help="regenerate one picture only")
    ap.add_argument("--check", action="store_true", help="regenerate the samples grid and compare its pixels")
    ap.add_argument("--check-results", type=Path, default=None, metavar="RESULTS_JSON",
                    help="compare a default run's results.json with the committed figures")
    args = ap.parse_args(argv)
    if args.check or args.check_results:
        errs = check_samples() if args.check else []
        if args.check_results:
            want = json.loads(FIGURES_JSON.read_text(encoding="utf-8"))["figures"]
            errs += compare_figures(figures(json.loads(args.check_results.read_text(encoding="utf-8"))), want)
        for e in errs:
            print(f"differs: {e}", file=sys.stderr)
        print("README pictures: " + ("reproduced" if not errs else f"{len(errs)} difference(s)"))
        return 1 if errs else 0
    if args.only in (None, "samples"):
        print(f"wrote {samples_grid(SAMPLES_PNG)}")
    if args.only in (None, "plots"):
        plots()
    return 0


if __name__ == "__main__":
    sys.exit(main())
