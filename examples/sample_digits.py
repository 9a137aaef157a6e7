"""Sample the digits model bundled with scoresolve and write a PNG grid — no download.

    python examples/sample_digits.py                      # 64 samples, PC sampler, 1000 steps
    python examples/sample_digits.py --steps 200 --out digits.png --seed 3

Uses matplotlib when it is installed, else a small zlib-only PNG writer.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import scoresolve as ss
from scoresolve.io import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="number of samples")
    ap.add_argument("--steps", type=int, default=1000, help="PC predictor steps (NFE = 2 × steps + 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("digits_samples.png"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = load("digits")  # a ScoreModel: U-Net ε-network, its VP SDE, sample shape (1, 8, 8)
    t0 = time.perf_counter()
    res = ss.sample(model, model.sde, solver="pc", steps=args.steps, batch_size=args.n,
                    generator=torch.Generator().manual_seed(args.seed), return_result=True)
    x = res.samples.clamp(-1, 1)
    print(f"{args.n} samples, NFE {res.nfe}, {time.perf_counter() - t0:.1f} s")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    if plt is not None:
        nrow = int(args.n**0.5 + 0.999)
        ncol = (args.n + nrow - 1) // nrow
        fig, axes = plt.subplots(ncol, nrow, figsize=(nrow * 0.6, ncol * 0.6))
        for k, ax in enumerate(axes.flat):
            ax.axis("off")
            if k < args.n:
                ax.imshow(x[k, 0].numpy(), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
        fig.suptitle(f"scoresolve bundled digits model — PC, {args.steps} steps", fontsize=8)
        fig.savefig(args.out, dpi=100)
    else:
        from scoresolve.train.data import image_grid, write_png

        write_png(args.out, 255 - image_grid(x, data_range=(-1, 1)), scale=8)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
