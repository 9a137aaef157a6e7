"""Sample the digits model bundled with scoresolve and write a PNG grid — no download, seconds on a CPU.

    python examples/sample_digits.py                      # 64 samples, DPM-Solver++(2M), 20 evaluations
    python examples/sample_digits.py --solver pc --steps 500 --out digits.png --seed 3

The grid is written by scoresolve's one image writer (:func:`scoresolve.io.image.save_grid`: grey
gutters, data range -1..1 mapped to black..white; Pillow when installed, else zlib).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import scoresolve as ss
from scoresolve.io import load
from scoresolve.io.image import save_grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="number of samples")
    ap.add_argument("--solver", default="dpmpp_2m", help="a registered solver (scoresolve solvers)")
    ap.add_argument("--nfe", type=int, default=None, help="score evaluations, final step included (default 20)")
    ap.add_argument("--steps", type=int, default=None, help="grid intervals instead of --nfe (pc: predictor steps)")
    ap.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    ap.add_argument("--out", type=Path, default=Path("digits_samples.png"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = load("digits")  # a ScoreModel: U-Net ε-network, its VP SDE, sample shape (1, 8, 8)
    nfe = 20 if args.nfe is None and args.steps is None else args.nfe
    res = ss.sample(model, solver=args.solver, steps=args.steps, nfe=nfe, seeds=range(args.seed, args.seed + args.n),
                    return_result=True)
    print(f"{args.n} samples, NFE {res.nfe}, {res.seconds:.1f} s")
    save_grid(res.samples, args.out, data_range=model.data_range or (-1, 1), scale=4)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
