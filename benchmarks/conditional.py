"""Conditional sampling: cost curves against exact conditionals, log evidence, and the calibration check.

Part 1 (closed form): on the 16-D anisotropic mixture, the acceptance cases VE with 1 of 16
coordinates observed (a 3-mode posterior) and VP with 8 of 16 observed (``--cases``), each method's
Fréchet distance to the exact conditional moments over the floor that exact samples of the same
size reach (50 exact draws), the total variation between the mode weights of its samples and of
200 000 exact conditional draws, and for ``smc`` the error of the log-evidence estimate
``info["log_z"]`` against the closed form. Cost: score evaluations of single samples per output.

Part 2 (no closed form, ``--calibration``): the simulation-based calibration check
(:func:`scoresolve.conditional.calibration_check`) on the bundled digits and MNIST networks, top half
observed, features of the bundled classifiers: FD(observed + inpainted, reference) over FD(model
samples, reference).

    python benchmarks/conditional.py                 # part 1, n = 1000, 5 seeds, then part 2
    python benchmarks/conditional.py --quick         # small n, a few configurations
    python benchmarks/conditional.py --no-calibration / --calibration-only
    python benchmarks/conditional.py --calibration-only --models digits --cal-refine 200 --cal-particles 8
    python benchmarks/conditional.py --merge DIR...  # combine the results.json of earlier runs
    python benchmarks/conditional.py --log-evidence-steps  # log Z error against steps and K, 2-D Gaussian
    python benchmarks/conditional.py --log-evidence-default  # log Z error at default settings, 16-D mixture
    python benchmarks/conditional.py --evidence-spread  # log Z over systems sharing one observation, networks

Writes results.json, results.md and conditional.png to --out (default bench_out/conditional/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

import torch

import scoresolve as ss
from scoresolve.analytic import anisotropic
from scoresolve.conditional import calibration_check, inpaint
from scoresolve.conditional.sbc import CHAIN
from scoresolve.metrics import frechet_floor, frechet_to_moments, mode_weights

OBS = {1: 11, 8: 0}  # observed coordinates -> seed of the observed vector (1 of 16: a 3-mode posterior)


def machine() -> dict[str, str | int]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu_count": os.cpu_count() or 0,
        "threads": torch.get_num_threads(),
    }


def configs(quick: bool) -> list[dict]:
    if quick:
        return [
            {"method": "replace", "steps": 200, "predictor": "reverse_diffusion", "corrector": "none"},
            {"method": "smc", "steps": 30, "particles": 16, "grid": "log_snr"},
            {"method": "smc", "steps": 30, "particles": 16, "grid": "quadratic"},
        ]
    # weights from the kernel's own variance (the default; one evaluation per particle and step) ...
    smc = {"log_snr": [(16, 60), (32, 60)], "quadratic": [(32, 60), (64, 30)]}
    # ... and with Var(x0 | x_t) from one extra evaluation (twice the cost per step)
    exact = {"log_snr": [(16, 30), (16, 60)], "quadratic": [(16, 60), (32, 30)]}
    # ... and twisted (guided proposal + twisted weights; one extra evaluation per particle and step)
    twisted = {"log_snr": [(16, 30), (8, 60), (16, 60), (32, 30)], "quadratic": [(16, 60)]}
    # ... and finished by R Metropolis-adjusted Langevin moves per output at the last time (R evaluations per output)
    refined = [(16, 30, "log_snr", False, 400), (16, 60, "log_snr", False, 500), (8, 30, "quadratic", True, 500),
               (8, 60, "quadratic", True, 400), (16, 30, "quadratic", True, 500), (4, 30, "quadratic", True, 250)]
    return [
        {"method": "replace", "steps": 1000, "predictor": "reverse_diffusion", "corrector": "none"},
        *({"method": "smc", "steps": st, "particles": k, "grid": g, "exact_variance": False}
          for g, ks in smc.items() for k, st in ks),
        *({"method": "smc", "steps": st, "particles": k, "grid": g, "exact_variance": True}
          for g, ks in exact.items() for k, st in ks),
        *({"method": "smc", "steps": st, "particles": k, "grid": g, "twist": True}
          for g, ks in twisted.items() for k, st in ks),
        *({"method": "smc", "steps": st, "particles": k, "grid": g, "twist": tw, "refine": r}
          for k, st, g, tw, r in refined),
    ]


def label(cfg: dict) -> str:
    if cfg["method"] == "replace":
        return f"replace {cfg['predictor']}+{cfg['corrector']} {cfg['steps']} steps"
    if cfg.get("twist"):
        var = " twist" + (" exact-var" if cfg.get("exact_variance") else "")
    else:
        var = "" if cfg.get("exact_variance") else " kernel-var"
    if cfg.get("refine"):
        var = (" twist" if cfg.get("twist") else "") + f" refine {cfg['refine']}"
    return f"smc K={cfg['particles']} {cfg['steps']} steps {cfg['grid']}{var}"


def log_evidence(gm, mask: torch.Tensor, y: torch.Tensor, nu: float) -> float:
    """Closed-form log p(y_o) of the mixture observed with Gaussian noise of std nu."""
    o = mask.reshape(-1)
    cov = gm.covs[:, o][:, :, o] + nu**2 * torch.eye(int(o.sum()), dtype=torch.float64)
    comp = torch.distributions.MultivariateNormal(gm.means[:, o], cov)
    return float(torch.logsumexp(gm.weights.log() + comp.log_prob(y.reshape(-1)[o].double()), 0))


def log_evidence_steps() -> None:
    """Mean and spread of info["log_z"] over 200 outputs against the closed form, one observed coordinate
    of a correlated 2-D Gaussian, for several steps and particle counts, with the weights' variance from
    the kernel alone (exact_variance=False) and with Var(x0 | x_t) (the default)."""
    from scoresolve.analytic import gaussian

    g = gaussian(torch.tensor([0.5, -0.3]), torch.tensor([[1.0, 0.6], [0.6, 0.8]]))
    y = torch.tensor([[1.2, 0.0]]).expand(200, 2).clone()
    mask = torch.tensor([True, False])
    for sde in (ss.VESDE(), ss.VPSDE()):
        nu = float(sde.sigma(torch.tensor(sde.default_eps, dtype=torch.float64)))
        log_z = log_evidence(g, mask, y[0], nu)
        for exact in (False, True):
            for k, steps in ((8, 50), (8, 200), (8, 800), (64, 200), (256, 200)):
                res = inpaint(g.score_model(sde), sde, y, mask, particles=k, steps=steps, progress=False,
                              exact_variance=exact, return_result=True, generator=torch.Generator().manual_seed(1))
                e = res.info["log_z"] - log_z
                print(f"| {type(sde).__name__[:2]} | {exact} | {k} | {steps} | {float(e.mean()):+.3f} | "
                      f"{float(e.std()):.3f} | {float(e.abs().mean()):.3f} |", flush=True)


def log_evidence_default(n: int = 200, seeds: int = 2) -> None:
    """|log Z error| of info["log_z"] at the default K = 64, 200 steps on the 16-D mixture, VE 1 of 16 and VP 8
    of 16 observed: weights with the kernel's variance, with Var(x0 | x_t) (exact_variance), and twisted."""
    gm = anisotropic(16, 8, seed=0)
    for sde_name, n_obs in (("ve", 1), ("vp", 8)):
        sde = {"vp": ss.VPSDE(), "ve": ss.VESDE()}[sde_name]
        mask = torch.zeros(16, dtype=torch.bool)
        mask[:n_obs] = True
        y0 = gm.sample(1, torch.Generator().manual_seed(OBS[n_obs]))[0]
        nu = float(sde.sigma(torch.tensor(sde.default_eps, dtype=torch.float64)))
        log_z = log_evidence(gm, mask, y0, nu)
        for opts, n_seeds in (({}, 1), ({"exact_variance": True}, seeds),
                              ({"exact_variance": True, "twist": True}, seeds)):
            for seed in range(n_seeds):
                g = torch.Generator().manual_seed(1000 + seed)
                c0 = time.process_time()
                res = inpaint(gm.score_model(sde), sde, y0.expand(n, 16).clone(), mask, progress=False,
                              return_result=True, generator=g, **opts)
                e = res.info["log_z"] - log_z
                print(f"{sde_name.upper()} {n_obs}/16 {opts} seed {seed} "
                      f"({res.info['score_rows'] / n:.0f} evals/output, {time.process_time() - c0:.0f} CPU s): "
                      f"mean abs {float(e.abs().mean()):.2f} mean {float(e.mean()):+.2f} sd {float(e.std()):.2f} "
                      f"median abs {float(e.abs().median()):.2f}"
                      f" min {float(e.min()):.1f}", flush=True)


