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

Trained networks (``--networks``): the bundled digits network (held-out 8x8 digits, dequantized
``x + u/8``, bits/dim with the 17-level offset +3) and the bundled 28x28 MNIST network (the last 2,000
MNIST test images are held out; ``--mnist`` names the idx file or its folder; dequantized 8-bit, +7).
Reference: dopri5 at rtol = atol = 1e-6. Every method shares the dequantization and the Hutchinson
probes with the reference (common probes), so the bias is the solver's alone; the probes' own
Monte-Carlo standard error is reported beside it. Rows: the budget method at K evaluations
(``likelihood(model, x, steps=K)``) and dopri5 at rtol 1e-5 / 1e-4 / 1e-3.

    python benchmarks/likelihood.py [--quick] [--out bench_out/likelihood]
    python benchmarks/likelihood.py --networks --mnist PATH [--n-mnist 200] [--n-digits 64]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, plot_metric_vs_nfe, prepare_out_dir, versions, write_json, write_text

import scoresolve as ss
from scoresolve import analytic
from scoresolve.likelihood import budget, likelihood

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
    # steps=K: K evaluations in log-SNR time, with an error estimate; the path a network gets (an exact score gets
    # the locally Gaussian frame by default: benchmarks/likelihood_local.py)
    for k in [8, 20] if quick else [8, 12, 16, 20, 30, 40]:
        out.append({"label": f"budget K={k} (log-SNR path)", "steps": k, "precondition": "none"})
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


