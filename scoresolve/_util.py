"""Small helpers every layer uses: argument checks, closest-match errors, atomic file writes, JSON
conversion and model fingerprints. Imports nothing from the rest of the package except the SDE type."""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import math
import os
import re
import socket
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_int",
    "content_digest",
    "check_float",
    "closest",
    "one_of",
    "atomic_write",
    "to_json",
    "model_signature",
    "same_signature",
]


# --- argument checks ----------------------------------------------------------------------------
def check_int(value: Any, name: str, *, min: int = 1, max: int | None = None) -> int:
    """Validate an integer argument in ``[min, max]`` (a bool is not an integer), naming it in the error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < min or (max is not None and value > max):
        bound = f"in [{min}, {max}]" if max is not None else f">= {min}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def check_float(value: Any, name: str, *, positive: bool = True) -> float:
    """Validate a finite number ``> 0`` (``positive``) or ``>= 0``, naming it in the error (TypeError for a
    non-number)."""
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number {bound}, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number {bound}, got {value!r}") from None
    if not math.isfinite(v) or (v <= 0 if positive else v < 0):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def closest(value: Any, options: Sequence[str], n: int = 1) -> str:
    """``" Did you mean 'x'?"`` naming the valid options closest to ``value`` (empty if none is close)."""
    close = difflib.get_close_matches(str(value), list(options), n=n, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def one_of(value: Any, options: Sequence[str], name: str) -> str:
    """Validate a string option: ``value`` if it is one of ``options``, else a ValueError naming the argument,
    the valid choices and the closest one."""
    if isinstance(value, str) and value in options:
        return value
    raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}.{closest(value, options)}")


# --- files ----------------------------------------------------------------------------------------
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _temp_prefix(dest: Path) -> str:
    return f".{dest.name}."


def sweep_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries that a killed writer of ``path`` left beside it; returns them.

    :func:`atomic_write` names its temporary ``.<name>.<host>-<pid>.<random>.tmp``; one whose process is no
    longer running on this host is stale. A temporary of another host, or of an older naming, is removed once
    it is an hour old. Called at every atomic write of ``path`` (and by the checkpoint loaders; errors ignored).
    """
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    prefix = _temp_prefix(dest)
    removed: list[Path] = []
    try:
        candidates = [q for q in folder.iterdir() if q.name.startswith(prefix) and ".tmp" in q.name[len(prefix):]]
    except OSError:
        return removed
    for q in candidates:
        owner = q.name[len(prefix):].split(".")[0]
        host, _, pid = owner.rpartition("-")
        stale = False
        if host == _HOST and pid.isdigit():
            stale = int(pid) != os.getpid() and not _pid_alive(int(pid))
        else:
            with contextlib.suppress(OSError):
                stale = time.time() - q.stat().st_mtime > 3600
        if stale:
            with contextlib.suppress(OSError):
                q.unlink()
                removed.append(q)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: the process exists
        return True
    return True


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], *, error: type[Exception] = OSError, mkdir: bool = False, suffix: str = ".tmp"
) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success flush it and ``os.replace`` it onto ``path``.

    On any error the temporary file is removed and ``path`` keeps its previous content; a process killed
    mid-write cannot clean up, and its temporary is removed by the next write of ``path``
    (:func:`sweep_temporaries`). ``mkdir`` creates
    the folder; otherwise a missing or read-only folder raises ``error`` (as does a failed write). ``suffix``
    ends the temporary name (e.g. ``".tmp.npz"`` for writers that append an extension).
    """
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    if mkdir:
        folder.mkdir(parents=True, exist_ok=True)
    if not folder.is_dir():
        raise error(f"cannot write {dest}: directory {folder} does not exist")
    sweep_temporaries(dest)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{_temp_prefix(dest)}{_HOST}-{os.getpid()}.", suffix=suffix)
    except OSError as e:
        raise error(f"cannot write {dest}: directory {folder} is not writable ({e})") from e
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except OSError as e:
        raise error(f"writing {dest} failed ({e}); the previous file, if any, is unchanged") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def to_json(v: Any, *, strict: bool = False, error: type[Exception] = ValueError) -> Any:
    """``v`` with tuples as lists, keys as strings and tensors as lists. ``strict``: a non-finite float
    raises ``error`` and other objects pass unchanged; otherwise an object JSON cannot hold becomes its
    ``repr``."""
    if isinstance(v, (list, tuple)):
        return [to_json(u, strict=strict, error=error) for u in v]
    if isinstance(v, dict):
        return {str(k): to_json(u, strict=strict, error=error) for k, u in v.items()}
    if isinstance(v, Tensor):
        return v.detach().cpu().tolist()
    if isinstance(v, float) and strict and not math.isfinite(v):
        raise error(f"config value {v} is not finite")
    if isinstance(v, (str, int, float, bool)) or v is None or strict:
        return v
    return repr(v)


# --- fingerprints ---------------------------------------------------------------------------------
_PROBE_SEED = 0x5C0E
_SIG_RTOL = 1e-3


def model_signature(model: Callable[[Tensor, Tensor], Tensor], sde: Any, sample_shape: Sequence[int]) -> list[float]:
    """A short fingerprint of a score model: its outputs at 4 fixed probe points and 3 times,
    projected on 8 fixed random directions (96 numbers; 3 evaluations). Compared with a relative
    tolerance of 1e-3 (:func:`same_signature`), so it survives float noise across devices but not
    another model."""
    g = torch.Generator().manual_seed(_PROBE_SEED)
    shape = (4, *sample_shape)
    d = math.prod(sample_shape)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    proj = torch.randn(d, 8, generator=g, dtype=torch.float64) / math.sqrt(d)
    out = []
    for frac in (0.9, 0.5, 0.05):
        t = torch.full((4,), frac * sde.T, dtype=torch.float64)
        x = x0 * sde.bcast(sde.marginal_std(t), x0) + sde.bcast(sde.alpha(t), x0) * 0.5 * torch.tanh(x0)
        sc = model(x.to(torch.float32), t.to(torch.float32)).to(torch.float64)
        out.extend((sc.reshape(4, -1) @ proj * sde.bcast(sde.marginal_std(t), sc.reshape(4, -1))).flatten().tolist())
    return out


def same_signature(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two :func:`model_signature` lists agree to a relative 1e-3."""
    if len(a) != len(b):
        return False
    ta, tb = torch.tensor(list(a), dtype=torch.float64), torch.tensor(list(b), dtype=torch.float64)
    return bool(((ta - tb).norm() <= _SIG_RTOL * max(float(tb.norm()), 1e-12)).item())


