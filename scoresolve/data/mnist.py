"""The MNIST test set read from its idx files (not shipped: the path is given), split as the bundled MNIST
model and classifier use it."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["MNIST_SHA256", "MNIST_N_TRAIN", "read_idx", "mnist"]

#: sha256 of the MNIST test-set files as distributed (Y. LeCun, C. Cortes, C. Burges; CC BY-SA 3.0).
MNIST_SHA256 = {
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
#: The split of the 10,000 MNIST test images used by the bundled MNIST model and classifier.
MNIST_N_TRAIN = 8000


def read_idx(path: str | os.PathLike[str]) -> Tensor:
    """Read an idx file (the MNIST format, optionally gzip-compressed) of unsigned bytes as a ``uint8``
    tensor of the shape its header states. Raises ``ValueError`` on a malformed or truncated file."""
    p = Path(path)
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{p}: not an idx file of unsigned bytes (magic {raw[:4].hex()})")
    ndim = raw[3]
    head = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:head])
    if len(raw) != head + math.prod(shape):
        raise ValueError(f"{p}: idx header says shape {shape} ({math.prod(shape)} bytes), file holds {len(raw) - head}")
    return torch.frombuffer(bytearray(raw[head:]), dtype=torch.uint8).reshape(shape)


def _mnist_file(path: str | os.PathLike[str], kind: str) -> Path:
    """The images (``kind="images"``) or labels file: ``path`` itself, the file of that kind in the folder
    ``path``, or (for the labels) the file beside the images file ``path``."""
    p = Path(path)
    pattern = f"*t10k-{kind}-idx*-ubyte*"
    if p.is_dir():
        found = sorted(p.glob(pattern))
        p = found[0] if found else p / pattern
    elif kind == "labels":
        p = p.with_name(p.name.replace("images-idx3", "labels-idx1"))
    if not p.is_file():
        raise FileNotFoundError(f"MNIST {kind} file not found: {p} (the t10k-{kind}-idx*-ubyte[.gz] file of MNIST)")
    return p


def mnist(
    path: str | os.PathLike[str], split: str = "train", labels: bool = False, check: bool = True
) -> Tensor | tuple[Tensor, Tensor]:
    """The MNIST test set (10,000 28×28 digits) scaled to [-1, 1] as ``2 x / 255 - 1``, ``(N, 1, 28, 28)`` float32.

    ``path`` is the ``t10k-images-idx3-ubyte.gz`` file (the labels file is expected beside it) or the
    folder holding both. ``split``: ``"train"`` (the first 8,000 images), ``"test"`` (the last 2,000)
    or ``"all"``. ``labels=True`` also returns the ``int64`` labels. ``check`` compares the files'
    sha256 with the published ones when their names are the published names. MNIST is licensed
    CC BY-SA 3.0 (Y. LeCun, C. Cortes, C. J. C. Burges); it is not shipped with scoresolve.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    img = _mnist_file(path, "images")
    files = {"images": img}
    if labels:
        files["labels"] = _mnist_file(path if Path(path).is_dir() else img, "labels")
    if check:
        for f in files.values():
            want = next((v for k, v in MNIST_SHA256.items() if f.name.endswith(k)), None)
            if want is not None and hashlib.sha256(f.read_bytes()).hexdigest() != want:
                raise ValueError(f"{f}: sha256 differs from the published MNIST file's (corrupted download?)")
    raw = read_idx(files["images"])
    if raw.ndim != 3 or tuple(raw.shape[1:]) != (28, 28):
        raise ValueError(f"{img}: expected 28×28 images, got shape {tuple(raw.shape)}")
    sl = {"train": slice(0, MNIST_N_TRAIN), "test": slice(MNIST_N_TRAIN, None), "all": slice(None)}[split]
    x = raw[sl].to(torch.float32).div_(127.5).sub_(1.0).unsqueeze(1).contiguous()
    if not labels:
        return x
    y = read_idx(files["labels"])
    if y.shape != raw.shape[:1]:
        raise ValueError(f"{files['labels']}: labels of shape {tuple(y.shape)} for {raw.shape[0]} images")
    return x, y[sl].to(torch.int64)