def run_problem(name: str, prob: dict[str, Any], n: int, quick: bool, seed: int = 1) -> list[dict[str, Any]]:
    mix, sde, eps = prob["mix"], prob["sde"], prob["eps"]
    model = mix.score_model(sde)
    x = mix.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = likelihood(model, sde, x, trace="exact", eps=eps, prior_logp=exact_pT, **kw)
        secs = time.perf_counter() - t0
        err = (a.logp - lp_eps).abs() / (d * LN2)
        logp_prior = a.logp - a.prior_logp + sde.prior_logp(a.z)  # the same run, with the SDE's prior at T
        rows.append(
            {
                "problem": name,
                "label": cfg["label"],
                "nfe": a.nfe,
                "err_solver": bpd_err(a.logp, lp_eps, d),
                "err_eps": bpd_err(logp_prior, lp_eps, d),
                "err_p0": bpd_err(logp_prior, lp_0, d),
                "bracket": None if a.error_bpd is None else float((err <= a.error_bpd).float().mean()),
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


def network_data(name: str, n: int, mnist_path: str | None) -> tuple[Any, torch.Tensor, dict[str, Any], float]:
    """(model, data, likelihood options, bits/dim added to the continuous value)."""
    import scoresolve.io as sio
    from scoresolve.train.data import digits, mnist

    if name == "digits":
        x = digits("test")[:n].to(torch.float32)
        x = x + torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) / 8  # 17 levels, bins 1/8 wide
        return sio.load("digits"), x, {"data_range": None}, 3.0
    if mnist_path is None:
        raise SystemExit("--networks needs --mnist PATH (the MNIST t10k idx file or its folder) for the mnist rows")
    x = mnist(mnist_path, "test")[:n].to(torch.float32)
    return sio.load("mnist"), x, {"dequantize": "uniform"}, 0.0


def network_rows(name: str, n: int, probes: int, ks: list[int], rtols: list[float], mnist_path: str | None,
                 batch: int, caches: list[Path], n_dopri: int | None = None, fill: bool = False,
                 spread_row: bool = True) -> list[dict[str, Any]]:
    """Rows of one network. Every run is kept in a torch file keyed by network, digits, probes, batch and label
    (the budget labels name the method's constants), read from all of ``caches`` and written to the last one,
    so a run can be resumed or split: ``fill`` computes the budget, dopri5 and probe-spread runs without the
    reference. dopri5 runs on the first ``n_dopri`` digits (a multiple of ``batch``; default all)."""
    model, x, opts, add = network_data(name, n, mnist_path)
    store: dict[str, Any] = {}
    for c in caches:
        if c.exists():
            store.update(torch.load(c))
    n_dopri = n if n_dopri is None else min(n, n_dopri)
    if n_dopri < n and n_dopri % batch:
        raise SystemExit(f"--n-dopri must be a multiple of the batch ({batch}): the probes are drawn per batch")
    tag = f"warp {budget.WARP_CENTER},{budget.WARP_WIDTH} gap {budget.GAP_SCALE}"

    def run_many(jobs: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Several runs ``(digits, likelihood options)``, interleaved batch by batch, so that a load which changes
        during the run weighs on every method alike (the CPU comparison)."""
        acc = [{"outs": [], "wall": 0.0, "cpu": 0.0} for _ in jobs]
        for i in range(0, max(m for m, _ in jobs), batch):
            for (m, kw), a in zip(jobs, acc, strict=True):
                if i >= m:
                    continue
                kw = {"fresh_probes": False, **kw}  # one probe along the path, shared with the reference: solver error
                n_probes, seed = kw.pop("n_probes", probes), kw.pop("seed", 1000)
                g = torch.Generator().manual_seed(seed + i)  # the same dequantization and probes for every method
                w0, c0 = time.perf_counter(), time.process_time()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = likelihood(model, x[i : min(i + batch, m)], trace="hutchinson", probes=n_probes,
                                   generator=g, **opts, **kw)
                a["wall"] += time.perf_counter() - w0
                a["cpu"] += time.process_time() - c0
                a["outs"].append(r)
        out = []
        for (m, _), a in zip(jobs, acc, strict=True):
            outs = a["outs"]
            cat = lambda k: torch.cat([getattr(r, k) for r in outs])  # noqa: E731, B023
            est = torch.cat([r.error_bpd for r in outs]) if outs[0].error_bpd is not None else None
            # nfe: the largest batch's count; nfe_mean: evaluations per batch averaged over the batches (every
            # digit of a batch receives its batch's count), the cost a digit pays on average
            out.append({"bpd": cat("bpd") + add, "se": cat("trace_se_bpd"), "est": est,
                        "nfe": max(r.nfe for r in outs), "nfe_mean": sum(r.nfe for r in outs) / len(outs),
                        "wall": a["wall"] / m, "cpu": a["cpu"] / m})
        return out

    def cached(label: str, m: int, **kw: Any) -> dict[str, Any]:
        return fill_cache([(label, m, kw)])[0]

    def fill_cache(jobs: list[tuple[str, int, dict[str, Any]]]) -> list[dict[str, Any]]:
        keys = [f"{name}|{m}|{probes}|{batch}|{label}" for label, m, _ in jobs]
        for key, (label, m, _) in zip(keys, jobs, strict=True):  # the first m digits of a longer run, same batches
            longer = [k for k in store if k.startswith(f"{name}|") and k.endswith(f"|{probes}|{batch}|{label}")
                      and int(k.split("|")[1]) > m]
            if key not in store and longer and m % batch == 0:
                r = store[longer[0]]
                store[key] = {**r, **{f: None if r[f] is None else r[f][:m] for f in ("bpd", "se", "est")}}
        todo = [(key, (m, kw)) for key, (_, m, kw) in zip(keys, jobs, strict=True) if key not in store]
        if todo:
            store.update(zip([k for k, _ in todo], run_many([j for _, j in todo]), strict=True))
            if caches:
                torch.save(store, caches[-1])
        return [store[k] for k in keys]

    cfgs = [(f"budget K={k}", n, {"steps": k}) for k in ks]
    cfgs += [(f"dopri5 rtol={t:g}", n_dopri, {"rtol": t, "atol": t}) for t in rtols]
    spread_label = "probe spread: budget K=20, 8 probes"
    key_of = lambda label: f"{label} ({tag})" if label.startswith("budget") else label  # noqa: E731
    fill_cache([(key_of(label), m, kw) for label, m, kw in cfgs])  # the uncached ones, interleaved
    if fill:
        if spread_row:
            cached(key_of(spread_label), n, n_probes=8, seed=5000, steps=20)
        return []
    ref = cached("reference", n, rtol=1e-6, atol=1e-6)
    rows = []
    se_data = float(ref["bpd"].std() / math.sqrt(n))
    print(f"{name}: reference dopri5 1e-6: {float(ref['bpd'].mean()):.4f} bits/dim (SE over digits {se_data:.4f}), "
          f"NFE {ref['nfe']}", flush=True)
    errs: dict[str, torch.Tensor] = {}
    for label, m, kw in [("reference dopri5 rtol=1e-6", n, None), *cfgs]:
        r = ref if kw is None else cached(key_of(label), m, **kw)
        e = errs[label] = r["bpd"] - ref["bpd"][:m]
        row = {
            "network": name, "n": m, "probes": probes, "label": label, "nfe": r["nfe"], "nfe_mean": r.get("nfe_mean"),
            "vjp_per_digit": r["nfe"] * probes, "bpd": float(r["bpd"].mean()), "bias": float(e.mean()),
            "bias_sd": float(e.std()), "bias_se": float(e.std() / math.sqrt(m)), "mean_abs_err": float(e.abs().mean()),
            "mean_abs_err_se": float(e.abs().std() / math.sqrt(m)),
            "bracket": None if r["est"] is None else float((e.abs() <= r["est"]).float().mean()),
            "est_mean": None if r["est"] is None else float(r["est"].mean()),
            "probe_se": float(r["se"].mean()), "wall_s_per_digit": r["wall"], "cpu_s_per_digit": r["cpu"],
        }
        if m < n:  # the same digits' budget and reference means, for a like-for-like comparison
            row["ref_bpd_same_digits"] = float(ref["bpd"][:m].mean())
        rows.append(row)
        print(f"{name:6s} {label:28s} n {m} NFE {row['nfe']:4d} bpd {row['bpd']:.4f} bias {row['bias']:+.5f} "
              f"(sd {row['bias_sd']:.4f}, mean |err| {row['mean_abs_err']:.5f}) bracket {row['bracket']} "
              f"est {row['est_mean']} wall {row['wall_s_per_digit']:.3f} s/digit cpu {row['cpu_s_per_digit']:.3f}",
              flush=True)
    rows += paired_rows(name, errs, {label: cached(key_of(label), m, **kw) for label, m, kw in cfgs})
    if not spread_row:
        return rows
    # the probes' own Monte-Carlo error, which the common probes remove from the bias: 8 fresh probes per digit
    spread = cached(key_of(spread_label), n, n_probes=8, seed=5000, steps=20)
    sd_one = float((spread["se"] * math.sqrt(8)).pow(2).mean().sqrt())
    rows.append({"network": name, "n": n, "probes": 8, "label": spread_label,
                 "nfe": spread["nfe"], "bpd": float(spread["bpd"].mean()), "probe_se": float(spread["se"].mean()),
                 "probe_sd_one": sd_one, "ref_mean_probe_se": sd_one / math.sqrt(n * probes),
                 "wall_s_per_digit": spread["wall"], "cpu_s_per_digit": spread["cpu"]})
    print(f"{name}: one probe's SD per digit {sd_one:.4f} bits/dim; the reference's dataset mean ({n} digits, "
          f"{probes} probe(s)) has a probe SE of {sd_one / math.sqrt(n * probes):.4f}", flush=True)
    return rows


def _nfe(run: dict[str, Any]) -> float:
    """Evaluations per digit: the mean over batches where the run recorded it (older caches kept the largest)."""
    return run.get("nfe_mean") or run["nfe"]


def paired_rows(name: str, errs: dict[str, torch.Tensor], runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each budget row against each dopri5 row on their common digits (the first ``n`` of the dopri5 run):
    the differences of |error| and of the error, digit by digit, with their standard errors, and the
    ratios of evaluations and of CPU time (dopri5 / budget)."""
    out = []
    for lb, eb in errs.items():
        if not lb.startswith("budget"):
            continue
        for ld, ed in errs.items():
            if not ld.startswith("dopri5"):
                continue
            m = min(len(eb), len(ed))
            da, ds = eb[:m].abs() - ed[:m].abs(), eb[:m] - ed[:m]
            row = {"network": name, "n": m, "label": f"paired: {lb} minus {ld}",
                   "abs_err_diff": float(da.mean()), "abs_err_diff_se": float(da.std() / math.sqrt(m)),
                   "err_diff": float(ds.mean()), "err_diff_se": float(ds.std() / math.sqrt(m)),
                   "nfe_ratio": _nfe(runs[ld]) / _nfe(runs[lb]), "cpu_ratio": runs[ld]["cpu"] / runs[lb]["cpu"]}
            out.append(row)
            print(f"{name:6s} {row['label']:52s} n {m}: mean |err| diff {row['abs_err_diff']:+.2e} "
                  f"(SE {row['abs_err_diff_se']:.1e}), err diff {row['err_diff']:+.2e} (SE {row['err_diff_se']:.1e}), "
                  f"NFE ratio {row['nfe_ratio']:.2f}, CPU ratio {row['cpu_ratio']:.2f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples and configurations")
    ap.add_argument("--n", type=int, default=None, help="samples per problem (default 64, quick 8)")
    ap.add_argument("--out", default=None, help="output folder (default bench_out/likelihood)")
    ap.add_argument("--only", default=None, help="run only configurations whose label contains this text")
    ap.add_argument("--networks", action="store_true", help="the trained-network rows only (bundled digits, MNIST)")
    ap.add_argument("--mnist", default=None, help="MNIST t10k images (idx, .gz) or their folder, for --networks")
    ap.add_argument("--n-mnist", type=int, default=200, help="held-out MNIST digits (default 200, quick 8)")
    ap.add_argument("--n-digits", type=int, default=64, help="held-out 8x8 digits (default 64, quick 8)")
    ap.add_argument("--probes", type=int, default=1, help="Hutchinson probes, common to every method (default 1)")
    ap.add_argument("--ks", default="8,12,16,20,30,40,60,80", help="budget rows' K, comma-separated ('' for none)")
    ap.add_argument("--cache", default=None,
                    help="torch files keeping every run (comma-separated: read all, write the last)")
    ap.add_argument("--n-dopri", type=int, default=None, help="dopri5 rows on the first N digits (default all)")
    ap.add_argument("--no-dopri", action="store_true", help="no dopri5 rows (only the reference and the budget)")
    ap.add_argument("--rtols", default="1e-5,1e-3", help="dopri5 rows' rtol = atol, comma-separated")
    ap.add_argument("--no-spread", action="store_true", help="no probe-spread row (8 probes at K = 20)")
    ap.add_argument("--fill", action="store_true", help="compute and cache the budget, dopri5 and spread runs only")
    ap.add_argument("--seed", type=int, default=1, help="seed of the mixtures' samples (default 1)")
    ap.add_argument("--warp", default=None,
                    help="the budget nodes' warp 'C,W' (lambda = C + W sinh v) instead of budget.WARP_CENTER, WIDTH")
    ap.add_argument("--batch", type=int, default=25, help="MNIST digits per call (default 25; 1: one at a time)")
    args = ap.parse_args(argv)
    if args.warp:
        budget.WARP_CENTER, budget.WARP_WIDTH = (float(v) for v in args.warp.split(","))
    if args.networks:
        return networks_main(args, argv)
    global ONLY
    ONLY = args.only
    torch.set_num_threads(1)
    out = prepare_out_dir(args.out, "likelihood")
    n = args.n or (8 if args.quick else 64)
    rows: list[dict[str, Any]] = []
    for name, prob in problems(args.quick).items():
        rows += run_problem(name, prob, n, args.quick, args.seed)
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
        ("bracket", "bracketed (err <= estimate)"),
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


def networks_main(args: argparse.Namespace, argv: list[str] | None) -> int:
    torch.set_num_threads(1)
    out = prepare_out_dir(args.out, "likelihood_networks")
    ks = [8, 16] if args.quick else [int(k) for k in args.ks.split(",") if k.strip()]
    caches = [Path(c) for c in args.cache.split(",")] if args.cache else []
    rtols = [] if args.no_dopri else [1e-3] if args.quick else [float(t) for t in args.rtols.split(",") if t.strip()]
    rows: list[dict[str, Any]] = []
    nd, nm = (8, 8) if args.quick else (args.n_digits, args.n_mnist)
    if nm > 0 and (args.mnist is not None or not args.quick):  # MNIST first: the longer one (--n-dopri applies to it)
        rows += network_rows("mnist", nm, args.probes, ks, rtols, args.mnist, args.batch, caches, args.n_dopri,
                             args.fill, not args.no_spread)
    if nd > 0:
        rows += network_rows("digits", nd, args.probes, ks, rtols, None, 64, caches, None, args.fill,
                             not args.no_spread)
    if args.fill:
        return 0
    meta = {
        "machine": machine_info(),
        "versions": versions(),
        "command": " ".join(["python", "benchmarks/likelihood.py", *(argv if argv is not None else sys.argv[1:])]),
        "load_note": "wall times on a shared 2-core machine under load: compare the CPU column",
    }
    write_json(out / "results.json", {"meta": meta, "rows": rows})  # the paired rows among them
    cols = [("network", "network"), ("n", "digits"), ("label", "method"), ("nfe", "NFE (largest batch)"),
            ("nfe_mean", "NFE (mean over batches)"), ("bpd", "bits/dim"),
            ("bias", "bias vs ref"), ("bias_se", "SE of bias"), ("mean_abs_err", "mean abs error"),
            ("mean_abs_err_se", "SE of mean abs error"), ("bias_sd", "sd of error"),
            ("bracket", "bracketed (err <= estimate)"),
            ("est_mean", "mean estimate"), ("probe_se", "probes' SE"), ("probe_sd_one", "one probe's SD"),
            ("wall_s_per_digit", "wall s/digit"),
            ("cpu_s_per_digit", "CPU s/digit")]
    paired = [r for r in rows if r["label"].startswith("paired")]
    rows = [r for r in rows if not r["label"].startswith("paired")]
    pcols = [("network", "network"), ("n", "digits"), ("label", "comparison"), ("abs_err_diff", "mean abs error diff"),
             ("abs_err_diff_se", "SE"), ("err_diff", "error diff"), ("err_diff_se", "SE "),
             ("nfe_ratio", "NFE ratio (dopri5 / budget, mean over batches)"),
             ("cpu_ratio", "CPU ratio (dopri5 / budget)")]
    md = markdown_table(rows, cols) + "\n" + (markdown_table(paired, pcols) if paired else "")
    md += f"\nCommand: `{meta['command']}` ({meta['load_note']}).\n"
    write_text(out / "results.md", md)
    for net in sorted({r["network"] for r in rows}):
        series = {
            "budget (steps=K)": [(r["nfe"], abs(r["bias"]) + 1e-5) for r in rows
                                 if r["network"] == net and r["label"].startswith("budget")],
            "dopri5 (rtol sweep)": [(r["nfe"], abs(r["bias"]) + 1e-5) for r in rows
                                    if r["network"] == net and r["label"].startswith("dopri5")],
        }
        plot_metric_vs_nfe(out / f"{net}.png", series, ylabel="|mean bias| vs dopri5 1e-6 (bits/dim)",
                           title=f"likelihood on the bundled {net} network", hline=0.01, hline_label="0.01 bpd")
    print(f"wrote {out}/results.json, results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
