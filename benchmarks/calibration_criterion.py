"""Does the trajectory calibration's held-out criterion rank candidates as the Fréchet distance does?

For a bundled network (``--model digits`` or ``mnist``) and each budget in ``--nfe``, every candidate of
``solver="auto"``'s calibration (``recipes.trajectory_candidates`` on its fitted and fixed grids, fitted as
``calibrate_dp`` fits them from 48 teacher draws) runs on ``--holdout`` held-out prior draws. Per candidate it
prints the Fréchet distance (FD) in the bundled classifier's features to the held-out real images divided by the
calibration teacher's FD from the same draws (``fd_ratio``), and the criteria ``calibrate_dp.moment_mismatch``
against the teacher's endpoints on raw and on clamped ([-1, 1], the model's data range) samples, each on all draws
and on the first 24 (the calibration's default held-out count), the paired RMSE and the Gaussian FD in pixel space.
Writes JSON and a Markdown table to ``bench_out/calibration_criterion/``. Results: docs/benchmarks.md.

    python benchmarks/calibration_criterion.py --model digits --nfe 5,10,20 --holdout 600
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, prepare_out_dir, run_cli, write_json, write_text  # noqa: E402
from real_models import load_real_model  # noqa: E402

from scoresolve.calibrate import _run  # noqa: E402
from scoresolve.calibrate_dp import (  # noqa: E402
    FIXED_GRIDS,
    POWERS,
    dp_path,
    end_weights,
    local_costs,
    moment_mismatch,
    teacher_trajectories,
)
from scoresolve.metrics import frechet_distance, gaussian_moments  # noqa: E402
from scoresolve.models import as_score_fn  # noqa: E402
from scoresolve.recipes import trajectory_candidates  # noqa: E402
from scoresolve.solvers.grids import make_grid  # noqa: E402
from scoresolve.solvers.loop import plan  # noqa: E402

NAME = "calibration_criterion"
N_FIT, FEW = 48, 24
COLUMNS = [("candidate", "candidate"), ("fd_ratio", "FD / teacher FD"), ("mm", "criterion, raw"),
           ("mm_clamp", "criterion, clamped"), ("mm_few", f"raw, first {FEW}"),
           ("mm_few_clamp", f"clamped, first {FEW}"), ("rmse", "paired RMSE"), ("fd_pixels", "pixel FD")]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits")
    p.add_argument("--nfe", default="5,10,20")
    p.add_argument("--holdout", type=int, default=600)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rm = load_real_model(args.model)
    model, sde = rm.model, rm.model.sde
    fn, eps, shape = as_score_fn(model), sde.default_eps, tuple(model.sample_shape)
    lo, hi = model.data_range or (-float("inf"), float("inf"))
    g = torch.Generator().manual_seed(args.seed)
    x_T = torch.randn((N_FIT + args.holdout, *shape), generator=g) * sde.prior_std
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        tr = teacher_trajectories(fn, sde, x_T, eps, fine=32, sub=2, spacing="karras")  # as calibrate_trajectory
        x_h, end = x_T[N_FIT:], tr.end[N_FIT:].double()

        def fd(x: torch.Tensor) -> float:
            return frechet_distance(*gaussian_moments(rm.features(x.float())), rm.ref_mean, rm.ref_cov)

        fd_teacher, w = fd(end), end_weights(sde, tr, N_FIT)
        rows: list[dict[str, Any]] = []
        for nfe in (int(v) for v in args.nfe.split(",")):
            for cand in trajectory_candidates():
                n = plan(cand.solver, nfe, cand.final)
                grids = {g_: make_grid(g_, sde, n, eps) for g_ in FIXED_GRIDS}
                c0, c = local_costs(cand.solver, sde, tr, N_FIT)
                grids.update({f"fitted{q:g}": tr.times[dp_path(c0 * w.pow(q), c * w.pow(q), n)] for q in POWERS})
                for gname, grid in grids.items():
                    out = _run(fn, sde, cand.solver, grid, x_h, cand.final)[0].double()
                    oc, ec = out.clamp(lo, hi), end.clamp(lo, hi)
                    rows.append({"nfe": nfe, "candidate": f"{cand.name}@{gname}", "fd_ratio": fd(out) / fd_teacher,
                                 "mm": moment_mismatch(out, end), "mm_clamp": moment_mismatch(oc, ec),
                                 "mm_few": moment_mismatch(out[:FEW], end[:FEW]),
                                 "mm_few_clamp": moment_mismatch(oc[:FEW], ec[:FEW]),
                                 "rmse": float((out - end).pow(2).mean().sqrt()),
                                 "fd_pixels": frechet_distance(*gaussian_moments(out.flatten(1)),
                                                               *gaussian_moments(end.flatten(1)))})
    config = {"command": "python benchmarks/calibration_criterion.py " + " ".join(argv or sys.argv[1:]),
              "model": args.model, "holdout": args.holdout, "teacher_fd": fd_teacher, "wall_seconds":
              time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu, "machine": machine_info("cpu")}
    out_dir = prepare_out_dir(args.out, NAME)
    text = [f"# {NAME}: {args.model}, {args.holdout} held-out draws, teacher FD {fd_teacher:.3g}", ""]
    for nfe in sorted({r["nfe"] for r in rows}):
        text += [f"## {nfe} NFE", "", markdown_table(sorted((r for r in rows if r["nfe"] == nfe),
                                                            key=lambda r: r["fd_ratio"]), COLUMNS)]
    write_json(out_dir / "results.json", {"rows": rows, "config": config})
    write_text(out_dir / "results.md", "\n".join(text))
    print("\n".join(text))
    return {"rows": rows, "config": config}


if __name__ == "__main__":
    sys.exit(run_cli(main))
