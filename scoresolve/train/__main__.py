"""Command line: ``python -m scoresolve.train --data digits --sde vp --steps 20000 --out runs/digits``.

Writes ``<out>/checkpoint.pt`` (resumable: rerunning the same command continues from it),
``<out>/model.safetensors`` + ``config.json`` (EMA weights, loadable with ``scoresolve.io.load(out)``),
and, with ``--sample-every``, PNG grids of samples for image data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .._cli_help import HelpFormatter
from ..io.checkpoint import CheckpointError
from ..sde import VESDE, VPSDE, RectifiedFlow, SubVPSDE
from .data import TOY_SETS, load_data
from .nets import MLP, UNet
from .trainer import LOSSES, TrainConfig, Trainer, save_sample_grid


def build_parser(prog: str = "python -m scoresolve.train") -> argparse.ArgumentParser:
    d = TrainConfig()
    ap = argparse.ArgumentParser(
        prog=prog, formatter_class=HelpFormatter,
        description="Train a score model by denoising score matching. Writes OUT/checkpoint.pt (rerunning the "
        "same command resumes), OUT/model.safetensors + config.json (EMA weights; scoresolve.io.load(OUT)) and, "
        "with --sample-every, PNG grids of samples.",
    )
    ap.add_argument(
        "--data", default="digits", help=f"digits, {', '.join(TOY_SETS)}, or a tensor file (.pt/.safetensors)"
    )
    ap.add_argument("--sde", default="vp", choices=["vp", "ve", "subvp", "flow"],
                    help="forward SDE (flow: rectified flow; use --loss cfm --parameterization velocity)")
    ap.add_argument("--shift", type=float, default=1.0, help="flow: the time shift (SD3: 3)")
    ap.add_argument("--beta-min", type=float, default=0.1, help="VP / sub-VP: beta at t = 0")
    ap.add_argument("--beta-max", type=float, default=20.0, help="VP / sub-VP: beta at t = 1")
    ap.add_argument("--sigma-min", type=float, default=0.01, help="VE: noise level at t = 0")
    ap.add_argument("--sigma-max", type=float, default=50.0, help="VE: noise level at t = 1")
    ap.add_argument("--arch", default="auto", choices=["auto", "mlp", "unet"], help="auto: unet for (C, H, W) data")
    ap.add_argument("--base-channels", type=int, default=32, help="unet: channels of the first level")
    ap.add_argument("--channel-mults", default="1,2", help="unet: channel multiplier per level, comma-separated")
    ap.add_argument("--hidden", type=int, default=128, help="mlp width")
    ap.add_argument("--depth", type=int, default=3, help="mlp depth")
    ap.add_argument("--parameterization", default=d.parameterization,
                    choices=["score", "eps", "x0", "v", "denoiser", "velocity"], help="what the network predicts")
    ap.add_argument("--loss", default=d.loss, choices=list(LOSSES), help="training loss (scoresolve.train.losses)")
    ap.add_argument("--weighting", default=d.weighting, choices=["sigma2", "likelihood"],
                    help="loss weight over time: sigma_t^2 (Song et al.) or the likelihood weighting g(t)^2")
    ap.add_argument("--reduce", default=d.reduce, choices=["mean", "sum"], help="loss over a sample's entries")
    ap.add_argument("--steps", type=int, default=20000, help="optimiser steps in all (a resumed run stops there)")
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size")
    ap.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    ap.add_argument("--warmup", type=int, default=d.warmup, help="steps of linear learning-rate warm-up")
    ap.add_argument("--grad-clip", type=float, default=d.grad_clip, help="clip the gradient norm to this")
    ap.add_argument("--ema-decay", type=float, default=d.ema_decay, help="decay of the weights' moving average")
    ap.add_argument("--seed", type=int, default=d.seed, help="seed of the initialisation and the batches")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default runs/<data>_<sde>)")
    ap.add_argument("--checkpoint-every", type=int, default=1000, help="write OUT/checkpoint.pt every N steps")
    ap.add_argument("--sample-every", type=int, default=0, help="write a PNG grid of samples every N steps (0: never)")
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-amp", action="store_true", help="disable bfloat16 autocast on CUDA")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


#: (argument, attribute, lower bound, bound included) of the numeric options checked before any work
_BOUNDS = [
    ("--steps", "steps", 1, True), ("--batch-size", "batch_size", 1, True), ("--lr", "lr", 0.0, False),
    ("--warmup", "warmup", 0, True), ("--grad-clip", "grad_clip", 0.0, True), ("--ema-decay", "ema_decay", 0.0, True),
    ("--checkpoint-every", "checkpoint_every", 0, True), ("--sample-every", "sample_every", 0, True),
    ("--hidden", "hidden", 1, True), ("--depth", "depth", 1, True), ("--base-channels", "base_channels", 1, True),
    ("--threads", "threads", 1, True), ("--beta-min", "beta_min", 0.0, True), ("--beta-max", "beta_max", 0.0, False),
    ("--sigma-min", "sigma_min", 0.0, False), ("--sigma-max", "sigma_max", 0.0, False),
]


def _check_args(args: argparse.Namespace) -> None:
    import math

    for flag, attr, low, inclusive in _BOUNDS:
        v = getattr(args, attr)
        if v is None:
            continue
        if not math.isfinite(v) or (v < low if inclusive else v <= low):
            raise ValueError(f"{flag} must be {'>=' if inclusive else '>'} {low}, got {v}")
    if args.ema_decay >= 1:
        raise ValueError(f"--ema-decay must be < 1, got {args.ema_decay}")


def main(argv: list[str] | None = None, prog: str = "python -m scoresolve.train") -> Path:
    """Run the command line; a bad argument, unreadable data or a refused resume prints one line on stderr
    and exits with status 2 (no traceback)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        _check_args(args)
        return _run(args)
    except (ValueError, TypeError, CheckpointError, FileNotFoundError, OSError, FloatingPointError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        parser.exit(2, f"{parser.prog}: error: {msg}\n")
    raise AssertionError("unreachable")  # pragma: no cover


def _run(args: argparse.Namespace) -> Path:
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"--device {args.device!r} is not usable here: {first}") from None
    data = load_data(args.data)
    if args.sde == "ve":
        sde = VESDE(args.sigma_min, args.sigma_max)
    elif args.sde == "flow":
        sde = RectifiedFlow(shift=args.shift)
    else:
        sde = (VPSDE if args.sde == "vp" else SubVPSDE)(args.beta_min, args.beta_max)
    shape = tuple(data.shape[1:])
    arch = args.arch if args.arch != "auto" else ("unet" if len(shape) == 3 else "mlp")
    time_transform = "log" if args.parameterization == "denoiser" else "identity"
    torch.manual_seed(args.seed)
    if arch == "unet":
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"--arch unet needs square (C, H, W) data, got sample shape {shape}")
        net = UNet(in_channels=shape[0], image_size=shape[1], base_channels=args.base_channels,
                   channel_mults=[int(m) for m in args.channel_mults.split(",")], time_transform=time_transform)
    else:
        net = MLP(sample_shape=shape, hidden=args.hidden, depth=args.depth, time_transform=time_transform)
    lo, hi = float(data.min()), float(data.max())
    data_range = (-1.0, 1.0) if args.data == "digits" else (lo, hi)
    tr = Trainer(
        net, sde, data, device=device, data_range=data_range, parameterization=args.parameterization,
        loss=args.loss, weighting=args.weighting, reduce=args.reduce, batch_size=args.batch_size, lr=args.lr,
        warmup=args.warmup, grad_clip=args.grad_clip, ema_decay=args.ema_decay, seed=args.seed,
        amp=None if not args.no_amp else False,
    )
    out = args.out or Path("runs") / f"{Path(args.data).stem}_{args.sde}"
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    if ckpt.is_file():
        tr.load_checkpoint(ckpt)  # refuses (CheckpointError, listing the differences) if a setting changed
        print(f"resuming from {ckpt} at step {tr.step}")

    def grid(t: Trainer) -> None:
        save_sample_grid(t, out / f"samples_{t.step:07d}.png")

    tr.train(args.steps, checkpoint=ckpt, checkpoint_every=args.checkpoint_every,
             sample_every=args.sample_every if len(shape) == 3 else 0, sample_fn=grid,
             progress=False if args.no_progress else None)
    tr.save_model(out)
    summary = {"step": tr.step, "losses": tr.losses[-5:], "out": str(out)}
    print(json.dumps(summary))
    return out


if __name__ == "__main__":
    main()
