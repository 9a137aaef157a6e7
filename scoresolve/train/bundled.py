"""Reproduce the digits model bundled with scoresolve (``scoresolve/data/digits_model.safetensors``).

    python -m scoresolve.train.bundled            # train (resumes from its checkpoint)
    python -m scoresolve.train.bundled --evaluate --eval-n 500 --eval-steps 200

Trains a small U-Net (:class:`~scoresolve.train.nets.UNet`) as an ε-network of the paper's VP SDE (β 0.1–20) by
continuous-time denoising score matching on the train split of the 8×8 digits, and stores its EMA weights in
float16; load it with ``scoresolve.io.load("digits")``. ``--evaluate`` prints the Fréchet distance in pixel space
and in the bundled classifier's features against the held-out split (beside the same statistic for draws of the
training images) and the held-out bits/dim. Settings and measured figures: docs/training.md."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from .. import analytic
from ..io import load
from ..likelihood import likelihood
from ..metrics import frechet_distance, gaussian_moments
from ..metrics.classifier import load_classifier
from ..sampling import sample
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
    parameterization="eps", loss="dsm", weighting="sigma2", reduce="mean", batch_size=64, lr=1e-3, warmup=200,
    grad_clip=1.0, ema_decay=0.999, eps=1e-5, seed=0, log_every=100,
)
STEPS = 2500


def evaluate(
    path: str | Path = OUT, n: int = 1000, steps: int = 1000, seed: int = 0, bpd: bool = True,
    bpd_rtol: float = 1e-5, bpd_n: int | None = None,
) -> dict[str, float]:
    """Sample quality and held-out bits/dim of the model at ``path`` (see the module docstring)."""
    import json

    model = load(path)
    test, train = digits("test"), digits("train")
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    res = sample(model, model.sde, "pc", steps, batch_size=n, generator=g, return_result=True)
    x = res.samples
    out: dict[str, float] = {"n_samples": n, "pc_steps": steps, "nfe": res.nfe,
                             "sample_seconds": time.perf_counter() - t0}

    def fd(a: torch.Tensor, b: torch.Tensor) -> float:
        return frechet_distance(*gaussian_moments(a), *gaussian_moments(b))

    ref = train[torch.randperm(len(train), generator=g)[:n]]
    gmm = analytic.digits().sample(n, g)
    out["fd_pixels"] = fd(x, test)
    out["fd_pixels_train_vs_test"] = fd(ref, test)
    out["fd_pixels_gmm_vs_test"] = fd(gmm, test)
    out["fraction_outside_range"] = float((x.abs() > 1.05).float().mean())
    clf = load_classifier()
    with torch.no_grad():
        f = clf.features
        out["fid_classifier"] = fd(f(x.clamp(-1, 1)), f(test))
        out["fid_classifier_train_vs_test"] = fd(f(ref), f(test))
        out["fid_classifier_gmm_vs_test"] = fd(f(gmm.clamp(-1, 1)), f(test))
    if bpd:
        t0 = time.perf_counter()
        gq = torch.Generator().manual_seed(seed + 1)
        xt = test if bpd_n is None else test[:bpd_n]
        xd = xt + torch.rand(xt.shape, generator=gq) / 8.0
        r = likelihood(model, model.sde, xd, rtol=bpd_rtol, atol=bpd_rtol, generator=gq, data_range=None,
                       trace="hutchinson")
        nll = r.nll.double()
        out["test_nll_nats"] = float(nll.mean())
        out["test_bpd"] = float(nll.mean() / (64 * math.log(2)) + 3.0)
        out["test_bpd_stderr"] = float(nll.std() / (64 * math.log(2)) / math.sqrt(len(nll)))
        out["bpd_n"] = len(nll)
        out["bpd_nfe"] = float(getattr(r, "nfe", float("nan")))
        out["bpd_seconds"] = time.perf_counter() - t0
    print(json.dumps(out, indent=1))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoint", type=Path, default=None, help="resumable checkpoint (default: <out>.ckpt.pt)")
    ap.add_argument("--evaluate", action="store_true", help="evaluate the model at --out instead of training")
    ap.add_argument("--eval-n", type=int, default=1000)
    ap.add_argument("--eval-steps", type=int, default=1000)
    ap.add_argument("--no-bpd", action="store_true")
    ap.add_argument("--bpd-n", type=int, default=None, help="held-out images for bits/dim (default: all 359)")
    ap.add_argument("--bpd-rtol", type=float, default=1e-5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.evaluate:
        evaluate(args.out, n=args.eval_n, steps=args.eval_steps, bpd=not args.no_bpd, bpd_n=args.bpd_n,
                 bpd_rtol=args.bpd_rtol)
        return
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
