"""Stochastic samplers on the exact digits mixture under VP (``--sde`` for VE / sub-VP): quality against the score
evaluations spent.

Methods: the paper's PC sampler (reverse diffusion + Langevin, snr 0.16), Euler–Maruyama (``pc`` with
``predictor="euler_maruyama", corrector="none"``), SDE-DPM-Solver++(2M) and (3M) on a log-SNR grid,
and Gotta Go Fast with each step-size controller (``batch_rms``, ``batch_max``, ``per_sample``) over
a sweep of ``rtol`` (its default tolerance ``atol + rtol * sigma_t`` with steps in log-SNR), beside
the paper's rule (``tolerance="state", variable="t", hold_after_reject=False``: tolerance on |x|,
steps in t) and the paper's tolerance with steps in log-SNR (``tolerance="state"``), both over a
sweep of ``(rtol, atol)``. Every method is run on ``--seeds`` independent noise seeds with ``n``
samples.

Metrics (64-D mixture fitted to the 8×8 digits, exact score, data in [-1, 1]):
- FD / floor: Fréchet distance of the samples to the exact moments, divided by the mean FD of
  ``--floor-draws`` exact draws of the same size (1.0 is perfect); reported as the worst and the mean
  over seeds;
- Δ log p0: mean log p0 of the samples minus the exact expectation E[log p0] (from 20 000 exact
  samples); 0 is perfect, positive means over-concentrated samples;
- NFE: model calls (final denoising included). For ``per_sample`` the row-evaluations (rows pushed
  through the model, divided by n) are given beside them: a call on fewer rows is cheaper on a GPU
  only if the batch is large enough to be compute-bound.

Summary per method: the smallest NFE at which the worst seed is ≤ 2× the floor, and the best
result at ≤ 15 and ≤ 30 NFE (the issue's bars: ≤ 2× at ≤ 15 NFE; ≤ 1.2× with |Δ log p0| ≤ 1 at ≤ 30
NFE; the adaptive solver ≤ 2× at ≤ 40 NFE).

Usage::

    python benchmarks/stochastic.py            # full run, n = 2000, 3 seeds (≈ 10–20 min on one CPU core)
    python benchmarks/stochastic.py --quick    # n = 500, 1 seed, short sweeps
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    machine_info,
    markdown_table,
    plot_metric_vs_nfe,
    prepare_out_dir,
    versions,
    write_json,
    write_text,
)

import scoresolve as ss  # noqa: E402
from scoresolve.metrics import frechet_floor, frechet_to_moments  # noqa: E402


def methods(quick: bool) -> list[tuple[str, str, list[tuple[Any, dict[str, Any]]]]]:
    """``(label, solver, [(steps, options), ...])``; steps None for adaptive solvers."""
    pc_steps = [10, 25, 50] if quick else [10, 25, 50, 75, 100, 150, 200]
    em_steps = [10, 25, 50] if quick else [10, 20, 30, 40, 50, 75, 100]
    dpm_steps = [5, 10, 15, 20, 30] if quick else [5, 8, 10, 12, 15, 20, 25, 30, 40]
    tols = (
        [(0.1, 0.1), (0.05, 0.0078)]
        if quick
        else [(0.3, 0.045), (0.2, 0.03), (0.16, 0.16), (0.12, 0.12), (0.1, 0.1), (0.05, 0.05), (0.05, 0.0078)]
    )
    # Gotta Go Fast's defaults: tolerance atol + rtol * sigma_t, steps in log-SNR, no growth after a rejection
    noise_rtols = [0.7, 1.0, 1.5] if quick else [0.5, 0.7, 0.85, 1.0, 1.2, 1.5, 2.0]
    paper = {"tolerance": "state", "variable": "t", "hold_after_reject": False}
    out: list[tuple[str, str, list[tuple[Any, dict[str, Any]]]]] = [
        ("pc (reverse diffusion + langevin)", "pc", [(n, {}) for n in pc_steps]),
        (
            "euler_maruyama",
            "pc",
            [(n, {"predictor": "euler_maruyama", "corrector": "none"}) for n in em_steps],
        ),
        ("sde_dpmpp_2m", "sde_dpmpp_2m", [(k, {}) for k in dpm_steps]),
        ("sde_dpmpp_3m", "sde_dpmpp_3m", [(k, {}) for k in dpm_steps]),
    ]
    for norm in ("batch_rms", "batch_max", "per_sample"):
        out.append((f"gotta_go_fast {norm}", "gotta_go_fast", [(None, {"norm": norm, "rtol": r}) for r in noise_rtols]))
    # the paper's rule (tolerance on |x|, steps in t), and the same tolerance with steps in log-SNR
    out.append(
        (
            "gotta_go_fast paper rule batch_rms",
            "gotta_go_fast",
            [(None, {"norm": "batch_rms", "rtol": r, "atol": a, **paper}) for r, a in tols],
        )
    )
    out.append(
        (
            "gotta_go_fast state tol + log-SNR batch_rms",
            "gotta_go_fast",
            [(None, {"norm": "batch_rms", "rtol": r, "atol": a, "tolerance": "state"}) for r, a in tols],
        )
    )
    return out


def _best(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    return min(runs, key=lambda r: r["fd_ratio_max"]) if runs else None


def _setting(run: dict[str, Any] | None) -> Any:
    if run is None:
        return None
    if run["steps"] is not None:
        return run["steps"]
    return _tol_tag(run["options"])


def _tol_tag(opts: dict[str, Any]) -> str:
    """``rtol=…, atol=…`` of an adaptive run (atol omitted where the solver's default is used)."""
    return ", ".join(f"{k}={opts[k]}" for k in ("rtol", "atol") if k in opts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="n = 500, one seed, short sweeps")
    p.add_argument("--n", type=int, default=None, help="samples per run (default 2000; 500 with --quick)")
    p.add_argument("--seeds", type=int, default=None, help="noise seeds per configuration (default 3; 1 with --quick)")
    p.add_argument("--floor-draws", type=int, default=None, help="exact draws for the floor (default 50)")
    p.add_argument("--only", default=None, help="run only methods whose label contains this text")
    p.add_argument("--out", default=None, help="output folder (default bench_out/stochastic/)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument(
        "--sde",
        choices=("vp", "ve", "subvp"),
        default="vp",
        help="forward SDE (default vp, the issue's setting; ve: sigma in [0.01, 50]; subvp: beta in [0.1, 20])",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.n or (500 if args.quick else 2000)
    n_seeds = args.seeds or (1 if args.quick else 3)
    draws = args.floor_draws or (20 if args.quick else 50)
    if n < 2 or n_seeds < 1 or draws < 2:
        raise SystemExit("error: --n >= 2, --seeds >= 1 and --floor-draws >= 2 are required")
    out = prepare_out_dir(args.out, "stochastic")

    gm = ss.analytic.digits()
    sde = {
        "vp": lambda: ss.VPSDE(beta_min=0.1, beta_max=20.0),
        "ve": lambda: ss.VESDE(sigma_min=0.01, sigma_max=50.0),
        "subvp": lambda: ss.SubVPSDE(beta_min=0.1, beta_max=20.0),
    }[args.sde]()
    sde_tag = {"vp": "VP", "ve": "VE", "subvp": "sub-VP"}[args.sde]
    model = gm.score_model(sde)
    mean, cov = gm.moments()
    t0 = time.perf_counter()
    floor, floor_se = frechet_floor(lambda k, g: gm.sample(k, g), mean, cov, n, draws=draws)
    ref = gm.sample(20_000, torch.Generator().manual_seed(2024), dtype=torch.float64)
    logp_exact = float(gm.log_prob(ref).mean())
    print(f"floor (n={n}, {draws} draws): {floor:.5f} ± {floor_se:.5f}; E[log p0] = {logp_exact:.3f}", flush=True)

    runs: list[dict[str, Any]] = []
    for label, solver, configs in methods(args.quick):
        if args.only and args.only not in label:
            continue
        for steps, opts in configs:
            fds, lps, nfes, rows = [], [], [], []
            secs = 0.0
            for s in range(n_seeds):
                res = ss.sample(
                    model,
                    sde,
                    solver,
                    steps,
                    batch_size=n,
                    return_result=True,
                    generator=torch.Generator().manual_seed(1000 + s),
                    **opts,
                )
                x = res.samples
                finite = bool(torch.isfinite(x).all())
                fds.append(frechet_to_moments(x, mean, cov) / floor if finite else float("inf"))
                lps.append(float(gm.log_prob(x.double()).mean()) - logp_exact if finite else float("-inf"))
                nfes.append(res.nfe)
                re_ = res.info.get("row_evaluations")
                if re_ is None:
                    rows.append(float(res.nfe))
                else:  # the solver's rows plus the final denoising call on all rows
                    rows.append((re_ + n * (res.nfe - 2 * res.info["attempted_steps"])) / n)
                secs += res.seconds
            run = {
                "method": label,
                "solver": solver,
                "steps": steps,
                "options": opts,
                "nfe": sum(nfes) / n_seeds,
                "nfe_max": max(nfes),
                "row_evals_per_sample": sum(rows) / n_seeds,
                "fd_ratio_max": max(fds),
                "fd_ratio_mean": sum(fds) / n_seeds,
                "dlogp_mean": sum(lps) / n_seeds,
                "fd_ratio_seeds": fds,
                "dlogp_seeds": lps,
                "seconds": secs / n_seeds,
            }
            runs.append(run)
            tag = f"steps={steps}" if steps is not None else _tol_tag(opts)
            print(
                f"{label:38s} {tag:24s} NFE {run['nfe']:7.1f}  FD/floor max {run['fd_ratio_max']:8.3f} "
                f"mean {run['fd_ratio_mean']:8.3f}  Δlog p0 {run['dlogp_mean']:+9.3f}",
                flush=True,
            )

    summary = []
    for label in dict.fromkeys(r["method"] for r in runs):
        rs = sorted((r for r in runs if r["method"] == label), key=lambda r: r["nfe_max"])
        ok2 = [r for r in rs if r["fd_ratio_max"] <= 2.0]
        le15 = [r for r in rs if r["nfe_max"] <= 15]
        le30 = [r for r in rs if r["nfe_max"] <= 30]
        le40 = [r for r in rs if r["nfe_max"] <= 40]
        first = ok2[0] if ok2 else None
        b15, b30, b40 = _best(le15), _best(le30), _best(le40)
        summary.append(
            {
                "method": label,
                "nfe_fd2": first["nfe_max"] if first else None,
                "rows_fd2": first["row_evals_per_sample"] if first else None,
                "fd2_setting": _setting(first),
                "dlogp_fd2": first["dlogp_mean"] if first else None,
                "fd_le15": b15["fd_ratio_max"] if b15 else None,
                "fd_le30": b30["fd_ratio_max"] if b30 else None,
                "dlogp_le30": b30["dlogp_mean"] if b30 else None,
                "nfe_le30": b30["nfe_max"] if b30 else None,
                "fd_le40": b40["fd_ratio_max"] if b40 else None,
            }
        )

    machine = machine_info()
    cmd = "python benchmarks/stochastic.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (
        f"# Stochastic samplers, digits mixture × {sde_tag} (n = {n}, {n_seeds} seed(s), floor from {draws} draws "
        f"= {floor:.5f})\n\nCommand: `{cmd.strip()}`  \nMachine: {machine.get('cpu', machine.get('machine'))}, "
        f"{machine.get('torch_threads', args.threads)} torch thread(s); total {time.perf_counter() - t0:.0f} s\n\n"
    )
    cols_sum = [
        ("method", "method"),
        ("nfe_fd2", "NFE for FD ≤ 2× (worst seed)"),
        ("rows_fd2", "row-evals / sample there"),
        ("fd2_setting", "setting"),
        ("dlogp_fd2", "Δ log p0 there"),
        ("fd_le15", "best FD/floor ≤ 15 NFE"),
        ("fd_le30", "best FD/floor ≤ 30 NFE"),
        ("dlogp_le30", "Δ log p0 there"),
        ("fd_le40", "best FD/floor ≤ 40 NFE"),
    ]
    cols_runs = [
        ("method", "method"),
        ("steps", "steps"),
        ("options", "options"),
        ("nfe", "NFE"),
        ("row_evals_per_sample", "row-evals / sample"),
        ("fd_ratio_max", "FD/floor (worst)"),
        ("fd_ratio_mean", "FD/floor (mean)"),
        ("dlogp_mean", "Δ log p0"),
        ("seconds", "s / run"),
    ]
    table_runs = [dict(r, options=", ".join(f"{k}={v}" for k, v in r["options"].items()) or "—") for r in runs]
    md = (
        header
        + "## Summary\n\n"
        + markdown_table(summary, cols_sum)
        + "\n## All runs\n\n"
        + markdown_table(table_runs, cols_runs)
    )
    write_text(out / "results.md", md)
    write_json(
        out / "results.json",
        {
            "command": cmd.strip(),
            "machine": machine,
            "versions": versions(),
            "n": n,
            "seeds": n_seeds,
            "floor": floor,
            "floor_se": floor_se,
            "floor_draws": draws,
            "sde": args.sde,
            "logp_exact": logp_exact,
            "summary": summary,
            "runs": runs,
        },
    )
    series: dict[str, list[tuple[float, float]]] = {}
    for r in runs:
        series.setdefault(r["method"], []).append((r["nfe"], r["fd_ratio_max"]))
    plot_metric_vs_nfe(
        out / "fd_vs_nfe.png",
        series,
        ylabel="FD / floor (worst seed)",
        title=f"digits × {sde_tag}, n = {n}: stochastic samplers",
        hline=2.0,
        hline_label="2× floor",
    )
    print("\n" + md)
    print(f"wrote {out}/results.md, results.json, fd_vs_nfe.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
