"""2x super-resolution of held-out MNIST digits with the bundled 28x28 MNIST network: a picture.

Rows: the held-out digit, its 2x2 average pooling (14x14, shown enlarged), then samples of
:func:`scoresolve.conditional.super_resolution` (``smc``, and the replacement baseline for
comparison), each pooling back to the observed 14x14 image (``smc``: exactly, up to rounding).

    python benchmarks/conditional_pictures.py --mnist PATH/t10k-images-idx3-ubyte.gz \\
        [--out docs/conditional_sr_mnist.png]

The digits are from the last 2,000 MNIST test images, which the bundled network did not see.
"""

from __future__ import annotations

import argparse
import time

import torch

from scoresolve.conditional import super_resolution
from scoresolve.io import load
from scoresolve.train.data import mnist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", required=True, help="MNIST t10k-images-idx3-ubyte.gz (labels beside it) or its folder")
    ap.add_argument("--out", default="docs/conditional_sr_mnist.png")
    ap.add_argument("--digits", type=int, default=6)
    ap.add_argument("--samples", type=int, default=2, help="samples per digit and method")
    ap.add_argument("--particles", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load("mnist")
    x = mnist(args.mnist, split="test")[: args.digits]
    low = torch.nn.functional.avg_pool2d(x, 2)
    lows = low.repeat_interleave(args.samples, 0)
    rows = {}
    for method, opts in (("smc", {"particles": args.particles}), ("replace", {"corrector": "none"})):
        t0, c0 = time.perf_counter(), time.process_time()
        res = super_resolution(model, None, lows, 2, method=method, steps=args.steps, progress=False,
                               generator=torch.Generator().manual_seed(0), return_result=True, **opts)
        err = (torch.nn.functional.avg_pool2d(res.samples, 2) - lows).abs().max()
        print(f"{method}: {lows.shape[0]} outputs, {res.info['score_rows'] / lows.shape[0]:.0f} score evals each, "
              f"max |pool(x) - y| = {float(err):.2e}, {time.perf_counter() - t0:.0f}s "
              f"(cpu {time.process_time() - c0:.0f}s)")
        rows[method] = res.samples
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["held-out digit", "observed 14x14 (2x2 mean)"]
    images = [x, low]
    for method, s in rows.items():
        for j in range(args.samples):
            labels.append(f"{method} sample {j + 1}")
            images.append(s[j:: args.samples])
    fig, axes = plt.subplots(len(images), args.digits, figsize=(1.3 * args.digits, 1.35 * len(images)))
    for i, (lab, imgs) in enumerate(zip(labels, images, strict=True)):
        for d in range(args.digits):
            ax = axes[i][d]
            ax.imshow(imgs[d, 0].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if d == 0:
                ax.set_ylabel(lab, fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