# --- content digests (what a model computes with) ----------------------------------------------------
def _walk_content(obj: Any, h: Any, seen: set[int], depth: int = 0) -> int:
    """Feed into ``h`` what ``obj`` computes with: networks' state dicts, tensors, SDE configs, numbers and
    strings, reached through wrappers, closures, bound methods, partials and instance attributes; the
    qualified names of the functions met record the conversion. Returns how many tensors (weights) it
    found."""
    from .sde import SDE

    if depth > 6 or id(obj) in seen:
        return 0
    seen.add(id(obj))
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(repr(obj).encode())
        return 0
    if isinstance(obj, torch.nn.Module):
        h.update(type(obj).__qualname__.encode())
        n = 0
        for k, v in obj.state_dict().items():
            h.update(k.encode())
            n += _walk_content(v, h, seen, depth + 1)
        return n
    if isinstance(obj, Tensor):
        from .io.checkpoint import update_digest

        update_digest(h, obj)
        return 1
    if isinstance(obj, SDE):
        h.update(json.dumps(obj.config(), sort_keys=True, default=repr).encode())
        return 0
    if isinstance(obj, (list, tuple)):
        return sum(_walk_content(v, h, seen, depth + 1) for v in obj[:10_000])
    if isinstance(obj, dict):
        return sum(_walk_content(obj[k], h, seen, depth + 1) for k in sorted(obj, key=repr)[:10_000])
    if isinstance(obj, (type, types.ModuleType, torch.Generator, torch.device, torch.dtype)):
        h.update(repr(obj).encode())
        return 0
    n = 0
    if isinstance(obj, functools.partial):
        n += _walk_content((obj.func, obj.args, obj.keywords), h, seen, depth + 1)
    elif isinstance(obj, types.MethodType):
        n += _walk_content((obj.__func__, obj.__self__), h, seen, depth + 1)
    elif isinstance(obj, types.FunctionType):
        h.update(f"{obj.__module__}.{obj.__qualname__}".encode())
        cells = []
        for c in obj.__closure__ or ():
            try:
                cells.append(c.cell_contents)
            except ValueError:  # an empty cell
                cells.append(None)
        n += _walk_content((cells, obj.__defaults__, obj.__kwdefaults__), h, seen, depth + 1)
    else:
        h.update(type(obj).__qualname__.encode())
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            n += _walk_content(attrs, h, seen, depth + 1)
    return n


def content_digest(model: Any) -> tuple[str, bool]:
    """``(SHA-256 hex digest, has_weights)`` of what ``model`` computes with (see :func:`model_fingerprint`)."""
    h = hashlib.sha256()
    n = _walk_content(model, h, set())
    return h.hexdigest(), n > 0
