"""Conditional sampling against the exact conditional of a 16-D anisotropic Gaussian mixture.

For VP and VE, with 1 of 16 coordinates observed (a 3-mode posterior) and with 8 of 16 observed,
this measures each method's Fréchet distance to the exact conditional moments over the floor that
exact samples of the same size reach (50 exact draws), and the total variation between the mode
weights of its samples and of 200 000 exact conditional draws (labels: the conditional mixture's
most responsible component). Methods: the paper's replacement (PC: reverse diffusion + Langevin,
and reverse diffusion alone) and the SMC particle filter at several particle counts and steps.
Cost is reported as score evaluations of single samples per output.

    python benchmarks/conditional.py            # full: n = 1000 outputs (~20 min on one CPU core)
    python benchmarks/conditional.py --quick    # n = 200, small K, a minute or two

    # the same in four parallel processes, then one table:
    for p in "vp 1" "vp 8" "ve 1" "ve 8"; do set -- $p
      python benchmarks/conditional.py --sdes $1 --observed $2 --out bench_out/conditional/$1_$2 & done; wait
    python benchmarks/conditional.py --merge bench_out/conditional/{vp_1,vp_8,ve_1,ve_8}

Writes results.json, results.md and conditional.png to --out (default bench_out/conditional/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import scoresolve as ss
from scoresolve.analytic import anisotropic
from scoresolve.conditional import inpaint
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
            {"method": "replace", "steps": 200, "predictor": "reverse_diffusion", "corrector": "langevin"},
            {"method": "smc", "steps": 50, "particles": 4},
            {"method": "smc", "steps": 50, "particles": 16},
            {"method": "smc", "steps": 100, "particles": 16},
        ]
    return [
        {"method": "replace", "steps": 1000, "predictor": "reverse_diffusion", "corrector": "langevin"},
        {"method": "replace", "steps": 1000, "predictor": "reverse_diffusion", "corrector": "none"},
        {"method": "smc", "steps": 200, "particles": 16},
        {"method": "smc", "steps": 200, "particles": 64},
        {"method": "smc", "steps": 200, "particles": 128},
        {"method": "smc", "steps": 50, "particles": 64},
    ]


def label(cfg: dict) -> str:
    if cfg["method"] == "replace":
        return f"replace {cfg['predictor']}+{cfg['corrector']} {cfg['steps']} steps"
    return f"smc K={cfg['particles']} {cfg['steps']} steps"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small n and particle counts (CI)")
    ap.add_argument("--out", default="bench_out/conditional", help="output folder")
    ap.add_argument("--n", type=int, default=None, help="outputs per run (default 1000, quick 200)")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per configuration (results averaged)")
    ap.add_argument("--sdes", default="vp,ve")
    ap.add_argument("--observed", default="1,8")
    ap.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="DIR",
        help="combine the results.json of earlier runs (e.g. one per SDE/observation) into --out",
    )
    args = ap.parse_args()
    if args.merge:
        parts = [json.loads((Path(d) / "results.json").read_text()) for d in args.merge]
        meta = dict(parts[0]["meta"], merged_from=args.merge)
        write_outputs([r for p in parts for r in p["rows"]], meta, Path(args.out))
        return
    torch.set_num_threads(1)
    n = args.n or (200 if args.quick else 1000)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gm = anisotropic(16, 8, seed=0)
    rows = []
    for sde_name in args.sdes.split(","):
        sde = {"vp": ss.VPSDE(), "ve": ss.VESDE()}[sde_name]
        model = gm.score_model(sde)
        for n_obs in (int(v) for v in args.observed.split(",")):
            mask = torch.zeros(16, dtype=torch.bool)
            mask[:n_obs] = True
            y0 = gm.sample(1, torch.Generator().manual_seed(OBS[n_obs]))[0]
            cond = gm.condition(mask, y0)
            mean, cov = cond.moments()
            floor, floor_se = frechet_floor(lambda m, g, c=cond: c.sample(m, g), mean, cov, n, draws=50)
            w_ref = mode_weights(
                cond.labels(cond.sample(200_000, torch.Generator().manual_seed(99))), cond.n_components
            )
            y = y0.expand(n, 16).clone()
            for cfg in configs(args.quick):
                fds, tvs, secs = [], [], []
                res = None
                for seed in range(args.seeds):
                    opts = {k: v for k, v in cfg.items() if k not in ("method", "steps")}
                    t0 = time.perf_counter()
                    res = inpaint(
                        model,
                        sde,
                        y,
                        mask,
                        method=cfg["method"],
                        steps=cfg["steps"],
                        generator=torch.Generator().manual_seed(1000 + seed),
                        return_result=True,
                        **opts,
                    )
                    secs.append(time.perf_counter() - t0)
                    xm = res.samples[:, ~mask]
                    fds.append(frechet_to_moments(xm, mean, cov))
                    w = mode_weights(cond.labels(xm), cond.n_components)
                    tvs.append(0.5 * float((w - w_ref).abs().sum()))
                assert res is not None
                row = {
                    "sde": sde_name,
                    "observed": n_obs,
                    "config": label(cfg),
                    **cfg,
                    "n": n,
                    "fd": sum(fds) / len(fds),
                    "floor": floor,
                    "floor_se": floor_se,
                    "fd_over_floor": sum(fds) / len(fds) / floor,
                    "fd_over_floor_per_seed": [f / floor for f in fds],
                    "mode_tv": sum(tvs) / len(tvs),
                    "mode_tv_per_seed": tvs,
                    "nfe_calls": res.nfe,
                    "score_evals_per_output": res.info["score_rows"] / n,
                    "seconds": sum(secs) / len(secs),
                }
                rows.append(row)
                print(
                    f"{sde_name} {n_obs:2d}/16  {row['config']:<48s} FD/floor {row['fd_over_floor']:8.2f}  "
                    f"TV {row['mode_tv']:.3f}  evals/output {row['score_evals_per_output']:8.0f}  "
                    f"{row['seconds']:6.1f}s",
                    flush=True,
                )
    meta = {
        "problem": "anisotropic(16, 8, seed=0)",
        "n": n,
        "seeds": args.seeds,
        "quick": args.quick,
        "machine": machine(),
        "observation_seeds": OBS,
    }
    write_outputs(rows, meta, out)


def write_outputs(rows: list[dict], meta: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    mach = meta["machine"]
    lines = [
        f"Conditional sampling on anisotropic(16, 8, seed=0), n = {meta['n']} outputs, {meta['seeds']} seed(s); "
        f"floor = mean FD of 50 exact draws of the same size. Machine: {mach['processor']}, "
        f"{mach['cpu_count']} CPUs (shared), torch {mach['torch']}, {mach['threads']} thread(s).",
        "",
        "| SDE | observed | method | FD / floor | mode TV | score evals / output | seconds |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sde'].upper()} | {r['observed']}/16 | {r['config']} | {r['fd_over_floor']:.2f} | "
            f"{r['mode_tv']:.3f} | {r['score_evals_per_output']:.0f} | {r['seconds']:.1f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        plot(rows, out / "conditional.png")
    except ImportError:
        print("matplotlib not installed: no plot")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sdes = sorted({r["sde"] for r in rows}, reverse=True)
    obs = sorted({r["observed"] for r in rows})
    fig, axes = plt.subplots(len(sdes), len(obs), figsize=(5.5 * len(obs), 4 * len(sdes)), squeeze=False)
    for i, s in enumerate(sdes):
        for j, o in enumerate(obs):
            ax = axes[i][j]
            sel = [r for r in rows if r["sde"] == s and r["observed"] == o]
            smc = [r for r in sel if r["method"] == "smc"]
            for steps in sorted({r["steps"] for r in smc}):
                pts = sorted((r for r in smc if r["steps"] == steps), key=lambda r: r["particles"])
                ax.plot(
                    [r["score_evals_per_output"] for r in pts],
                    [r["fd_over_floor"] for r in pts],
                    "o-",
                    label=f"smc, {steps} steps (K = {', '.join(str(r['particles']) for r in pts)})",
                )
            for r in sel:
                if r["method"] == "replace":
                    ax.plot(
                        r["score_evals_per_output"],
                        r["fd_over_floor"],
                        "s",
                        label=f"replace {r['corrector']} ({r['steps']} steps)",
                    )
            ax.axhline(2.0, color="gray", ls="--", lw=1)
            ax.axhline(1.0, color="gray", ls=":", lw=1)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{s.upper()}, {o} of 16 observed")
            ax.set_xlabel("score evaluations per output")
            ax.set_ylabel("FD / exact-sample floor")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
