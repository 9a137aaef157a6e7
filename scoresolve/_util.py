"""Small helpers every layer uses: argument checks, closest-match errors, atomic file writes, JSON
conversion and model fingerprints. Imports nothing from the rest of the package except the SDE type."""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_int",
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


def check_float(value: Any, name: str, *, positive: bool | None = True) -> float:
    """Validate a finite number ``> 0`` (``positive=True``), ``>= 0`` (``False``) or of either sign (``None``),
    naming it in the error (TypeError for a non-number)."""
    bound = {True: " > 0", False: " >= 0", None: ""}[positive]
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a finite number{bound}, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a finite number{bound}, got {value!r}") from None
    if not math.isfinite(v) or (positive is True and v <= 0) or (positive is False and v < 0):
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
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


def make_folder(folder: str | os.PathLike[str], *, error: type[Exception] = OSError) -> Path:
    """Create ``folder`` and its parents if missing and return it (``""`` is the current folder); a failure raises
    ``error`` naming the folder and the operating system's reason."""
    d = Path(folder) if str(folder) else Path(".")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"cannot create the folder {d}: {e.strerror or e}") from e
    return d


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
        make_folder(folder, error=error)
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
