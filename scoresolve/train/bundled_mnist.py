"""Reproduce the 28×28 MNIST model bundled with scoresolve (``scoresolve/data/mnist_model.safetensors``).

    python -m scoresolve.train.bundled_mnist --data PATH/t10k-images-idx3-ubyte.gz --steps STEPS

MNIST is not shipped (CC BY-SA 3.0, Y. LeCun, C. Cortes, C. J. C. Burges): ``--data`` is the test-set images file
as distributed (labels beside it), checked against its published sha256; the first 8,000 images train, the last
2,000 are held out (:func:`scoresolve.train.data.mnist`). Trains a small U-Net
(:class:`~scoresolve.train.nets.UNet`) as an ε-network of the paper's VP SDE (β 0.1–20) by continuous-time
denoising score matching. No schedule depends on the total number of steps and a checkpoint is written every 250
steps, so ``--steps N`` gives the same weights however often it was interrupted. Load it with
``scoresolve.io.load("mnist")``; architecture, settings and figures: docs/training.md."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..sde import VPSDE
from .data import mnist
from .nets import UNet
from .trainer import TrainConfig, Trainer

OUT = Path(__file__).resolve().parent.parent / "data" / "mnist_model.safetensors"

ARCH = dict(
    in_channels=1, image_size=28, base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1,
    attn_resolutions=(7,), dropout=0.0, embedding="fourier", fourier_scale=16.0,
)
CONFIG = TrainConfig(
    parameterization="eps", loss="dsm", weighting="sigma2", reduce="mean", batch_size=64, lr=1e-3, warmup=500,
    grad_clip=1.0, ema_decay=0.999, eps=1e-5, seed=0, log_every=250,
)
CHECKPOINT_EVERY = 250


def train(data: str | Path, steps: int, out: Path = OUT, checkpoint: Path | None = None) -> Trainer:
    """Train (or resume) to ``steps`` and write the EMA weights to ``out``; prints progress every 250 steps."""
    x = mnist(data, "train")
    torch.manual_seed(0)
    tr = Trainer(UNet(**ARCH), VPSDE(), x, CONFIG, data_range=(-1.0, 1.0))
    ckpt = checkpoint or out.with_name(out.stem + ".ckpt.pt")
    if ckpt.is_file():
        tr.load_checkpoint(ckpt)
        print(f"resumed from {ckpt} at step {tr.step}", flush=True)
    t0 = time.perf_counter()
    while tr.step < steps:
        tr.train(min(steps, (tr.step // CHECKPOINT_EVERY + 1) * CHECKPOINT_EVERY), checkpoint=ckpt, progress=False)
        print(f"step {tr.step} loss {tr.losses[-1]:.4f} wall {time.perf_counter() - t0:.0f} s", flush=True)
    tr.save_model(out, dtype=torch.float16,
                  extra={"data": "MNIST test set, first 8000 images (2x/255-1); last 2000 held out; CC BY-SA 3.0",
                         "script": f"python -m scoresolve.train.bundled_mnist --data t10k-images-idx3-ubyte.gz "
                                   f"--steps {tr.step}"})
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) at step {tr.step}", flush=True)
    return tr


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="MNIST t10k-images-idx3-ubyte(.gz) file or the folder holding it")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoint", type=Path, default=None, help="resumable checkpoint (default: <out>.ckpt.pt)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train(args.data, args.steps, args.out, args.checkpoint)


if __name__ == "__main__":
    main()