def top_half(shape: tuple[int, ...]) -> torch.Tensor:
    """The observation mask of the network checks: the top half of the image's rows."""
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[..., : shape[-2] // 2, :] = True
    return mask


def evidence_spread(models: str, images: int = 4, systems: int = 8, runs: str = "16x25,16x100,8x25t") -> None:
    """How far apart independent particle systems land on one observation of a network (top half observed): for
    ``images`` of the model's own 25-step samples, ``systems`` systems share each observation; prints, per run
    ``KxSTEPS`` (``t``: twisted, with ``exact_variance``), the range and standard deviation of ``info["log_z"]``
    over the systems and the median of ``info["ess_min"]``. Systems that share an observation estimate the same
    ``log p(y)``: in the filter's exact regime they agree to about a nat, and the spread falls like ``K^(-1/2)``."""
    from scoresolve.io import load

    for name in models.split(","):
        model = load(name)
        mask = top_half(model.sample_shape)
        x = ss.sample(model, **CHAIN, steps=25, shape=(images, *model.sample_shape),
                      generator=torch.Generator().manual_seed(0), progress=False)
        for run in runs.split(","):
            twisted = run.endswith("t")
            k, steps = (int(v) for v in run.rstrip("t").split("x"))
            c0 = time.process_time()
            res = inpaint(model, None, x.repeat_interleave(systems, 0), mask, method="smc", particles=k, steps=steps,
                          twist=twisted, exact_variance=twisted, return_result=True, progress=False,
                          generator=torch.Generator().manual_seed(1))
            lz = res.info["log_z"].reshape(images, systems)
            spread = " ".join(f"{float(v):.0f}" for v in lz.max(1).values - lz.min(1).values)
            sd = " ".join(f"{float(v):.0f}" for v in lz.std(1))
            print(f"{name} K={k} {steps} steps{' twisted' if twisted else ''}: log Z range over {systems} systems "
                  f"per image {spread} (sd {sd}); median ess_min {float(res.info['ess_min'].median()):.2f}; "
                  f"{time.process_time() - c0:.0f} CPU s", flush=True)


def calibration_rows(quick: bool, n_digits: int, n_mnist: int, models: str = "digits,mnist", refine: int = 0,
                     particles: int | None = None, seed: int = 0, twist: bool = False) -> list[dict]:
    """The calibration check on the bundled networks (top half observed, classifier features); ``refine > 0`` adds
    a row of ``smc`` finished by that many Metropolis-adjusted Langevin moves, ``twist`` a row of the twisted filter
    (``particles`` overrides K)."""
    from scoresolve.io import load
    from scoresolve.metrics.classifier import load_classifier
    from scoresolve.metrics.fid import classifier_features

    rows = []
    plan = [("digits", n_digits, 32, 25), ("mnist", n_mnist, 4, 25)]
    for name, n, k, steps in (p for p in plan if p[0] in models.split(",")):
        k = particles or k
        model = load(name)
        mask = top_half(model.sample_shape)
        net = load_classifier(name=name)
        for method in ("replace", "smc") if not (refine or twist) else ("smc",):
            opts = {"particles": k} if method == "smc" else {"predictor": "ancestral_sampling", "corrector": "none",
                                                                "grid": "log_snr"}
            if refine:
                opts["refine"] = refine
            if twist:
                opts["twist"] = True
            t0, c0 = time.perf_counter(), time.process_time()
            feats = partial(classifier_features, classifier=net)
            r = calibration_check(model, mask, n if not quick else 50, features=feats,
                                  generator=torch.Generator().manual_seed(seed), method=method, steps=steps, **opts)
            label = method + (" + twist" if twist else "") + (f" + {refine} MALA" if refine else "")
            row = {"model": name, "method": label, "seed": seed,
                   "particles": k if method == "smc" else 1, "steps": steps,
                   "n": r.n, "fd": r.fd, "floor": r.floor, "ratio": r.ratio,
                   "score_evals_per_output": r.score_evals_per_output, "score_evals_total": r.score_evals,
                   "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
            rows.append(row)
            print(f"calibration {name:6s} {row['method']:7s} K={row['particles']:3d} {steps} steps n={r.n}: "
                  f"FD {r.fd:.4g} "
                  f"floor {r.floor:.4g} ratio {r.ratio:.3f}  evals/output {r.score_evals_per_output:.0f}  "
                  f"{row['seconds']:.0f}s (cpu {row['cpu_seconds']:.0f}s)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small n and few configurations (CI)")
    ap.add_argument("--out", default="bench_out/conditional", help="output folder")
    ap.add_argument("--n", type=int, default=None, help="outputs per run (default 1000, quick 200)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default 5, quick 1)")
    ap.add_argument("--cases", default="ve:1,vp:8", help="SDE:observed pairs (observed of 16)")
    ap.add_argument("--only", default=None, help="run only the configurations whose label contains this text")
    ap.add_argument("--no-calibration", action="store_true", help="skip the calibration check on the networks")
    ap.add_argument("--calibration-only", action="store_true", help="only the calibration check")
    ap.add_argument("--n-digits", type=int, default=300, help="calibration check: samples per set, digits")
    ap.add_argument("--n-mnist", type=int, default=200, help="calibration check: samples per set, MNIST")
    ap.add_argument("--models", default="digits,mnist", help="calibration check: the networks")
    ap.add_argument("--cal-refine", type=int, default=0,
                    help="calibration check: only smc, finished by this many Metropolis-adjusted Langevin moves")
    ap.add_argument("--cal-seed", type=int, default=0, help="calibration check: the generator's seed")
    ap.add_argument("--cal-particles", type=int, default=None, help="calibration check: particles of smc")
    ap.add_argument("--cal-twist", action="store_true", help="calibration check: only smc, twisted (twist=True)")
    ap.add_argument("--log-evidence-steps", action="store_true",
                    help="only: the log-evidence error against steps and particles on a 2-D Gaussian")
    ap.add_argument("--log-evidence-default", action="store_true",
                    help="only: the log-evidence error at the default settings on the 16-D mixture")
    ap.add_argument("--evidence-spread", action="store_true",
                    help="only: the spread of log Z over particle systems sharing one observation (--models)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="DIR", help="combine the results.json of earlier runs")
    args = ap.parse_args()
    if args.merge:
        parts = [json.loads((Path(d) / "results.json").read_text()) for d in args.merge]
        meta = dict(parts[0]["meta"], merged_from=args.merge)
        write_outputs([r for p in parts for r in p["rows"]], [r for p in parts for r in p.get("calibration", [])], meta,
                      Path(args.out))
        return
    torch.set_num_threads(1)
    if args.log_evidence_steps:
        log_evidence_steps()
        return
    if args.log_evidence_default:
        log_evidence_default()
        return
    if args.evidence_spread:
        evidence_spread(args.models)
        return
    n = args.n or (200 if args.quick else 1000)
    seeds = args.seeds or (1 if args.quick else 5)
    out = Path(args.out)
    gm = anisotropic(16, 8, seed=0)
    rows = []
    cases = [] if args.calibration_only else [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases.split(",")]
    for sde_name, n_obs in cases:
        sde = {"vp": ss.VPSDE(), "ve": ss.VESDE()}[sde_name]
        model = gm.score_model(sde)
        mask = torch.zeros(16, dtype=torch.bool)
        mask[:n_obs] = True
        y0 = gm.sample(1, torch.Generator().manual_seed(OBS[n_obs]))[0]
        cond = gm.condition(mask, y0)
        mean, cov = cond.moments()
        floor, floor_se = frechet_floor(lambda m, g, c=cond: c.sample(m, g), mean, cov, n, draws=50)
        w_ref = mode_weights(cond.labels(cond.sample(200_000, torch.Generator().manual_seed(99))), cond.n_components)
        nu_eff = float(sde.sigma(torch.tensor(sde.default_eps, dtype=torch.float64)))
        log_z = log_evidence(gm, mask, y0, nu_eff)
        y = y0.expand(n, 16).clone()
        for cfg in (c for c in configs(args.quick) if args.only is None or args.only in label(c)):
            fds, tvs, secs, cpus, lz_err = [], [], [], [], []
            res = None
            for seed in range(seeds if cfg["method"] == "smc" else 1):
                opts = {k: v for k, v in cfg.items() if k not in ("method", "steps")}
                t0, c0 = time.perf_counter(), time.process_time()
                res = inpaint(model, sde, y, mask, method=cfg["method"], steps=cfg["steps"], progress=False,
                              generator=torch.Generator().manual_seed(1000 + seed), return_result=True, **opts)
                secs.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
                xm = res.samples[:, ~mask]
                fds.append(frechet_to_moments(xm, mean, cov))
                w = mode_weights(cond.labels(xm), cond.n_components)
                tvs.append(0.5 * float((w - w_ref).abs().sum()))
                if "log_z" in res.info:
                    lz_err.append(float((res.info["log_z"] - log_z).abs().mean()))
            assert res is not None
            row = {
                "sde": sde_name, "observed": n_obs, "config": label(cfg), **cfg, "n": n, "seeds": len(fds),
                "fd": sum(fds) / len(fds), "floor": floor, "floor_se": floor_se,
                "fd_over_floor": sum(fds) / len(fds) / floor, "fd_over_floor_per_seed": [f / floor for f in fds],
                "mode_tv": sum(tvs) / len(tvs), "mode_tv_max": max(tvs), "mode_tv_per_seed": tvs,
                "log_z_abs_err": sum(lz_err) / len(lz_err) if lz_err else None, "log_z": log_z,
                "nfe_calls": res.nfe, "score_evals_per_output": res.info["score_rows"] / n,
                "seconds": sum(secs) / len(secs), "cpu_seconds": sum(cpus) / len(cpus),
            }
            rows.append(row)
            lz = f"|dlogZ| {row['log_z_abs_err']:.2f}" if lz_err else ""
            print(f"{sde_name} {n_obs:2d}/16  {row['config']:<42s} FD/floor {row['fd_over_floor']:8.2f} "
                  f"(per seed {' '.join(f'{v:.2f}' for v in row['fd_over_floor_per_seed'])})  TV max {max(tvs):.3f}  "
                  f"{lz}  evals/output {row['score_evals_per_output']:6.0f}  {row['seconds']:5.1f}s", flush=True)
    cal = [] if args.no_calibration else calibration_rows(args.quick, args.n_digits, args.n_mnist, args.models,
                                                                args.cal_refine, args.cal_particles, args.cal_seed,
                                                                args.cal_twist)
    meta = {"problem": "anisotropic(16, 8, seed=0)", "n": n, "seeds": seeds, "quick": args.quick,
            "machine": machine(), "observation_seeds": OBS}
    write_outputs(rows, cal, meta, out)


def write_outputs(rows: list[dict], cal: list[dict], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "calibration": cal}, indent=1))
    mach = meta["machine"]
    lines = [
        f"Conditional sampling on anisotropic(16, 8, seed=0), n = {meta['n']} outputs, {meta['seeds']} seed(s) per "
        f"smc row (FD / floor: mean over seeds; mode TV: worst seed); floor = mean FD of 50 exact draws of the same "
        f"size. Machine: {mach['processor']}, {mach['cpu_count']} CPUs (shared), torch {mach['torch']}, "
        f"{mach['threads']} thread(s).",
        "",
        "| SDE | observed | method | FD / floor | worst mode TV | mean abs(log Z err) | score evals / output | "
        "CPU s / run |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lz = "" if r.get("log_z_abs_err") is None else f"{r['log_z_abs_err']:.2f}"
        lines.append(
            f"| {r['sde'].upper()} | {r['observed']}/16 | {r['config']} | {r['fd_over_floor']:.2f} | "
            f"{r.get('mode_tv_max', r['mode_tv']):.3f} | {lz} | {r['score_evals_per_output']:.0f} | "
            f"{r.get('cpu_seconds', r['seconds']):.1f} |"
        )
    if cal:
        lines += ["", "Calibration check (top half observed; classifier features; floor: FD of the model's own "
                  "samples to an independent set of them):", "",
                  "| model | method | K | steps | n | FD | floor | FD / floor | score evals / output | CPU s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in cal:
            lines.append(f"| {r['model']} | {r['method']} | {r['particles']} | {r['steps']} | {r['n']} | "
                         f"{r['fd']:.3g} | {r['floor']:.3g} | {r['ratio']:.2f} | {r['score_evals_per_output']:.0f} | "
                         f"{r['cpu_seconds']:.0f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if rows:
        try:
            plot(rows, out / "conditional.png")
        except ImportError:
            print("matplotlib not installed: no plot")


def variant(r: dict) -> str:
    if r.get("refine"):
        return ("twist + " if r.get("twist") else "") + "MALA finish"
    return "twist" if r.get("twist") else ("exact var" if r.get("exact_variance") else "kernel var")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r["sde"], r["observed"]) for r in rows}, key=lambda c: (c[1], c[0]))
    fig, axes = plt.subplots(1, len(cases), figsize=(5.5 * len(cases), 4.2), squeeze=False)
    for ax, (s, o) in zip(axes[0], cases, strict=True):
        sel = [r for r in rows if r["sde"] == s and r["observed"] == o]
        smc = [r for r in sel if r["method"] == "smc"]
        for grid, var in sorted({(r.get("grid", "log_snr"), variant(r)) for r in smc}):
            pts = sorted((r for r in smc if r.get("grid", "log_snr") == grid and variant(r) == var),
                         key=lambda r: (r["score_evals_per_output"], r["particles"]))
            ax.plot([r["score_evals_per_output"] for r in pts], [r["fd_over_floor"] for r in pts], "o-",
                    label=f"smc, {grid} grid, {var}")
            for r in pts:
                ax.annotate(f"{r['particles']}x{r['steps']}", (r["score_evals_per_output"], r["fd_over_floor"]),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")
        for r in sel:
            if r["method"] == "replace":
                ax.plot(r["score_evals_per_output"], r["fd_over_floor"], "s", label=f"replace ({r['steps']} steps)")
        ax.axhline(2.0, color="gray", ls="--", lw=1)
        ax.axhline(1.0, color="gray", ls=":", lw=1)
        ax.axvline(2000, color="red", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{s.upper()}, {o} of 16 observed (mean of {max(r.get('seeds', 1) for r in sel)} seeds)")
        ax.set_xlabel("score evaluations per output")
        ax.set_ylabel("FD / exact-sample floor")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
