#!/usr/bin/env python
"""``auto``'s network recipe on an exact score: the analytic digits mixture wrapped as a ``torch.nn.Module``.

Wrapped, the closed-form score takes ``auto``'s network path (``recipes.NETWORK``: calibrated below 10 evaluations,
the uncalibrated recipe from 10; the second row calibrates at every budget), so its choice can be set beside the
fixed solvers where the truth is known: the Fréchet distance of ``n`` samples to the mixture's moments, over the
same distance for ``n`` exact samples (the floor). One seed of prior noise, shared by every row. VP and VE.

Example::

    python benchmarks/auto_network_oracle.py --sde vp,ve --nfe 5,10,20 --n 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, prepare_out_dir, versions, write_json, write_text  # noqa: E402

import scoresolve as ss  # noqa: E402
from scoresolve import analytic  # noqa: E402
from scoresolve.metrics.frechet import frechet_to_moments  # noqa: E402

#: (label, solver, options): ``auto`` as it runs, ``auto`` calibrated at every budget, and the fixed solvers
ROWS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("auto", "auto", {}), ("auto[calibrate=trajectory]", "auto", {"calibrate": {"method": "trajectory"}}),
    ("dpmpp_2m", "dpmpp_2m", {}), ("dpmpp_2m[grid=karras]", "dpmpp_2m", {"grid": "karras"}),
    ("dpmpp_2m[grid=log_snr]", "dpmpp_2m", {"grid": "log_snr"}), ("ipndm", "ipndm", {}), ("unipc", "unipc", {}))
SDES = {"vp": ss.VPSDE, "ve": lambda: ss.VESDE(0.01, 50.0)}


class MixtureNet(torch.nn.Module):
    """The mixture's exact score behind one (unused) parameter: to ``auto`` it is a network."""

    def __init__(self, mix: analytic.GaussianMixture, sde: ss.SDE) -> None:
        super().__init__()
        self.mix, self.sde = mix, sde
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.mix.score(x.double(), t.double(), self.sde).to(x.dtype)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sde", default="vp,ve")
    ap.add_argument("--nfe", default="5,10,20")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = prepare_out_dir(args.out, "auto_network_oracle")
    os.environ.setdefault("SCORESOLVE_CALIBRATION_CACHE", str(out / "calibration_cache"))  # not the user's cache
    mix = analytic.digits()
    mean, cov = mix.moments()
    flat = (args.n, -1)
    floor = frechet_to_moments(mix.sample(args.n, generator=torch.Generator().manual_seed(args.seed + 1))
                               .reshape(flat), mean, cov)
    rows: list[dict[str, Any]] = []
    for kind in args.sde.split(","):
        sde = SDES[kind]()
        model = ss.ScoreModel(MixtureNet(mix, sde), sde=sde, sample_shape=mix.event_shape, parameterization="score")
        x_T = torch.randn((args.n, *mix.event_shape), generator=torch.Generator().manual_seed(args.seed),
                          dtype=torch.float64) * sde.prior_std
        for nfe in (int(k) for k in args.nfe.split(",")):
            for spec, name, kw in ROWS:
                t0 = time.perf_counter()
                r = ss.sample(model, solver=name, nfe=nfe, x_T=x_T, progress=False, return_result=True, **kw)
                cal = r.info.get("calibration") or {}
                ratio = frechet_to_moments(r.samples.reshape(flat), mean, cov) / floor
                rows.append({"sde": kind, "nfe": nfe, "solver": spec, "fd_over_floor": ratio,
                             "choice": cal.get("choice") or ("uncalibrated" if cal else ""),
                             "calibration_s": cal.get("seconds", 0.0), "seconds": time.perf_counter() - t0})
                print(f"{kind} nfe={nfe} {spec}: FD/floor {ratio:.3f} {rows[-1]['choice']}", flush=True)
    cols = [("sde", "SDE"), ("nfe", "NFE"), ("solver", "solver"), ("fd_over_floor", "FD / floor"),
            ("choice", "auto's choice"), ("calibration_s", "calibration s"), ("seconds", "wall s")]
    write_json(out / "results.json", {"benchmark": "auto_network_oracle", "config": vars(args), "floor": floor,
                                      "machine": machine_info(), "versions": versions(), "rows": rows})
    write_text(out / "results.md", markdown_table(rows, cols) + "\n")
    print(markdown_table(rows, cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
