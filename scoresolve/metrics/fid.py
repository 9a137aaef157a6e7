r"""Fréchet Inception Distance in two flavours.

- :class:`DigitsFID` / :func:`classifier_fid`: the FID in the 64-D feature space of the bundled 8×8
  digits classifier (:mod:`scoresolve.metrics.classifier`), against held-out digits — the analogue
  of the LeNet-feature FID of MNIST papers; no download, CPU-fast.
- :func:`inception_fid`: the real Inception FID (Heusel et al. 2017, arXiv:1706.08500) through
  torch-fidelity, **only** with Inception weights the user passes or already has in torch's hub cache:
  nothing is ever downloaded implicitly.

:math:`FID = \lVert\mu_1-\mu_2\rVert^2 + \mathrm{tr}(\Sigma_1+\Sigma_2-2(\Sigma_1\Sigma_2)^{1/2})` of
Gaussians fitted to the features (:func:`scoresolve.metrics.frechet_distance`). FID is biased upward
at small sample sizes; :meth:`DigitsFID.floor` gives the value real digits reach at the same size, so
results read as "FID / floor".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .classifier import classifier_metadata, digits_with_labels, load_classifier
from .frechet import frechet_distance, gaussian_moments

__all__ = ["DigitsFID", "classifier_fid", "classifier_features", "inception_fid", "INCEPTION_WEIGHTS_NAME"]

INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"


@torch.no_grad()
def classifier_features(x: Tensor, batch_size: int = 1024, classifier: Any = None) -> Tensor:
    """64-D digits-classifier features of ``(N, 1, 8, 8)`` images in ``[-1, 1]``, float64 ``(N, 64)``."""
    net = classifier or load_classifier()
    x = torch.as_tensor(x)
    if x.ndim == 2 and x.shape[1] == 64:
        x = x.reshape(-1, 1, 8, 8)
    if not torch.isfinite(x).all():
        raise ValueError("classifier_features: the images contain NaN or inf")
    p = next(net.parameters())
    feats = [net.features(x[i: i + batch_size].to(device=p.device, dtype=p.dtype)).to(torch.float64).cpu()
             for i in range(0, x.shape[0], batch_size)]
    return torch.cat(feats)


def classifier_fid(x: Tensor, y: Tensor) -> float:
    """FID between two sets of 8×8 digit images in the bundled classifier's feature space."""
    for name, v in (("x", x), ("y", y)):
        if v.shape[0] < 2:
            raise ValueError(f"classifier_fid: {name} needs at least 2 images, got {v.shape[0]}")
    m1, c1 = gaussian_moments(classifier_features(x))
    m2, c2 = gaussian_moments(classifier_features(y))
    return frechet_distance(m1, c1, m2, c2)


