"""Content digests: SHA-256 of what a model computes with (its weights, SDE settings and conversions),
used to key calibration caches and to refuse resuming sharded runs with other weights."""

from __future__ import annotations

import functools
import hashlib
import json
import types
from typing import Any

import torch
from torch import Tensor

from .sde import SDE


def update_digest(h: Any, t: Tensor) -> None:
    """Feed a tensor's dtype, shape and raw bytes into the hash object ``h``."""
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensor_sha256(t: Tensor) -> str:
    """SHA-256 (hex) of a tensor's dtype, shape and bytes: the per-tensor digest stored in checkpoints."""
    h = hashlib.sha256()
    update_digest(h, t)
    return h.hexdigest()


def _walk_content(obj: Any, h: Any, seen: set[int], depth: int = 0, modules: list[Any] | None = None) -> int:
    """Feed into ``h`` what ``obj`` computes with: networks' state dicts, tensors, SDE configs, numbers and
    strings, reached through wrappers, closures, bound methods, partials and instance attributes; the
    qualified names of the functions met record the conversion. Returns how many tensors (weights) it
    found. With a ``modules`` list it only collects the networks (``nn.Module``) met, hashing nothing."""
    if depth > 6 or id(obj) in seen:
        return 0
    seen.add(id(obj))
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(repr(obj).encode())
        return 0
    if isinstance(obj, torch.nn.Module) and modules is not None:
        modules.append(obj)
        return 0
    if isinstance(obj, torch.nn.Module):
        h.update(type(obj).__qualname__.encode())
        n = 0
        for k, v in obj.state_dict().items():
            h.update(k.encode())
            n += _walk_content(v, h, seen, depth + 1, modules)
        return n
    if isinstance(obj, Tensor):
        if modules is None:
            update_digest(h, obj)
        return 1
    if isinstance(obj, SDE):
        h.update(json.dumps(obj.config(), sort_keys=True, default=repr).encode())
        return 0
    if isinstance(obj, dict):
        obj = [obj[k] for k in sorted(obj, key=repr)]
    if isinstance(obj, (list, tuple)):
        n = 0
        for v in obj[:10_000]:
            n += _walk_content(v, h, seen, depth + 1, modules)
        return n
    if isinstance(obj, (type, types.ModuleType, torch.Generator, torch.device, torch.dtype)):
        h.update(repr(obj).encode())
        return 0
    n = 0
    if isinstance(obj, functools.partial):
        n += _walk_content((obj.func, obj.args, obj.keywords), h, seen, depth + 1, modules)
    elif isinstance(obj, types.MethodType):
        n += _walk_content((obj.__func__, obj.__self__), h, seen, depth + 1, modules)
    elif isinstance(obj, types.FunctionType):
        h.update(f"{obj.__module__}.{obj.__qualname__}".encode())
        cells = []
        for c in obj.__closure__ or ():
            try:
                cells.append(c.cell_contents)
            except ValueError:  # an empty cell
                cells.append(None)
        n += _walk_content((cells, obj.__defaults__, obj.__kwdefaults__), h, seen, depth + 1, modules)
    else:
        h.update(type(obj).__qualname__.encode())
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            n += _walk_content(attrs, h, seen, depth + 1, modules)
    return n


def content_digest(model: Any) -> tuple[str, bool]:
    """``(SHA-256 hex digest, has_weights)`` of what ``model`` computes with (see :func:`model_fingerprint`)."""
    h = hashlib.sha256()
    n = _walk_content(model, h, set())
    return h.hexdigest(), n > 0


def holds_network(model: Any) -> bool:
    """Whether ``model`` computes with a ``torch.nn.Module`` anywhere (attributes, closures, partials, bound
    methods): a trained network rather than a closed form."""
    found: list[Any] = []
    _walk_content(model, hashlib.sha256(), set(), modules=found)  # the hash is discarded
    return bool(found)
