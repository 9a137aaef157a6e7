"""The one entry point that loads a model from a bundled name, a local file or folder, or a Hub id (the
file format is :mod:`scoresolve.io.checkpoint`, the download :mod:`scoresolve.io.hub`)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from ..models import ScoreModel
from .checkpoint import _TORCH_SUFFIXES, BUNDLED, CheckpointError, load_file
from .hub import download

__all__ = ["load"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def load(
    source: str | os.PathLike[str],
    *,
    use_ema: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    config: Mapping[str, Any] | None = None,
) -> ScoreModel:
    """Load a score model from a bundled name, a local file or directory, or a Hugging Face Hub id.

    Resolution order: a bundled name (``"digits"``, ``"mnist"``; write ``"./digits"`` for a local folder of that
    name), an existing path, then a Hub repo id ``"org/name"`` (through huggingface_hub and its
    cache; offline with ``HF_HUB_OFFLINE=1`` or ``local_files_only=True``).

    Args:
        source: as above.
        use_ema: take the EMA weights when the file holds both (default).
        device, dtype: move/cast the network after loading.
        revision, local_files_only, cache_dir: Hub options (see :func:`scoresolve.io.hub.download`).
        config: the scoresolve config, for a torch state dict that does not carry one.

    Returns:
        A :class:`~scoresolve.ScoreModel` with its ``sde``, ``sample_shape``, ``parameterization``,
        ``data_range`` and ``data_moments`` (if stored); ``model.metadata["config"]`` holds the full config.

    Raises:
        CheckpointError: truncated/corrupted file, unsafe pickle, config/weights mismatch (names the
            keys and shapes), unknown architecture, a Hub id missing from the cache while offline.
        FileNotFoundError: nothing of that name exists.
    """
    s = os.fspath(source)
    if s in BUNDLED:
        path = BUNDLED[s]
        if not path.is_file():
            raise CheckpointError(f"the bundled model {s!r} is missing from this installation ({path})")
        return load_file(path, use_ema=use_ema, device=device, dtype=dtype)
    if os.path.exists(s):
        return load_file(s, use_ema=use_ema, config=config, device=device, dtype=dtype)
    if _REPO_ID.match(s) and not s.endswith(_TORCH_SUFFIXES + (".safetensors",)):
        local = download(s, revision=revision, local_files_only=local_files_only, cache_dir=cache_dir)
        return load_file(local, use_ema=use_ema, config=config, device=device, dtype=dtype)
    raise FileNotFoundError(
        f"cannot load {s!r}: not a bundled model ({', '.join(BUNDLED)}), not an existing file or directory, "
        "and not a Hugging Face repo id of the form 'org/name'"
    )
