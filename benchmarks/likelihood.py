"""Bits/dim error against the exact log-density, and its cost in score evaluations.

Problems (exact score and density, :mod:`scoresolve.analytic`):

- ``digits``: the 64-D digits mixture under VP (beta 0.1-20), start time eps = 1e-5 (the paper's
  likelihood setting), exact trace;
- ``aniso16_ve``: a 16-D anisotropic mixture (thin directions, variances 1e-3..0.5) under VE
  (sigma 0.01..50), eps = 1e-5, exact trace.

Every row reports the mean |error| in bits/dim of log p_eps(x) (the solver's own target: the density
at its start time) with the exact p_T at the end ("solver"), and with the SDE's prior, against log p_eps
and against log p0 (what a user sees: solver + prior mismatch + start-time offset). The paper's
approach (dopri5 at rtol = atol = 1e-5, i.e. RK45) sits beside our fixed-step methods on several grids,
with and without the local-Gaussian preconditioning. A Hutchinson section measures the per-sample
standard error of one probe and the probes x evaluations for a dataset-level 0.001 bits/dim on 10k
samples.

    python benchmarks/likelihood.py [--quick] [--out bench_out/likelihood]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, plot_metric_vs_nfe, prepare_out_dir, versions, write_json, write_text

import scoresolve as ss
from scoresolve import analytic
from scoresolve.likelihood import likelihood

LN2 = math.log(2)
ONLY: str | None = None

# Grids calibrated once on 8 digits samples (seed 7, disjoint from the evaluation samples) by Nelder-Mead
# on the interior times, with precondition="local" and the exact p_T (solver error only); see docs/likelihood.md.
CALIBRATED: dict[str, list[float]] = {}


def problems(quick: bool) -> dict[str, dict[str, Any]]:
    return {
        "digits_vp": {"mix": analytic.digits(), "sde": ss.VPSDE(), "eps": 1e-5},
        "aniso16_ve": {"mix": analytic.anisotropic(16), "sde": ss.VESDE(sigma_min=0.01, sigma_max=50.0), "eps": 1e-5},
    }


def configs(quick: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    tols = [1e-5, 1e-3, 1e-2] if quick else [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    for tol in tols:
        out.append(
            {
                "label": f"dopri5 rtol=atol={tol:g}" + (" (paper)" if tol == 1e-5 else ""),
                "method": "dopri5",
                "rtol": tol,
                "atol": tol,
            }
        )
    fixed = (
        [("rk4", 5), ("heun", 10), ("rk4", 10)]
        if quick
        else [("rk4", 5), ("heun", 10), ("rk4", 10), ("heun", 20), ("rk4", 20)]
    )
    grids = ["quadratic", "karras"] if quick else ["uniform", "quadratic", "log_snr", "karras"]
    for method, steps in fixed:
        for grid in grids:
            for pc in ("none", "local"):
                out.append(
                    {
                        "label": f"{method} {steps} steps, {grid}" + (", local" if pc == "local" else ""),
                        "method": method,
                        "steps": steps,
                        "grid": grid,
                        "precondition": pc,
                    }
                )
    # Adams PEC in re-fitted local coordinates: one evaluation per step
    for steps, grid, go in [(20, "power", {"rho": 1.5}), (20, "quadratic", {}), (20, "karras", {}), (40, "karras", {})]:
        if quick and steps == 40:
            continue
        label = f"adams {steps} steps, {grid}" + (f" rho={go['rho']}" if go else "") + ", local (re-fit)"
        cfg: dict[str, Any] = {"label": label, "method": "adams", "steps": steps, "grid": grid}
        cfg.update(precondition="local", grid_options=go or None)
        out.append(cfg)
    for key, grid in CALIBRATED.items():
        method = key.split("_")[0]
        out.append(
            {
                "label": f"{method} {len(grid) - 1} steps, calibrated, local",
                "method": method,
                "grid": grid,
                "precondition": "local",
            }
        )
    return out


def bpd_err(logp: torch.Tensor, ref: torch.Tensor, d: int) -> float:
    return float(((logp - ref).abs() / (d * LN2)).mean())


def run_problem(name: str, prob: dict[str, Any], n: int, quick: bool) -> list[dict[str, Any]]:
    mix, sde, eps = prob["mix"], prob["sde"], prob["eps"]
    model = mix.score_model(sde)
    x = mix.sample(n, torch.Generator().manual_seed(1), dtype=torch.float64)
    d = mix.dim
    lp_eps, lp_0 = mix.log_prob(x, eps, sde), mix.log_prob(x)
    exact_pT = lambda z: mix.log_prob(z, sde.T, sde)  # noqa: E731
    rows = []
    for cfg in configs(quick):
        if ONLY and ONLY not in cfg["label"]:
            continue
        kw = {k: v for k, v in cfg.items() if k != "label"}
        if name != "digits_vp" and isinstance(kw.get("grid"), list):
            continue
        t0 = time.perf_counter()
        a = likelihood(model, sde, x, trace="exact", eps=eps, prior_logp=exact_pT, **kw)
        secs = time.perf_counter() - t0
        logp_prior = a.logp - a.prior_logp + sde.prior_logp(a.z)  # the same run, with the SDE's prior at T
        rows.append(
            {
                "problem": name,
                "label": cfg["label"],
                "nfe": a.nfe,
                "err_solver": bpd_err(a.logp, lp_eps, d),
                "err_eps": bpd_err(logp_prior, lp_eps, d),
                "err_p0": bpd_err(logp_prior, lp_0, d),
                "seconds": round(secs, 2),
            }
        )
        r = rows[-1]
        print(
            f"{name:11s} {cfg['label']:40s} NFE {r['nfe']:4d}  solver {r['err_solver']:.2e}  "
            f"vs p_eps {r['err_eps']:.2e}  vs p0 {r['err_p0']:.2e}",
            flush=True,
        )
    return rows


def hutchinson(n: int, reps: int) -> list[dict[str, Any]]:
    """Per-sample standard error of one Hutchinson probe (bits/dim) on the digits mixture."""
    mix, sde = analytic.digits(), ss.VPSDE()
    model = mix.score_model(sde)
    x = mix.sample(n, torch.Generator().manual_seed(1), dtype=torch.float64)
    xr = x.repeat_interleave(reps, 0)
    rows = []
    for noise in ("rademacher", "gaussian"):
        kw = {"method": "rk4", "steps": 10, "grid": "quadratic"}
        exact = likelihood(model, sde, x, trace="exact", **kw)
        h = likelihood(
            model, sde, xr, trace="hutchinson", noise=noise, generator=torch.Generator().manual_seed(0), **kw
        )
        bpd = h.bpd.reshape(n, reps)
        sd = float(bpd.std(1).pow(2).mean().sqrt())  # per-sample SD of one probe, RMS over samples
        bias = float((bpd.mean(1) - exact.bpd).mean())
        # dataset mean over N samples with P probes each: SE = sd / sqrt(P N); need SE <= 0.001/2 (2 SE)
        n_data = 10_000
        probes_needed = max(1, math.ceil((sd / (0.0005 * math.sqrt(n_data))) ** 2))
        rows.append(
            {
                "noise": noise,
                "sd_one_probe_bpd": sd,
                "mean_minus_exact_bpd": bias,
                "probes_for_0.001_on_10k": probes_needed,
                "nfe": h.nfe,
                "probes_x_nfe": probes_needed * h.nfe,
            }
        )
        print(
            f"hutchinson {noise:10s} per-sample SD {sd:.4f} bpd (1 probe); probes for 0.001 bpd (2 SE) over "
            f"10k samples: {probes_needed} x {h.nfe} NFE",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples and configurations")
    ap.add_argument("--n", type=int, default=None, help="samples per problem (default 64, quick 8)")
    ap.add_argument("--out", default=None, help="output folder (default bench_out/likelihood)")
    ap.add_argument("--only", default=None, help="run only configurations whose label contains this text")
    args = ap.parse_args(argv)
    global ONLY
    ONLY = args.only
    torch.set_num_threads(1)
    out = prepare_out_dir(args.out, "likelihood")
    n = args.n or (8 if args.quick else 64)
    rows: list[dict[str, Any]] = []
    for name, prob in problems(args.quick).items():
        rows += run_problem(name, prob, n, args.quick)
    hut = [] if args.only else hutchinson(4 if args.quick else 16, 16 if args.quick else 64)
    meta = {
        "machine": machine_info(),
        "versions": versions(),
        "n": n,
        "quick": args.quick,
        "command": " ".join(["python", "benchmarks/likelihood.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    write_json(out / "results.json", {"meta": meta, "rows": rows, "hutchinson": hut})
    cols = [
        ("problem", "problem"),
        ("label", "method"),
        ("nfe", "NFE"),
        ("err_solver", "solver err (exact p_T)"),
        ("err_eps", "vs log p_eps"),
        ("err_p0", "vs log p0"),
        ("seconds", "s"),
    ]
    md = (
        markdown_table(rows, cols)
        + "\n"
        + markdown_table(
            hut,
            [
                ("noise", "probe"),
                ("sd_one_probe_bpd", "per-sample SD, 1 probe (bpd)"),
                ("mean_minus_exact_bpd", "mean - exact (bpd)"),
                ("probes_for_0.001_on_10k", "probes for 0.001 on 10k"),
                ("probes_x_nfe", "probes x NFE"),
            ],
        )
    )
    md += f"\nMachine: {meta['machine']['processor']}, torch threads 1. Command: `{meta['command']}`\n"
    write_text(out / "results.md", md)
    for prob in {r["problem"] for r in rows}:
        series: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            if r["problem"] != prob:
                continue
            key = (
                "dopri5 (rtol sweep)"
                if r["label"].startswith("dopri5")
                else r["label"].split(" steps")[0]
                + (" local" if "local" in r["label"] else "")
                + (" " + r["label"].split(", ")[1] if ", " in r["label"] else "")
            )
            series.setdefault(key, []).append((r["nfe"], r["err_solver"]))
        plot_metric_vs_nfe(
            out / f"{prob}.png",
            series,
            ylabel="mean |error| (bits/dim, exact p_T)",
            title=f"likelihood error vs NFE, {prob}",
            hline=1e-3,
            hline_label="0.001 bpd",
        )
    print(f"wrote {out}/results.json, results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
