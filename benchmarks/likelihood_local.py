"""The budget likelihood on gradient fields: the locally Gaussian frame (what an exact score gets by default) against
the log-SNR path (``precondition="none"``, what a network gets), on the analytic mixtures with the exact score and
the exact ``p_T`` (solver error only).

For each mixture (8-D, 16-D anisotropic, 64-D digits), process (VP, VE, sub-VP, rectified flow), budget K and
sample seed: the mean |error| in bits/dim against the closed-form log-density, the fraction of samples whose
|error| is within ``error_bpd`` ("bracketed") and the mean estimate over the mean error.

    python benchmarks/likelihood_local.py [--n 64] [--seeds 3,5] [--ks 10,12,16,20,30,40] [--out DIR]
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
from _common import prepare_out_dir, write_table_results

import scoresolve as ss
from scoresolve import analytic
from scoresolve.likelihood import LikelihoodAccuracyWarning, likelihood

MIXTURES = {
    "aniso8": lambda: analytic.anisotropic(8, n_components=3, min_var=0.02),
    "aniso16": lambda: analytic.anisotropic(16),
    "digits": analytic.digits,
}
SDES = {
    "vp": ss.VPSDE,
    "ve": lambda: ss.VESDE(sigma_min=0.01, sigma_max=50.0),
    "subvp": ss.SubVPSDE,
    "flow": ss.RectifiedFlow,
}
COLUMNS = [("mixture", "mixture"), ("sde", "SDE"), ("k", "K"),
           ("err_local", "mean abs err, local frame"), ("bracket_local", "bracketed (worst seed)"),
           ("ratio_local", "estimate / error"),
           ("err_log_snr", "mean abs err, log-SNR path"), ("bracket_log_snr", "bracketed (worst seed)"),
           ("ratio_log_snr", "estimate / error")]


def run(mix_name: str, sde_name: str, ks: list[int], seeds: list[int], n: int) -> list[dict[str, Any]]:
    mix, sde = MIXTURES[mix_name](), SDES[sde_name]()
    model = mix.velocity_model(sde) if isinstance(sde, ss.RectifiedFlow) else mix.score_model(sde)
    per: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
    for seed in seeds:
        x = mix.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)
        truth = mix.log_prob(x, 1e-5, sde)
        for k in ks:
            for label, pc in (("local", None), ("log_snr", "none")):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", LikelihoodAccuracyWarning)
                    r = likelihood(model, sde, x, steps=k, precondition=pc, progress=False,
                                   prior_logp=lambda z: mix.log_prob(z, sde.T, sde))
                err = (r.logp - truth).abs() / (mix.dim * math.log(2))
                assert r.error_bpd is not None
                per.setdefault((k, label), []).append(
                    (float(err.mean()), float((err <= r.error_bpd).float().mean()), float(r.error_bpd.mean())))
    rows = []
    for k in ks:
        row: dict[str, Any] = {"mixture": mix_name, "sde": sde_name, "k": k, "n": n, "seeds": seeds}
        for label in ("local", "log_snr"):
            runs = per[(k, label)]
            mean_err = sum(e for e, _, _ in runs) / len(runs)
            row[f"err_{label}"] = mean_err
            row[f"bracket_{label}"] = min(b for _, b, _ in runs)
            row[f"ratio_{label}"] = sum(s for _, _, s in runs) / len(runs) / mean_err
        rows.append(row)
        print(f"{mix_name:8s} {sde_name:6s} K={k:3d}  local {row['err_local']:.2e} ({row['bracket_local']:.2f})  "
              f"log-SNR {row['err_log_snr']:.2e} ({row['bracket_log_snr']:.2f})", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=64, help="samples per seed")
    ap.add_argument("--seeds", default="3,5")
    ap.add_argument("--ks", default="10,12,16,20,30,40")
    ap.add_argument("--mixtures", default=",".join(MIXTURES))
    ap.add_argument("--sdes", default=",".join(SDES))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = prepare_out_dir(args.out, "likelihood_local")
    ks, seeds = [int(k) for k in args.ks.split(",")], [int(s) for s in args.seeds.split(",")]
    t0, c0 = time.perf_counter(), time.process_time()
    rows = [row for m in args.mixtures.split(",") for s in args.sdes.split(",") for row in run(m, s, ks, seeds, args.n)]
    write_table_results(out, rows, COLUMNS, argv)
    print(f"{time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
