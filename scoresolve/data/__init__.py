"""Data shipped with scoresolve: the bundled models, the digits mixture and the 8×8 digits themselves.

``digits.safetensors`` (117 KB) holds the 1,797 8×8 handwritten digits of the UCI "Optical Recognition of
Handwritten Digits" test set (E. Alpaydin, C. Kaynak, 1998; UCI Machine Learning Repository, licensed
CC BY 4.0), the same images in the same order as scikit-learn's ``load_digits()``: ``images`` uint8
``(1797, 8, 8)`` with values 0..16 and ``labels`` uint8 0..9. Reading them needs no scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

__all__ = ["DIGITS", "load_digits"]

DIGITS = Path(__file__).with_name("digits.safetensors")


def load_digits() -> tuple[Tensor, Tensor]:
    """The shipped digits: ``(images, labels)``, uint8 ``(1797, 8, 8)`` in 0..16 and int64 ``(1797,)``."""
    from safetensors.torch import load_file

    t = load_file(str(DIGITS))
    return t["images"], t["labels"].to(torch.int64)
