"""Reproduce the digits model bundled with scoresolve (``scoresolve/data/digits_model.safetensors``).

    python -m scoresolve.train.bundled            # ~10-15 min on one or two CPU cores

What it does: trains a small U-Net (:class:`~scoresolve.train.nets.UNet`, base 32 channels, levels
8×8 and 4×4, attention at 4×4, Fourier time embedding) as an ε-network of the paper's VP SDE
(β 0.1–20) with continuous-time denoising score matching (λ = σ², reduce mean), on the training
split of scikit-learn's 8×8 digits scaled to [-1, 1] (``x / 8 - 1``; 20 % held out with seed 0).
Adam lr 1e-3 (higher than the paper's 2e-4 because the run is short), warm-up 200 steps, gradient
clipping 1, EMA 0.999, batch 128, 3000 steps, seed 0, on the CPU. The EMA weights are stored in
float16 (1.3 MB) and load back as float32. A resumable checkpoint is written next to the output every
500 steps; rerunning the command resumes from it.

Load it with ``scoresolve.io.load("digits")``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..sde import VPSDE
from .data import digits
from .nets import UNet
from .trainer import TrainConfig, Trainer

OUT = Path(__file__).resolve().parent.parent / "data" / "digits_model.safetensors"

ARCH = dict(
    in_channels=1, image_size=8, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
    attn_resolutions=(4,), dropout=0.0, embedding="fourier", fourier_scale=16.0,
)
CONFIG = TrainConfig(
    parameterization="eps", loss="dsm", weighting="sigma2", reduce="mean", batch_size=128, lr=1e-3, warmup=200,
    grad_clip=1.0, ema_decay=0.999, eps=1e-5, seed=0, log_every=100,
)
STEPS = 3000


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", type=Path, default=None, help="resumable checkpoint (default: <out>.ckpt.pt)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = UNet(**ARCH)
    tr = Trainer(net, VPSDE(), digits("train"), CONFIG, data_range=(-1.0, 1.0))
    ckpt = args.checkpoint or args.out.with_name(args.out.stem + ".ckpt.pt")
    if ckpt.is_file():
        tr.load_checkpoint(ckpt)
        print(f"resumed from {ckpt} at step {tr.step}")
    t0 = time.perf_counter()
    tr.train(args.steps, checkpoint=ckpt, checkpoint_every=500)
    print(f"trained to step {tr.step} in {time.perf_counter() - t0:.0f} s; loss per 100 steps: "
          + ", ".join(f"{v:.4f}" for v in tr.losses))
    tr.save_model(args.out, dtype=torch.float16,
                  extra={"data": "sklearn digits train split (x/8-1, 20% held out, seed 0)",
                         "script": "python -m scoresolve.train.bundled"})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
