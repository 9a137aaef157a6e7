"""Which PF-ODE steps send trajectories to another mixture component (16-D anisotropic mixture × VE).

For a step from σ_a to σ_a / r started on the exact trajectory (fine 4th-order Adams from the prior noise),
followed by the exact flow to σ = 0, count the trajectories whose final component (``GaussianMixture.labels``)
differs from the exact flow's. Two rules: the first-order data-prediction step (DDIM / DPM-Solver++(1)) and
DPM-Solver++(2M) whose previous denoiser value is exact (at σ_a · r). Also: where the components separate
(fraction of trajectories whose responsibility for their final component passes 0.5 / 0.99 at each σ), and
how many trajectories ``solver="auto"`` switches at a few budgets.

This explains the one open bar of the few-step issue (FD within 1.1× of the exact ODE's at 10 NFE on this
mixture): see docs/fast_samplers.md, "Why the anisotropic mixture misses 1.1× at 10 NFE".

Usage::

    python benchmarks/mode_switches.py            # n = 2000, seed 1 (~3 min on one CPU thread)
    python benchmarks/mode_switches.py --quick    # n = 500
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, prepare_out_dir, versions, write_json, write_text  # noqa: E402

import scoresolve as ss  # noqa: E402
from scoresolve.solvers.grids import make_grid  # noqa: E402
from scoresolve.solvers.ipndm import IPNDM  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--budgets", type=int, nargs="*", default=None, help="auto budgets to count switches at")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = prepare_out_dir(args.out, "mode_switches")
    n = args.n or (500 if args.quick else 2000)
    budgets = args.budgets if args.budgets is not None else ([10] if args.quick else [10, 12, 15, 20])
    gm = ss.analytic.anisotropic(dim=16, n_components=8, seed=0)
    sde = ss.VESDE(sigma_min=0.01, sigma_max=50.0)
    score = gm.score_model(sde)
    s_max = float(sde.sigma_max)
    x_T = sde.prior_sample((n, 16), generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)

    def t_of(sig: float) -> float:
        return float(sde.t_from_sigma(torch.tensor(sig, dtype=torch.float64)))

    def flow(x: torch.Tensor, s0: float, s1: float) -> torch.Tensor:
        """Fine PF-ODE solution from noise level s0 to s1 (s1 = 0: on to sigma = 0)."""
        if s1 == 0:
            g = make_grid("log_snr", sde, 300, sde.default_eps)
            g = torch.cat([torch.tensor([t_of(s0)], dtype=torch.float64), g[g < t_of(s0) - 1e-12]])
            return ss.sample(score, sde, solver=IPNDM(order=4), grid=g, x_T=x, final="zero")
        g = sde.t_from_sigma(torch.exp(torch.linspace(math.log(s0), math.log(s1), 151, dtype=torch.float64)))
        g[0] = t_of(s0)
        return ss.sample(score, sde, solver=IPNDM(order=4), grid=g, x_T=x, final="none")

    def denoise(x: torch.Tensor, sig: float) -> torch.Tensor:
        return x + sig**2 * score(x, torch.full((x.shape[0],), t_of(sig), dtype=torch.float64))

    ref = flow(x_T, s_max, 0)
    lab = gm.labels(ref)

    def switches(x: torch.Tensor) -> int:
        return int((gm.labels(x) != lab).sum())

    # where the components separate
    sep_rows = []
    for sig in (30.0, 20.0, 15.0, 10.0, 7.0, 5.0, 3.5, 2.5, 1.8, 1.4, 1.0):
        x = flow(x_T, s_max, sig)
        r = gm.responsibilities(x, torch.full((n,), t_of(sig), dtype=torch.float64), sde).gather(1, lab[:, None])[:, 0]
        sep_rows.append({"sigma": sig, "resp>0.5": float((r > 0.5).double().mean()),
                         "resp>0.99": float((r > 0.99).double().mean())})
        print(f"sigma {sig:5.1f}: final component's responsibility > 0.5 for {sep_rows[-1]['resp>0.5']:.3f}, "
              f"> 0.99 for {sep_rows[-1]['resp>0.99']:.3f}", flush=True)

    # one step from the exact state
    step_rows = []
    for sa in (30.0, 20.0, 14.0, 10.0, 7.0, 5.0, 3.5, 2.5):
        xa = flow(x_T, s_max, sa)
        Da = denoise(xa, sa)
        row: dict[str, object] = {"sigma_a": sa}
        for r in (1.5, 2.0, 3.0):
            sb = sa / r
            first = (sb / sa) * xa + (1 - sb / sa) * Da
            row[f"r={r} 1st"] = switches(flow(first, sb, 0))
            sp = sa * r
            if sp <= s_max:
                Dp = denoise(flow(x_T, s_max, sp), sp)
                r0 = math.log(sp / sa) / math.log(sa / sb)
                Dd = (1 + 0.5 / r0) * Da - (0.5 / r0) * Dp
                row[f"r={r} 2nd"] = switches(flow((sb / sa) * xa + (1 - sb / sa) * Dd, sb, 0))
            else:
                row[f"r={r} 2nd"] = None
        step_rows.append(row)
        print(row, flush=True)

    auto_rows = []
    for K in budgets:
        x = ss.sample(score, sde, solver="auto", nfe=K, x_T=x_T)
        auto_rows.append({"nfe": K, "switches": switches(x)})
        print(f"auto, {K} NFE: {auto_rows[-1]['switches']} of {n} trajectories switch component", flush=True)

    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    md = "# Mode switches of single PF-ODE steps\n\n" + f"`python benchmarks/mode_switches.py {cmd}`\n\n"
    md += f"Machine: {machine_info()}; n = {n}, noise seed {args.seed}.\n\n## Where the components separate\n\n"
    md += markdown_table(sep_rows, [("sigma", "σ"), ("resp>0.5", "resp. > 0.5"), ("resp>0.99", "resp. > 0.99")])
    md += "\n## One step from the exact state, then the exact flow (trajectories switched)\n\n"
    cols = [("sigma_a", "σ_a")] + [(f"r={r} {o}", f"r = {r}, {o}") for r in (1.5, 2.0, 3.0) for o in ("1st", "2nd")]
    md += markdown_table(step_rows, cols)
    if auto_rows:
        md += "\n## `solver=\"auto\"`\n\n" + markdown_table(auto_rows, [("nfe", "NFE"), ("switches", "switched")])
    write_text(out / "results.md", md)
    write_json(out / "results.json", {"config": vars(args), "n": n, "machine": machine_info(), "versions": versions(),
                                      "separation": sep_rows, "one_step": step_rows, "auto": auto_rows})
    print(f"wrote {out / 'results.md'}")


if __name__ == "__main__":
    main()
