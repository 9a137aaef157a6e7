"""Few-step deterministic samplers at 5 / 10 / 20 score evaluations on exact Gaussian mixtures.

For each problem (digits × VP, digits × VE, 16-D anisotropic × VE), budget and method:

- FD / floor: Fréchet distance of ``n`` samples to the exact moments over the mean FD of ``n`` exact
  samples (floor from ``--floor-draws`` ≥ 50 draws);
- log p0 gap: mean exact log-density of the samples minus that of exact samples (≈ 0 is right;
  positive = over-concentrated, negative = too spread);
- RMSE vs reference: per-sample RMSE against a tight reference PF-ODE solution from the same prior
  noise (4th-order Adams, 200 log-SNR steps; to the method's own endpoint: eps, or σ = 0), mean and median;
- FD of the reference itself (the exact PF-ODE from the same noise) for the VE criterion, and the
  paired figures FD / FD(exact ODE) and Δ log p0 vs the exact ODE from the same noise (the mean log p0
  of 2000 samples moves by ±0.3 nats between noise seeds, so the paired gap is the one that resolves
  a 0.2-nat bar);
- calibration cost (evaluations, seconds), calibrated on its own noise stream and evaluated on
  ``--seeds`` independent sampling seeds.

Methods (``--methods``): ``auto`` (``solver="auto"`` as a user gets it: Gaussian first step with the data's
moments estimated during calibration), ``auto+gauss`` (the exact moments of the mixture given as
``gaussian_prior``), ``auto, no gaussian step`` (``gaussian_prior=None``), the calibrated solver variants
and the peer-equivalent rows (see ``METHODS``).

Usage::

    python benchmarks/fewstep.py            # full: n = 2000, seeds 0 1 2, budgets 5 10 20
    python benchmarks/fewstep.py --quick    # n = 500, one seed, budgets 5 10
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, prepare_out_dir, versions, write_json, write_text  # noqa: E402

import scoresolve as ss  # noqa: E402
from scoresolve.calibrate import calibrate_grid, teacher_solution  # noqa: E402
from scoresolve.metrics import frechet_floor, frechet_to_moments  # noqa: E402
from scoresolve.sampling import resolve_solver  # noqa: E402

# method name -> (solver name, options (final= and gaussian_prior= go to ss.sample), grid: registered name or
# "calibrated", calibration metric)
METHODS = {
    "auto": ("auto", {}, None, None),
    # auto estimates the data's mean/covariance during calibration (gaussian_prior="estimate", the default);
    # here with the exact moments instead, and without the analytical first step
    "auto+gauss": ("auto", {"gaussian_prior": "moments"}, None, None),
    "auto, no gaussian step": ("auto", {"gaussian_prior": None}, None, None),
    "ipndm(fixed)+gauss+cal[logp], tweedie": (
        "ipndm", {"variable": False, "final": "tweedie", "gaussian_prior": "moments"}, "calibrated", "logp"),
    "unipc+gauss+cal[logp], step to 0": ("unipc", {"final": "zero", "gaussian_prior": "moments"}, "calibrated",
                                         "logp"),
    "unipc+cal[logp], step to 0": ("unipc", {"final": "zero"}, "calibrated", "logp"),
    "ipndm(fixed)+cal[both], stop at eps": ("ipndm", {"variable": False, "final": "none"}, "calibrated", "both"),
    "ipndm(fixed)+cal[local], step to 0": ("ipndm", {"variable": False, "final": "zero"}, "calibrated", "local"),
    "ipndm(fixed)+cal[rmse], step to 0": ("ipndm", {"variable": False, "final": "zero"}, "calibrated", "rmse"),
    "ipndm(var)+cal[both], step to 0": ("ipndm", {"final": "zero"}, "calibrated", "both"),
    "dpmpp_3m+cal[both], step to 0": ("dpmpp_3m", {"final": "zero"}, "calibrated", "both"),
    "unipc+cal[both], step to 0": ("unipc", {"final": "zero"}, "calibrated", "both"),
    "unipc+cal[rmse], step to 0": ("unipc", {"final": "zero"}, "calibrated", "rmse"),
    "dpmpp_3m+cal[rmse], step to 0": ("dpmpp_3m", {"final": "zero"}, "calibrated", "rmse"),
    "ipndm(fixed)+cal[rmse], stop at eps": ("ipndm", {"variable": False, "final": "none"}, "calibrated", "rmse"),
    "ipndm(fixed) karras, stop at eps": ("ipndm", {"variable": False, "final": "none"}, "karras", None),
    "dpmpp_2m karras, tweedie to 0 (= k-diffusion)": ("dpmpp_2m", {"final": "tweedie"}, "karras", None),
    "dpmpp_3m log_snr, step to 0": ("dpmpp_3m", {"final": "zero"}, "log_snr", None),
    "unipc log_snr, tweedie to 0 (= diffusers)": ("unipc", {"final": "tweedie"}, "log_snr", None),
}
# calibration options beyond the defaults (as auto uses them)
CAL_OPTIONS = {
    "ipndm(fixed)+gauss+cal[logp], tweedie": {"n_samples": 256, "logp_tol": 2.0, "logp_cap": 1.5, "fd_weight": 16.0,
                                               "max_evals": None},
    "unipc+gauss+cal[logp], step to 0": {"max_evals": None},
    "unipc+cal[logp], step to 0": {"max_evals": None},
}
FULL_METHODS = [
    "auto",
    "auto+gauss",
    "auto, no gaussian step",
    "ipndm(fixed)+cal[both], stop at eps",
    "ipndm(fixed)+cal[local], step to 0",
    "dpmpp_3m+cal[both], step to 0",
    "dpmpp_2m karras, tweedie to 0 (= k-diffusion)",
    "unipc log_snr, tweedie to 0 (= diffusers)",
]
QUICK_METHODS = ["auto", "auto+gauss", "dpmpp_2m karras, tweedie to 0 (= k-diffusion)"]

PROBLEMS = {
    "digits_vp": (lambda: ss.analytic.digits(), lambda: ss.VPSDE()),
    "digits_ve": (lambda: ss.analytic.digits(), lambda: ss.VESDE(sigma_min=0.01, sigma_max=50.0)),
    "digits_flow": (lambda: ss.analytic.digits(), lambda: ss.RectifiedFlow()),
    "aniso16_ve": (lambda: ss.analytic.anisotropic(dim=16, n_components=8, seed=0),
                   lambda: ss.VESDE(sigma_min=0.01, sigma_max=50.0)),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--budgets", type=int, nargs="+", default=None)
    ap.add_argument("--problems", nargs="+", default=None, choices=sorted(PROBLEMS))
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--floor-draws", type=int, default=50)
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = prepare_out_dir(args.out, "fewstep")
    n = args.n or (500 if args.quick else 2000)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    budgets = args.budgets or ([5, 10] if args.quick else [5, 10, 20])
    problems = args.problems or (["digits_vp"] if args.quick else list(PROBLEMS))
    methods = args.methods or (QUICK_METHODS if args.quick else FULL_METHODS)
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from {list(METHODS)}")

    rows = []
    for prob in problems:
        gm_f, sde_f = PROBLEMS[prob]
        gm, sde = gm_f(), sde_f()
        shape = tuple(gm.event_shape) if hasattr(gm, "event_shape") else (gm.means.shape[-1],)
        # a flow process gets the mixture's exact velocity, as a flow model would give it
        score = gm.velocity_model(sde) if isinstance(sde, ss.RectifiedFlow) else gm.score_model(sde)
        mean, cov = gm.moments()
        floor = frechet_floor(lambda k, g, gm=gm: gm.sample(k, g), mean, cov, n, draws=args.floor_draws)[0]
        big = gm.sample(50_000, torch.Generator().manual_seed(999))
        exact_logp = float(gm.log_prob(big).mean())
        print(f"[{prob}] floor {floor:.4g}, exact mean log p0 {exact_logp:.3f}", flush=True)
        refs: dict[tuple[int, bool], torch.Tensor] = {}
        x_Ts = {s: sde.prior_sample((n, *shape), generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                for s in seeds}

        def reference(seed: int, to_zero: bool, x_Ts=x_Ts, refs=refs, sde=sde, score=score) -> torch.Tensor:
            key = (seed, to_zero)
            if key not in refs:
                refs[key] = teacher_solution(score, sde, x_Ts[seed], sde.default_eps, to_zero=to_zero, steps=200)[0]
            return refs[key]

        ref_stats: dict[int, tuple[float, float]] = {}
        for seed in seeds:
            r = reference(seed, True)
            ref_stats[seed] = (frechet_to_moments(r.reshape(n, -1).float(), mean, cov),
                               float(gm.log_prob(r).mean()))
            rows.append({"problem": prob, "method": "exact PF-ODE (reference)", "nfe": 200, "seed": seed,
                         "fd_floor": frechet_to_moments(r.reshape(n, -1).float(), mean, cov) / floor,
                         "logp_gap": float(gm.log_prob(r).mean()) - exact_logp})
        for m in methods:
            solver_name, opts, grid_name, metric = METHODS[m]
            for K in budgets:
                o = dict(opts)
                if o.get("gaussian_prior") == "moments":  # the data's exact mean and covariance
                    o["gaussian_prior"] = (mean, cov)
                run_kw = {k: o.pop(k) for k in ("final", "gaussian_prior") if k in o}
                solver = "auto" if solver_name == "auto" else resolve_solver(solver_name, o)
                cal_nfe, cal_sec, grid = 0, 0.0, grid_name
                if grid_name == "calibrated":
                    cal_opts = {"n_samples": args.calib_samples, "max_evals": 60 + 20 * K}
                    if m in CAL_OPTIONS:
                        cal_opts.update(CAL_OPTIONS[m])
                    cg = calibrate_grid(score, sde, solver, K, final=run_kw.get("final", "none"),
                                        gaussian_prior=run_kw.get("gaussian_prior"), shape=shape, seed=0,
                                        metric=metric, **cal_opts)
                    cal_nfe, cal_sec, grid = cg.nfe, cg.seconds, cg.grid
                for seed in seeds:
                    x_T = x_Ts[seed]
                    t0 = time.perf_counter()
                    res = ss.sample(score, sde, solver=solver, nfe=K, grid=grid, x_T=x_T, return_result=True, **run_kw)
                    sec = time.perf_counter() - t0
                    if solver_name == "auto":
                        cal = res.info.get("calibration", {})
                        cal_nfe, cal_sec = cal.get("nfe", 0), cal.get("seconds", 0.0)
                    x = res.samples
                    to_zero = res.info.get("auto", run_kw).get("final", "none") != "none"
                    ref = reference(seed, to_zero)
                    per = (x - ref).reshape(n, -1).pow(2).mean(1).sqrt()
                    row = {
                        "problem": prob, "method": m, "nfe": res.nfe, "seed": seed,
                        "fd_floor": frechet_to_moments(x.reshape(n, -1).float(), mean, cov) / floor,
                        "logp_gap": float(gm.log_prob(x).mean()) - exact_logp,
                        "rmse_mean": float(per.mean()), "rmse_median": float(per.median()),
                        "fd_vs_ode": frechet_to_moments(x.reshape(n, -1).float(), mean, cov) / ref_stats[seed][0],
                        "logp_vs_ode": float(gm.log_prob(x).mean()) - ref_stats[seed][1],
                        "cal_nfe": cal_nfe, "cal_seconds": cal_sec, "seconds": sec,
                        "finite": bool(torch.isfinite(x).all()),
                    }
                    rows.append(row)
                    print(f"[{prob}] {m:36s} K={K:3d} seed={seed} FD/floor={row['fd_floor']:.3f} "
                          f"dlogp={row['logp_gap']:+.3f} rmse={row['rmse_mean']:.4f} (median {row['rmse_median']:.4f}) "
                          f"cal={cal_nfe} evals/{cal_sec:.1f}s", flush=True)
    cols = [("problem", "problem"), ("method", "method"), ("nfe", "NFE"), ("seed", "seed"), ("fd_floor", "FD/floor"),
            ("logp_gap", "Δ mean log p0 (nats)"), ("rmse_mean", "RMSE vs ref"), ("rmse_median", "median RMSE"),
            ("cal_nfe", "calib. evals"), ("cal_seconds", "calib. s")]
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    md = "# Few-step deterministic samplers\n\n" + f"`python benchmarks/fewstep.py {cmd}`\n\n"
    md += f"Machine: {machine_info()}\n\n" + markdown_table(rows, cols)
    summ = []
    keys = sorted({(r["problem"], r["method"], r["nfe"]) for r in rows}, key=lambda k: (k[0], k[2], k[1]))
    for prob, meth, nfe in keys:
        rs = [r for r in rows if (r["problem"], r["method"], r["nfe"]) == (prob, meth, nfe)]
        agg = {"problem": prob, "method": meth, "nfe": nfe, "seeds": len(rs)}
        for k in ("fd_floor", "logp_gap", "fd_vs_ode", "logp_vs_ode", "rmse_mean", "rmse_median"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                agg[k] = sum(vals) / len(vals)
                agg[k + "_worst"] = max(vals, key=abs)
        agg["cal_nfe"], agg["cal_seconds"] = rs[0].get("cal_nfe"), rs[0].get("cal_seconds")
        summ.append(agg)
    scol = [("problem", "problem"), ("method", "method"), ("nfe", "NFE"), ("fd_floor", "FD/floor (mean)"),
            ("fd_floor_worst", "FD/floor (worst seed)"), ("logp_gap", "Δ log p0 (mean)"),
            ("logp_gap_worst", "Δ log p0 (worst)"), ("fd_vs_ode_worst", "FD / FD(exact ODE) (worst)"),
            ("logp_vs_ode_worst", "Δ log p0 vs exact ODE (worst)"), ("rmse_mean", "RMSE vs ref"),
            ("rmse_median", "median RMSE"),
            ("cal_nfe", "calib. evals"), ("cal_seconds", "calib. s")]
    md += "\n## Summary over seeds\n\n" + markdown_table(summ, scol)
    write_text(out / "results.md", md)
    write_json(out / "results.json", {"config": vars(args), "n": n, "seeds": seeds, "budgets": budgets,
                                      "machine": machine_info(), "versions": versions(), "rows": rows,
                                      "summary": summ})
    print(f"wrote {out / 'results.md'}")


if __name__ == "__main__":
    main()
