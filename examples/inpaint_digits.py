"""Inpaint and colorize 8×8 digits with an unconditional score model; write a PNG grid. Offline, CPU.

    python examples/inpaint_digits.py                    # < 1 minute on one CPU core
    python examples/inpaint_digits.py --model analytic --particles 32 --out inpaint.png

Inpainting: the bottom half of each digit is hidden and re-sampled given the top half, with the
paper's replacement method and with the SMC particle filter (asymptotically exact). The model is the
bundled digits network (``scoresolve.io.load("digits")``) when it is installed, else the exact score of
the analytic digits mixture (``scoresolve.analytic.digits()``); ``--model`` picks explicitly.

Colorization: a colour version of the digits mixture (each digit class has its own tint, so the
gray image's shape determines the colour) is colorized from the mean of its channels with
``scoresolve.colorize`` — exact score, so the colours recovered are those the model implies.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import scoresolve as ss
from scoresolve.analytic import GaussianMixture, digits
from scoresolve.conditional import colorize, inpaint
from scoresolve.io.image import save_grid

TINTS = torch.tensor(
    [[1.0, 0.2, 0.2], [0.2, 0.9, 0.2], [0.2, 0.3, 1.0], [1.0, 0.8, 0.1], [0.9, 0.2, 0.9],
     [0.1, 0.9, 0.9], [1.0, 0.5, 0.1], [0.5, 0.2, 1.0], [0.6, 0.9, 0.3], [0.9, 0.6, 0.6]],
    dtype=torch.float64,
)  # fmt: skip


def colour_digits() -> GaussianMixture:
    """x_rgb = tint_k ⊗ x_gray per component k (+ a little independent noise), as a 192-D mixture.

    With gray in [-1, 1] the tint multiplies (x + 1) so that the background stays at -1 in every
    channel: mean ``tint ⊗ (μ+1) − 1``, covariance ``tint tintᵀ ⊗ Σ + 0.01² I``.
    """
    g = digits()
    k = g.n_components
    tints = TINTS[:k]
    means = torch.stack([torch.kron(tints[i], g.means[i] + 1.0) - 1.0 for i in range(k)])
    covs = torch.stack(
        [torch.kron(torch.outer(tints[i], tints[i]), g.covs[i]) + 1e-4 * torch.eye(192, dtype=torch.float64)
         for i in range(k)]
    )  # fmt: skip
    return GaussianMixture(g.weights, means, covs, event_shape=(3, 8, 8), name="colour_digits")


def digits_model(choice: str):
    if choice in ("auto", "bundled"):
        try:
            from scoresolve.io import load

            model = load("digits")
            return model, model.sde, "bundled digits network"
        except Exception as e:  # the bundled checkpoint is optional
            if choice == "bundled":
                raise
            print(f"bundled digits model not available ({type(e).__name__}); using the analytic mixture's exact score")
    sde = ss.VPSDE()
    return digits().score_model(sde), sde, "analytic digits mixture (exact score)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6, help="digits per row")
    ap.add_argument("--particles", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--model", choices=["auto", "bundled", "analytic"], default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("inpaint_digits.png"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)

    model, sde, model_name = digits_model(args.model)
    truth = digits().sample(args.n, g)  # (n, 1, 8, 8) in [-1, 1]
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :4] = True  # top half observed
    t0 = time.perf_counter()
    rep = inpaint(model, sde, truth, mask, method="replace", steps=2 * args.steps, generator=g)
    smc = inpaint(model, sde, truth, mask, method="smc", particles=args.particles, steps=args.steps, generator=g,
                  return_result=True)  # fmt: skip
    print(f"inpainting ({model_name}): {time.perf_counter() - t0:.1f} s, "
          f"SMC {smc.info['score_rows'] / args.n:.0f} score evaluations per digit")  # fmt: skip

    cgm = colour_digits()
    csde = ss.VPSDE()
    colour_truth = cgm.sample(args.n, g)
    gray = colour_truth.mean(1)
    t0 = time.perf_counter()
    col = colorize(cgm.score_model(csde), csde, gray, particles=args.particles, steps=args.steps, generator=g)
    print(f"colorization (exact score of the colour mixture): {time.perf_counter() - t0:.1f} s")

    def rgb(x: torch.Tensor) -> torch.Tensor:  # (n, 1 or 3, 8, 8) -> (n, 3, 8, 8), data range -1..1
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    hidden = truth.clone()
    hidden[:, :, 4:] = -1.0
    rows = [
        ("truth", rgb(truth)),
        ("observed (top half)", rgb(hidden)),
        ("replace", rgb(rep)),
        (f"SMC K={args.particles}", rgb(smc.samples)),
        ("gray input", rgb(gray[:, None])),
        ("colorized", rgb(col)),
        ("colour truth", rgb(colour_truth)),
    ]
    # one row of the grid per line above, one column per digit (scoresolve's image writer)
    save_grid(torch.cat([imgs[: args.n] for _, imgs in rows]), args.out, nrow=args.n, scale=6)
    print("rows, top to bottom: " + "; ".join(name for name, _ in rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