class DigitsFID:
    """Classifier-feature FID of generated 8×8 digits against a fixed reference set.

    Args:
        reference: ``"test"`` (the 359 held-out digits, default), ``"train"``, ``"all"``, or a tensor
            of reference images ``(N, 1, 8, 8)`` in ``[-1, 1]``.

    The reference moments are computed once. :meth:`floor` estimates the FID that *real* digits of
    the same sample size reach (bootstrap draws from the train split, which the reference does not
    contain), so a generator's FID reads as a multiple of that floor.
    """

    def __init__(self, reference: str | Tensor = "test") -> None:
        self.classifier = load_classifier()
        if isinstance(reference, str):
            self.reference_name = f"digits/{reference}"
            ref = digits_with_labels(reference)[0]
        else:
            self.reference_name = "user tensor"
            ref = torch.as_tensor(reference)
        self.n_reference = int(ref.shape[0])
        self.mean, self.cov = gaussian_moments(classifier_features(ref, classifier=self.classifier))
        self._pool: Tensor | None = None

    def features(self, x: Tensor) -> Tensor:
        return classifier_features(x, classifier=self.classifier)

    def fid(self, x: Tensor) -> float:
        """FID of images ``x`` ``(N, 1, 8, 8)`` against the reference."""
        if x.shape[0] < 2:
            raise ValueError(f"fid needs at least 2 images, got {x.shape[0]}")
        m, c = gaussian_moments(self.features(x.detach().cpu().float()))
        return frechet_distance(m, c, self.mean, self.cov)

    def floor(self, n: int, draws: int = 50, seed: int = 0) -> tuple[float, float]:
        """Mean and standard error of the FID of ``n`` real train-split digits (drawn with replacement)
        against the reference, over ``draws`` draws."""
        if self._pool is None:
            self._pool = self.features(digits_with_labels("train")[0])
        g = torch.Generator().manual_seed(seed)
        vals = []
        for _ in range(draws):
            idx = torch.randint(0, self._pool.shape[0], (n,), generator=g)
            m, c = gaussian_moments(self._pool[idx])
            vals.append(frechet_distance(m, c, self.mean, self.cov))
        v = torch.tensor(vals, dtype=torch.float64)
        return float(v.mean()), float(v.std() / draws**0.5)

    def describe(self) -> dict[str, Any]:
        meta = classifier_metadata()
        return {
            "feature_extractor": "bundled 8x8 digits classifier (64-D penultimate features)",
            "classifier_test_accuracy": float(meta.get("test_accuracy", "nan")),
            "reference": self.reference_name,
            "n_reference": self.n_reference,
        }


def _inception_weights(weights_path: str | os.PathLike[str] | None) -> Path:
    if weights_path is not None:
        p = Path(weights_path)
        if not p.is_file():
            raise FileNotFoundError(f"inception_fid: weights_path {str(p)!r} is not a file")
        return p
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_NAME
    if cached.is_file():
        return cached
    raise FileNotFoundError(
        "inception_fid needs torch-fidelity's Inception weights and never downloads them: pass "
        f"weights_path= (the file {INCEPTION_WEIGHTS_NAME} that torch-fidelity uses), or place it at {cached}"
    )


class _ImageDataset(torch.utils.data.Dataset):
    """Images in ``data_range`` → uint8 ``(3, H, W)`` as torch-fidelity expects (gray repeated)."""

    def __init__(self, x: Tensor, data_range: tuple[float, float]) -> None:
        lo, hi = data_range
        x = ((x.detach().cpu().float() - lo) / (hi - lo) * 255).round().clamp(0, 255).to(torch.uint8)
        self.x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return self.x[i]


def inception_fid(
    samples: Tensor | str,
    reference: Tensor | str,
    *,
    weights_path: str | os.PathLike[str] | None = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    device: str | None = None,
    batch_size: int = 64,
    **kwargs: Any,
) -> float:
    """The Inception FID through torch-fidelity (``pip install torch-fidelity``).

    Args:
        samples, reference: image tensors ``(N, 1 or 3, H, W)`` in ``data_range``, or folders of
            images / torch-fidelity input names.
        weights_path: torch-fidelity's Inception weights file; default: torch's hub cache only.
            Never downloaded.
        device: ``"cuda"`` to run Inception on the GPU (default: CUDA when available).
        kwargs: passed to ``torch_fidelity.calculate_metrics``.
    """
    try:
        import torch_fidelity
    except ImportError as e:
        raise ImportError("inception_fid needs torch-fidelity: pip install torch-fidelity") from e
    weights = _inception_weights(weights_path)

    def wrap(v: Tensor | str) -> Any:
        if isinstance(v, (str, os.PathLike)):
            return str(v)
        if not isinstance(v, Tensor) or v.ndim != 4 or v.shape[1] not in (1, 3):
            raise ValueError("inception_fid: tensors must be images (N, 1 or 3, H, W)")
        return _ImageDataset(v, data_range)

    cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    metrics = torch_fidelity.calculate_metrics(
        input1=wrap(samples), input2=wrap(reference), fid=True, cuda=cuda, batch_size=batch_size, verbose=False,
        feature_extractor_weights_path=str(weights), **kwargs,
    )
    return float(metrics["frechet_inception_distance"])
