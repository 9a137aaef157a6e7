"""Small convolutional digit classifiers, bundled for feature-space FID: one of the 8×8 digits shipped with
scoresolve (``name="digits"``, the default) and one of 28×28 MNIST (``name="mnist"``).

MNIST papers score generators with the FID in the feature space of a LeNet trained on the same data; these are
such networks: two 3×3 convolutions (16, 32 channels), a 64-D feature layer (the FID features) and 10 outputs
(:class:`MNISTClassifier` pools after each convolution). ``python -m scoresolve.metrics.classifier`` trains the
digits one on the train split of :func:`scoresolve.train.data.digits`, and with ``--name mnist --data PATH``
the MNIST one on the first 8,000 MNIST test images (:func:`scoresolve.train.data.mnist`); each is evaluated on
its held-out split. Architectures, training settings and accuracies: docs/training.md."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import load_digits
from ..data.mnist import mnist
from .frechet import gaussian_moments

__all__ = ["DigitsClassifier", "MNISTClassifier", "load_classifier", "digits_with_labels", "train_classifier",
           "WEIGHTS", "CLASSIFIERS"]

_DATA = Path(__file__).resolve().parent.parent / "data"
WEIGHTS = _DATA / "digits_classifier.safetensors"
FEATURE_DIM = 64
_REFERENCE = "reference."  # key prefix of the held-out feature moments stored beside the weights
TEST_FRACTION = 0.2
SPLIT_SEED = 0


class DigitsClassifier(nn.Module):
    """The 8×8 classifier; :meth:`features` returns the 64-D penultimate activations used for FID.

    Subclasses change :attr:`size` (the image side) and :attr:`pool_first` (max-pool after the first
    convolution too); the parameter names are shared.
    """

    size = 8
    pool_first = False
    name = "digits"

    def __init__(self) -> None:
        super().__init__()
        side = self.size // (4 if self.pool_first else 2)
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * side * side, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: Tensor) -> Tensor:
        """``(B, 1, size, size)`` images in ``[-1, 1]`` → ``(B, 64)`` features."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, self.size, self.size):
            raise ValueError(f"the {self.name} classifier takes (B, 1, {self.size}, {self.size}) images, "
                             f"got shape {tuple(x.shape)}")
        h = torch.relu(self.conv1(x))
        if self.pool_first:
            h = torch.max_pool2d(h, 2)
        h = torch.max_pool2d(torch.relu(self.conv2(h)), 2)
        return torch.relu(self.fc1(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, 10)``."""
        return self.fc2(self.features(x))


class MNISTClassifier(DigitsClassifier):
    """The 28×28 MNIST classifier: conv 3×3 (1 → 16) · ReLU · max-pool 2 · conv 3×3 (16 → 32) · ReLU ·
    max-pool 2 → 32×7×7 → linear 1568 → 64 · ReLU (features) → linear 64 → 10."""

    size = 28
    pool_first = True
    name = "MNIST"


@dataclass(frozen=True)
class ClassifierSpec:
    """A bundled classifier: its network, weights file, training data and settings."""

    net: type[nn.Module]
    weights: Path
    data: Callable[..., tuple[Tensor, Tensor]]  # data(split, path) -> (images, labels)
    split: dict[str, Any]
    epochs: int
    noise: float


def _mnist_with_labels(split: str, path: str | Path | None) -> tuple[Tensor, Tensor]:
    if path is None:
        raise ValueError("the MNIST classifier needs the MNIST data: pass the t10k-images-idx3-ubyte.gz path")
    return mnist(path, split, labels=True)


@cache
def _load_cached(path: str, name: str) -> nn.Module:
    from safetensors.torch import load_file

    net = CLASSIFIERS[name].net()
    net.load_state_dict({k: v for k, v in load_file(path).items() if not k.startswith(_REFERENCE)})
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _spec(name: str) -> ClassifierSpec:
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; bundled: {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[name]


def load_classifier(path: str | Path | None = None, name: str = "digits") -> nn.Module:
    """The bundled classifier ``name`` (``"digits"`` or ``"mnist"``; or its network with the weights at
    ``path``), in eval mode, without gradients.

    Raises:
        FileNotFoundError: the weights are missing (train them with ``python -m scoresolve.metrics.classifier``).
    """
    p = Path(path) if path is not None else _spec(name).weights
    if not p.is_file():
        raise FileNotFoundError(
            f"{name} classifier weights not found at {p}; train them with "
            f"python -m scoresolve.metrics.classifier --name {name}"
        )
    return _load_cached(str(p), name)


def reference_moments(name: str = "digits", path: str | Path | None = None) -> tuple[Tensor, Tensor, int] | None:
    """Mean ``(64,)``, covariance ``(64, 64)`` (float64) and count of the classifier's features of its
    held-out images, as stored with its weights (``None`` if the file holds none). For ``"mnist"`` these are
    the 2,000 held-out MNIST images, so the Fréchet distance to them needs no MNIST files."""
    from safetensors.torch import load_file

    p = Path(path) if path is not None else _spec(name).weights
    d = load_file(str(p))
    if f"{_REFERENCE}mean" not in d:
        return None
    return d[f"{_REFERENCE}mean"].double(), d[f"{_REFERENCE}cov"].double(), int(d[f"{_REFERENCE}count"])


def classifier_metadata(path: str | Path | None = None, name: str = "digits") -> dict[str, str]:
    """The metadata stored with the weights (test accuracy, split, training settings)."""
    from safetensors import safe_open

    with safe_open(str(path or _spec(name).weights), framework="pt") as f:
        return dict(f.metadata() or {})


def digits_with_labels(split: str = "train") -> tuple[Tensor, Tensor]:
    """The shipped digits (:mod:`scoresolve.data`) as ``(N, 1, 8, 8)`` float32 in ``[-1, 1]`` and their labels, for
    ``split`` in ``train`` / ``test`` / ``all`` (the split of :func:`scoresolve.train.data.digits`)."""
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
    """Random ±1-pixel shifts (zero = background −1 padding) and Gaussian noise, for ``(B, 1, H, W)``."""
    b, _, h, w = x.shape
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    dx = torch.randint(0, 3, (b,), generator=g)
    dy = torch.randint(0, 3, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None]).reshape(b, 1, h, 1).expand(b, 1, h, w + 2)
    out = torch.gather(pad, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).reshape(b, 1, 1, w).expand(b, 1, h, w)
    out = torch.gather(out, 3, cols)
    return out + noise * torch.randn(out.shape, generator=g)


def train_classifier(epochs: int | None = None, seed: int = 0, batch_size: int = 64, lr: float = 2e-3,
                     noise: float | None = None, name: str = "digits",
                     data: str | Path | None = None) -> tuple[nn.Module, float]:
    """Train classifier ``name`` on its train split (``data``: the MNIST file for ``"mnist"``); returns the
    network and its accuracy on the held-out split. ``epochs``/``noise`` default to the bundled settings."""
    spec = _spec(name)
    epochs = spec.epochs if epochs is None else epochs
    noise = spec.noise if noise is None else noise
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = spec.data("train", data)
    xt, yt = spec.data("test", data)
    net = spec.net()
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


CLASSIFIERS: dict[str, ClassifierSpec] = {
    "digits": ClassifierSpec(DigitsClassifier, WEIGHTS, lambda split, path=None: digits_with_labels(split),
                             {"test_fraction": TEST_FRACTION, "split_seed": SPLIT_SEED, "scale": "x/8-1"}, 40, 0.1),
    "mnist": ClassifierSpec(MNISTClassifier, _DATA / "mnist_classifier.safetensors", _mnist_with_labels,
                            {"data": "MNIST test set (CC BY-SA 3.0)", "train": "first 8000", "test": "last 2000",
                             "scale": "2x/255-1"}, 15, 0.1),
}


def _reference_state(net: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """The held-out feature moments stored beside the weights (see :func:`reference_moments`)."""
    with torch.no_grad():
        mean, cov = gaussian_moments(net.features(x))
    return {f"{_REFERENCE}mean": mean, f"{_REFERENCE}cov": cov, f"{_REFERENCE}count": torch.tensor(x.shape[0])}


def main(argv: list[str] | None = None) -> None:
    """``python -m scoresolve.metrics.classifier [--out PATH]``: retrain and write the bundled weights."""
    from safetensors.torch import save_file

    p = argparse.ArgumentParser(description="Train a bundled digit classifier used for feature-space FID.")
    p.add_argument("--name", default="digits", choices=sorted(CLASSIFIERS), help="which classifier")
    p.add_argument("--data", default=None, help="mnist: the MNIST t10k-images-idx3-ubyte.gz file (labels beside it)")
    p.add_argument("--out", default=None, help="where to write the safetensors weights (default: the bundled file)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: 40 digits, 15 mnist)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and augmentation")
    args = p.parse_args(argv)
    spec = _spec(args.name)
    if args.name == "mnist" and args.data is None:
        p.error("--name mnist needs --data (the MNIST t10k-images-idx3-ubyte.gz file)")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    epochs = spec.epochs if args.epochs is None else args.epochs
    net, acc = train_classifier(epochs=epochs, seed=args.seed, name=args.name, data=args.data)
    meta = {
        "test_accuracy": f"{acc:.4f}",
        "split": json.dumps(spec.split),
        "training": json.dumps({"epochs": epochs, "seed": args.seed, "optimizer": "adam 2e-3 cosine",
                                "augmentation": f"+-1 pixel shifts, gaussian noise {spec.noise:g}"}),
        "torch": torch.__version__,
    }
    args.out = args.out or str(spec.weights)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    state.update(_reference_state(net, spec.data("test", args.data)[0]))
    save_file(state, args.out, metadata=meta)
    print(f"test accuracy {acc:.4f}; wrote {args.out} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
