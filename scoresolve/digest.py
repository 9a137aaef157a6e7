"""Content digests: SHA-256 of what a model computes with (its weights, SDE settings and conversions),
used to key calibration caches and to refuse resuming sharded runs with other weights."""

from __future__ import annotations

import functools
import hashlib
import itertools
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


def _walk_content(obj: Any, h: Any, *, find_module: bool = False) -> int:
    """Feed into ``h`` what ``obj`` computes with: networks' state dicts, tensors, SDE configs, numbers and
    strings, reached through wrappers, closures, bound methods, partials and instance attributes (six levels
    deep, each object once, in depth-first order); the qualified names of the functions met record the
    conversion. Returns how many tensors (weights) it found. With ``find_module`` it hashes nothing and returns
    1 at the first network (``nn.Module``) met, else 0."""
    seen: set[int] = set()
    made: list[Any] = []  # the containers built on the way, kept alive so that no id is reused while walking
    stack: list[tuple[Any, int]] = [(obj, 0)]  # (object, depth); depth -1: bytes to hash
    n = 0
    while stack:
        o, depth = stack.pop()
        if depth < 0:
            h.update(o)
            continue
        if depth > 6 or id(o) in seen:
            continue
        seen.add(id(o))
        children: list[Any] = []
        if o is None or isinstance(o, (bool, int, float, str, bytes)):
            h.update(repr(o).encode())
        elif isinstance(o, torch.nn.Module):
            if find_module:
                return 1
            h.update(type(o).__qualname__.encode())
            for k, v in o.state_dict().items():
                children += [(k.encode(), -1), (v, depth + 1)]
        elif isinstance(o, Tensor):
            if not find_module:
                update_digest(h, o)
            n += 1
        elif isinstance(o, SDE):
            h.update(json.dumps(o.config(), sort_keys=True, default=repr).encode())
        elif isinstance(o, (dict, list, tuple)):
            items = list(map(o.__getitem__, sorted(o, key=repr))) if isinstance(o, dict) else o[:10_000]
            children = list(zip(items, itertools.repeat(depth + 1)))
        elif isinstance(o, (type, types.ModuleType, torch.Generator, torch.device, torch.dtype)):
            h.update(repr(o).encode())
        elif isinstance(o, functools.partial):
            children = [((o.func, o.args, o.keywords), depth + 1)]
        elif isinstance(o, types.MethodType):
            children = [((o.__func__, o.__self__), depth + 1)]
        elif isinstance(o, types.FunctionType):
            h.update(f"{o.__module__}.{o.__qualname__}".encode())
            cells = []
            for c in o.__closure__ or ():
                try:
                    cells.append(c.cell_contents)
                except ValueError:  # an empty cell
                    cells.append(None)
            children = [((cells, o.__defaults__, o.__kwdefaults__), depth + 1)]
        else:
            h.update(type(o).__qualname__.encode())
            attrs = getattr(o, "__dict__", None)
            if isinstance(attrs, dict):
                children = [(attrs, depth + 1)]
        made += children
        stack += reversed(children)
    return 0 if find_module else n


def content_digest(model: Any) -> tuple[str, bool]:
    """``(SHA-256 hex digest, has_weights)`` of what ``model`` computes with (see :func:`model_fingerprint`)."""
    h = hashlib.sha256()
    n = _walk_content(model, h)
    return h.hexdigest(), n > 0


def holds_network(model: Any) -> bool:
    """Whether ``model`` computes with a ``torch.nn.Module`` anywhere (attributes, closures, partials, bound
    methods): a trained network rather than a closed form."""
    return bool(_walk_content(model, hashlib.sha256(), find_module=True))  # the hash is discarded
