r"""A small convolutional classifier of the 8×8 digits (shipped with scoresolve), bundled for feature-space FID.

MNIST papers score generators with the FID in the feature space of a LeNet trained on the same data;
this is the analogue for the 8×8 digits that ship with scoresolve (no download). The network:

    conv 3×3 (1 → 16) · ReLU · conv 3×3 (16 → 32) · ReLU · max-pool 2 → 32×4×4
    → linear 512 → 64 · ReLU  (the 64 features used by FID) → linear 64 → 10

It is trained by ``python -m scoresolve.metrics.classifier`` (a fixed seed, Adam, 40 epochs, ±1-pixel
shifts and small Gaussian noise as augmentation, about a minute on one CPU core) on the *train* split
and evaluated on the held-out *test* split; the weights (≈ 150 KB) go to
``scoresolve/data/digits_classifier.safetensors`` with the test accuracy in the file's metadata.

The split is the one of :func:`scoresolve.train.data.digits`: data scaled to ``[-1, 1]`` as
``x / 8 - 1``, a permutation of the 1797 images by ``torch.randperm`` with seed 0, the first 20 %
(359 images) held out. Neither the data nor the classifier needs scikit-learn.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["DigitsClassifier", "load_classifier", "digits_with_labels", "train_classifier", "WEIGHTS"]

WEIGHTS = Path(__file__).resolve().parent.parent / "data" / "digits_classifier.safetensors"
FEATURE_DIM = 64
TEST_FRACTION = 0.2
SPLIT_SEED = 0


class DigitsClassifier(nn.Module):
    """The classifier; :meth:`features` returns the 64-D penultimate activations used for FID."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: Tensor) -> Tensor:
        """``(B, 1, 8, 8)`` images in ``[-1, 1]`` → ``(B, 64)`` features."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"the digits classifier takes (B, 1, 8, 8) images, got shape {tuple(x.shape)}")
        h = torch.relu(self.conv1(x))
        h = torch.max_pool2d(torch.relu(self.conv2(h)), 2)
        return torch.relu(self.fc1(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, 10)``."""
        return self.fc2(self.features(x))


@cache
def _load_cached(path: str) -> DigitsClassifier:
    from safetensors.torch import load_file

    net = DigitsClassifier()
    net.load_state_dict(load_file(path))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def load_classifier(path: str | Path | None = None) -> DigitsClassifier:
    """The bundled classifier (or the one at ``path``), in eval mode, without gradients.

    Raises:
        FileNotFoundError: the weights are missing (train them with ``python -m scoresolve.metrics.classifier``).
    """
    p = Path(path) if path is not None else WEIGHTS
    if not p.is_file():
        raise FileNotFoundError(
            f"digits classifier weights not found at {p}; train them with python -m scoresolve.metrics.classifier"
        )
    return _load_cached(str(p))


def classifier_metadata(path: str | Path | None = None) -> dict[str, str]:
    """The metadata stored with the weights (test accuracy, split, training settings)."""
    from safetensors import safe_open

    with safe_open(str(path or WEIGHTS), framework="pt") as f:
        return dict(f.metadata() or {})


def digits_with_labels(split: str = "train") -> tuple[Tensor, Tensor]:
    """The shipped digits (:mod:`scoresolve.data`) as ``(N, 1, 8, 8)`` float32 in ``[-1, 1]`` and their labels, for
    ``split`` in ``train`` / ``test`` / ``all`` (the split of :func:`scoresolve.train.data.digits`)."""
    from ..data import load_digits

    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    images, y = load_digits()
    x = images.to(torch.float32).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    if split == "all":
        return x, y
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = int(round(TEST_FRACTION * x.shape[0]))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    return x[idx], y[idx]


def _augment(x: Tensor, g: torch.Generator, noise: float) -> Tensor:
    """Random ±1-pixel shifts (zero = background −1 padding) and Gaussian noise."""
    b = x.shape[0]
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    dx = torch.randint(0, 3, (b,), generator=g)
    dy = torch.randint(0, 3, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(8)[None]).reshape(b, 1, 8, 1).expand(b, 1, 8, 10)
    out = torch.gather(pad, 2, rows)
    cols = (dx[:, None] + torch.arange(8)[None]).reshape(b, 1, 1, 8).expand(b, 1, 8, 8)
    out = torch.gather(out, 3, cols)
    return out + noise * torch.randn(out.shape, generator=g)


def train_classifier(epochs: int = 40, seed: int = 0, batch_size: int = 64, lr: float = 2e-3,
                     noise: float = 0.1) -> tuple[DigitsClassifier, float]:
    """Train on the train split; returns the network and its accuracy on the held-out split."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = digits_with_labels("train")
    xt, yt = digits_with_labels("test")
    net = DigitsClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i: i + batch_size]
            loss = nn.functional.cross_entropy(net(_augment(x[idx], g, noise)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(xt).argmax(1) == yt).float().mean())
    return net, acc


def main(argv: list[str] | None = None) -> None:
    """``python -m scoresolve.metrics.classifier [--out PATH]``: retrain and write the bundled weights."""
    from safetensors.torch import save_file

    p = argparse.ArgumentParser(description="Train the bundled 8x8 digits classifier used for feature-space FID.")
    p.add_argument("--out", default=str(WEIGHTS), help="where to write the safetensors weights")
    p.add_argument("--epochs", type=int, default=40, help="training epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and augmentation")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    net, acc = train_classifier(epochs=args.epochs, seed=args.seed)
    meta = {
        "test_accuracy": f"{acc:.4f}",
        "split": json.dumps({"test_fraction": TEST_FRACTION, "split_seed": SPLIT_SEED, "scale": "x/8-1"}),
        "training": json.dumps({"epochs": args.epochs, "seed": args.seed, "optimizer": "adam 2e-3 cosine",
                                "augmentation": "+-1 pixel shifts, gaussian noise 0.1"}),
        "torch": torch.__version__,
    }
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, args.out, metadata=meta)
    print(f"test accuracy {acc:.4f}; wrote {args.out} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
