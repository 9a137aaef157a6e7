"""Training data: the 8×8 digits shipped with scoresolve (:mod:`scoresolve.data`), MNIST from its idx files,
2-D toy mixtures with exact densities, any tensor or torch ``Dataset``. (``image_grid`` / ``write_png`` are
re-exported from :mod:`scoresolve.io.image`, the one PNG writer.)"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import analytic
from ..data import load_digits
from ..data.mnist import MNIST_N_TRAIN, MNIST_SHA256, mnist, read_idx  # noqa: F401  (re-exported)
from ..io.checkpoint import torch_load_safe
from ..io.image import image_grid, write_png

__all__ = ["digits", "mnist", "read_idx", "ring", "toy2d", "load_data", "batch", "image_grid", "write_png",
           "TOY_SETS"]


def digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> Tensor:
    """The 1797 8×8 digits shipped with scoresolve (UCI optdigits test set, the images of scikit-learn's
    ``load_digits``; :mod:`scoresolve.data`) scaled to [-1, 1] as ``x / 8 - 1``, shape ``(N, 1, 8, 8)`` float32.

    ``split`` is ``"train"``, ``"test"`` (a held-out ``test_fraction`` chosen by a fixed permutation
    with ``seed``) or ``"all"``. No download and no scikit-learn.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    x = load_digits()[0].to(torch.float32).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    if split == "all":
        return x
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * x.shape[0]))
    return x[perm[:n_test]] if split == "test" else x[perm[n_test:]]


def ring(n_modes: int = 8, radius: float = 2.0, std: float = 0.1) -> analytic.GaussianMixture:
    """``n_modes`` equally weighted isotropic 2-D Gaussians on a circle (exact density and score)."""
    ang = torch.arange(n_modes, dtype=torch.float64) * 2 * math.pi / n_modes
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], -1)
    covs = torch.eye(2, dtype=torch.float64).expand(n_modes, 2, 2) * std**2
    return analytic.GaussianMixture(torch.ones(n_modes), means, covs, name=f"ring{n_modes}")


TOY_SETS = {"ring": ring, "grid": analytic.grid2d}


def toy2d(name: str = "ring", n: int = 10000, seed: int = 0, **kwargs: Any) -> tuple[Tensor, analytic.GaussianMixture]:
    """``n`` exact samples ``(n, 2)`` of a toy mixture (``"ring"`` or ``"grid"``) and the mixture itself."""
    if name not in TOY_SETS:
        raise ValueError(f"unknown toy data set {name!r}; known: {', '.join(TOY_SETS)}")
    mix = TOY_SETS[name](**kwargs)
    return mix.sample(n, torch.Generator().manual_seed(seed)), mix


def load_data(name: str, **kwargs: Any) -> Tensor:
    """Data by name for the CLI: ``digits``, ``ring``, ``grid``, or a path to a tensor saved with
    ``torch.save`` (read with ``weights_only=True``) or a ``.safetensors`` file with one tensor."""
    if name == "digits":
        return digits(**kwargs)
    if name in TOY_SETS:
        return toy2d(name, **kwargs)[0]
    p = Path(name)
    if p.is_file():
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            d = load_file(str(p))
            if len(d) != 1:
                raise ValueError(f"{p}: expected one tensor, found {sorted(d)}")
            return next(iter(d.values())).float()
        x = torch_load_safe(p)
        if not isinstance(x, Tensor):
            raise ValueError(f"{p}: expected a tensor, got {type(x).__name__}")
        return x.float()
    raise ValueError(f"unknown data {name!r}: use digits, {', '.join(TOY_SETS)} or a tensor file")


def batch(data: Any, idx: Tensor) -> Tensor:
    """Rows ``idx`` of a tensor or a map-style ``Dataset`` (items may be ``(x, label)`` pairs)."""
    if isinstance(data, Tensor):
        return data[idx]
    items = [data[int(i)] for i in idx]
    items = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
    return torch.stack([torch.as_tensor(it) for it in items])
