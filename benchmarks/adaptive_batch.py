"""Per-sample adaptive step sizes vs one shared step size for the batch (probability-flow ODE).

A batch mixes easy and hard samples (prior noise of a 16-D anisotropic mixture under VP, and of the
64-D digits mixture). For each method we sweep the tolerance and record, against a float64
rtol = atol = 1e-10 reference from the same prior noise:

- worst-sample error: the largest per-sample RMS error in the batch;
- model calls: what one batched run pays (the loop runs until the slowest sample is done);
- row-evaluations: the sum over samples of the evaluations each received (what the samples would
  cost run one by one, or with rows packed tightly).

Then both costs are interpolated (log-log) at equal worst-sample error. Methods: torchdiffeq
dopri5 (batch-RMS error norm, as the paper's RK45 on a flattened batch), and our ``ode_adaptive``
dopri5 with ``norm="per_sample"`` (rows finished are masked), ``"batch_rms"`` and ``"batch_max"``.

    python benchmarks/adaptive_batch.py [--quick] [--out bench_out/adaptive_batch]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, plot_metric_vs_nfe, prepare_out_dir, versions, write_json, write_text

import scoresolve as ss
from scoresolve import analytic


def sweep(model: Any, sde: ss.SDE, x_T: torch.Tensor, ref: torch.Tensor, tols: list[float]) -> list[dict[str, Any]]:
    rows = []
    b = x_T.shape[0]
    for tol in tols:
        runs = [
            ("torchdiffeq dopri5 (batch RMS)", "ode", {}),
            ("ours dopri5, per_sample", "ode_adaptive", {"norm": "per_sample"}),
            ("ours dopri5, batch_rms", "ode_adaptive", {"norm": "batch_rms"}),
            ("ours dopri5, batch_max", "ode_adaptive", {"norm": "batch_max"}),
        ]
        for label, solver, kw in runs:
            r = ss.sample(model, sde, solver, x_T=x_T, final="none", rtol=tol, atol=tol, return_result=True, **kw)
            err = (r.samples - ref).reshape(b, -1).pow(2).mean(1).sqrt()
            ps = r.info.get("nfe_per_sample")
            row_evals = int(r.info["row_evals"]) if "row_evals" in r.info else r.nfe * b
            rows.append(
                {
                    "method": label,
                    "tol": tol,
                    "calls": r.nfe,
                    "row_evals": row_evals,
                    "worst_err": float(err.max()),
                    "rms_err": float(err.pow(2).mean().sqrt()),
                    "nfe_min": int(ps.min()) if ps is not None else r.nfe,
                    "nfe_max": int(ps.max()) if ps is not None else r.nfe,
                }
            )
            print(
                f"{label:32s} tol {tol:.0e}: calls {r.nfe:5d} row-evals {row_evals:7d} "
                f"worst {rows[-1]['worst_err']:.2e}"
                f" per-sample NFE {rows[-1]['nfe_min']}-{rows[-1]['nfe_max']}",
                flush=True,
            )
    return rows


def at_error(rows: list[dict[str, Any]], method: str, target: float, key: str) -> float | None:
    """Cost ``key`` at worst-sample error ``target``, log-log interpolated along the tolerance sweep."""
    pts = sorted((r["worst_err"], r[key]) for r in rows if r["method"] == method)
    for (e1, c1), (e2, c2) in zip(pts, pts[1:], strict=False):
        if e1 <= target <= e2 and e1 > 0 and e2 > e1:
            w = (math.log(target) - math.log(e1)) / (math.log(e2) - math.log(e1))
            return math.exp(math.log(c1) + w * (math.log(c2) - math.log(c1)))
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None, help="batch size (default 64, quick 16)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = prepare_out_dir(args.out, "adaptive_batch")
    n = args.n or (16 if args.quick else 64)
    tols = [1e-3, 1e-4, 1e-5] if args.quick else [3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6]
    probs = {"aniso16_vp": (analytic.anisotropic(16), ss.VPSDE())}
    if not args.quick:
        probs["digits_vp"] = (analytic.digits(), ss.VPSDE())
    rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for name, (mix, sde) in probs.items():
        model = mix.score_model(sde)
        x_T = sde.prior_sample((n, *mix.event_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        ref = ss.sample(model, sde, "ode", x_T=x_T, final="none", rtol=1e-10, atol=1e-10)
        print(f"== {name}, batch {n}")
        rs = sweep(model, sde, x_T, ref, tols)
        for r in rs:
            r["problem"] = name
        rows += rs
        for target in (1e-3, 1e-4):
            entry: dict[str, Any] = {"problem": name, "worst_err": target}
            for m in sorted({r["method"] for r in rs}):
                entry[f"{m} calls"] = at_error(rs, m, target, "calls")
                entry[f"{m} row-evals"] = at_error(rs, m, target, "row_evals")
            summary.append(entry)
    meta = {
        "machine": machine_info(),
        "versions": versions(),
        "n": n,
        "command": " ".join(["python", "benchmarks/adaptive_batch.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    write_json(out / "results.json", {"meta": meta, "rows": rows, "at_equal_worst_error": summary})
    md = markdown_table(
        rows,
        [
            ("problem", "problem"),
            ("method", "method"),
            ("tol", "rtol=atol"),
            ("calls", "calls"),
            ("row_evals", "row-evals"),
            ("worst_err", "worst-sample err"),
            ("rms_err", "RMS err"),
            ("nfe_min", "min NFE/sample"),
            ("nfe_max", "max NFE/sample"),
        ],
    )
    methods = sorted({r["method"] for r in rows})
    md += "\nAt equal worst-sample error (log-log interpolation along the tolerance sweep):\n\n"
    md += markdown_table(
        summary,
        [("problem", "problem"), ("worst_err", "worst err")]
        + [(f"{m} {k}", f"{m}: {k}") for m in methods for k in ("calls", "row-evals")],
    )
    md += f"\nMachine: {meta['machine']['processor']}, torch threads 1. Command: `{meta['command']}`\n"
    write_text(out / "results.md", md)
    for prob in probs:
        series = {
            f"{m} (calls)": [(r["calls"], r["worst_err"]) for r in rows if r["method"] == m and r["problem"] == prob]
            for m in methods
        }
        plot_metric_vs_nfe(
            out / f"{prob}.png",
            series,
            ylabel="worst-sample RMSE vs reference",
            title=f"per-sample vs shared step size, {prob}, batch {n}",
        )
    print(f"wrote {out}/results.json, results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
