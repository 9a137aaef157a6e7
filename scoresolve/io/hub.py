"""Hugging Face Hub access: download through huggingface_hub's cache, offline-capable; upload.

``huggingface_hub`` is imported inside the functions only, so importing :mod:`scoresolve.io` opens
no network code. The environment is read at call time (not at import time, as huggingface_hub does):

- ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``): use the cache only, never the network;
- ``HF_HUB_CACHE`` (else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``): the cache folder,
  laid out as ``models--org--name/{refs/<revision>, snapshots/<commit>/<files>}``.

:func:`save_pretrained` writes huggingface_hub's ``ModelHubMixin`` layout (``config.json``,
``model.safetensors``, a ``README.md`` model card) and replaces the folder as a whole: the new folder is
written beside it under a temporary name, then swapped in by renames. A process killed at any moment leaves
the old folder or the new one complete; the next :func:`save_pretrained` or :func:`recover` (called by
``ScoreModel.from_pretrained``) puts the complete one back under its name and removes the leftovers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .._util import make_folder
from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from .checkpoint import save_pretrained as _write_folder

__all__ = ["download", "push_to_hub", "save_pretrained", "recover", "is_offline", "cache_dir_from_env"]

MODEL_CARD_NAME = "README.md"
# sibling names while a folder is replaced: .NAME.<stage>-<pid>-<random>
_STAGES = ("tmp", "new", "old")

_TRUE = {"1", "true", "yes", "on"}
_PATTERNS = [WEIGHTS_NAME, CONFIG_NAME, "*.safetensors", "*.json"]


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for offline mode (read now, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def cache_dir_from_env() -> str | None:
    """The Hub cache folder the environment names (``HF_HUB_CACHE``, else ``HF_HOME/hub``), or ``None``."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
) -> Path:
    """Fetch (or find in the cache) the snapshot of a model repo holding ``model.safetensors``.

    Args:
        repo_id: ``"org/name"``.
        revision: branch, tag or commit (default ``"main"``).
        local_files_only: use only the cache (default: ``True`` when ``HF_HUB_OFFLINE`` is set).
        cache_dir: the cache folder (default: from the environment, see the module docstring).
        token: passed to huggingface_hub for private repos.

    Returns:
        The local snapshot directory.

    Raises:
        CheckpointError: offline and not cached (the message says how to fetch it), or the
            download failed.
    """
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as e:  # pragma: no cover - a core dependency
        raise ImportError("loading from the Hub needs huggingface_hub: pip install huggingface_hub") from e
    offline = is_offline() if local_files_only is None else bool(local_files_only)
    cache = os.fspath(cache_dir) if cache_dir is not None else cache_dir_from_env()
    try:
        local = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache,
            local_files_only=offline,
            allow_patterns=_PATTERNS,
            token=token,
        )
    except LocalEntryNotFoundError as e:
        where = cache or "the default Hugging Face cache (~/.cache/huggingface/hub)"
        if offline:
            raise CheckpointError(
                f"{repo_id!r} (revision {revision or 'main'}) is not in {where} and offline mode is on "
                "(HF_HUB_OFFLINE=1 or local_files_only=True). Fetch it once with network access: "
                f"`hf download {repo_id}` (or `huggingface-cli download {repo_id}`), or call "
                f"scoresolve.io.load({repo_id!r}) with HF_HUB_OFFLINE unset."
            ) from e
        raise CheckpointError(f"could not download {repo_id!r} and it is not cached in {where}: {e}") from e
    except Exception as e:
        raise CheckpointError(f"could not fetch {repo_id!r} from the Hugging Face Hub: {type(e).__name__}: {e}") from e
    path = Path(local)
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(f"{repo_id!r}: the snapshot {path} holds no .safetensors weights ({WEIGHTS_NAME})")
    return path


def _siblings(dest: Path, stage: str) -> list[Path]:
    parent = dest.parent if str(dest.parent) else Path(".")
    return sorted(parent.glob(f".{dest.name}.{stage}-*"))


def _alive(path: Path) -> bool:
    """Whether the process that made this temporary (its pid is in the name) still runs."""
    try:
        pid = int(path.name.rsplit(".", 1)[-1].split("-")[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def recover(directory: str | os.PathLike[str]) -> None:
    """Finish or undo a :func:`save_pretrained` of ``directory`` that was killed: if the folder is missing,
    the complete new folder (else the old one) is renamed back; then the temporaries of dead processes go."""
    dest = Path(directory)
    if not dest.exists():
        for stage in ("new", "old"):  # "new" is complete (renamed from "tmp" only when written)
            done = [p for p in _siblings(dest, stage) if not _alive(p)]
            if done:
                os.replace(done[-1], dest)
                break
    for stage in _STAGES:
        for p in _siblings(dest, stage):
            if not _alive(p):
                shutil.rmtree(p, ignore_errors=True)


_LIBC: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where unsupported."""
    global _LIBC
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name, use_errno=True) if name else False
        except OSError:
            _LIBC = False
    fn = getattr(_LIBC, "renameat2", None) if _LIBC else None
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def model_card(cfg: dict[str, Any]) -> str:
    """A short model card (``README.md``) with the Hub metadata header and how to load the model."""
    arch, sde = cfg.get("arch", "?"), cfg.get("sde", {})
    sde_name = sde.get("type", sde) if isinstance(sde, dict) else sde
    return (
        "---\nlibrary_name: scoresolve\ntags:\n- scoresolve\n- diffusion\n- score-based\n---\n\n"
        f"# scoresolve score model\n\nArchitecture `{arch}`, SDE `{sde_name}`, "
        f"parameterization `{cfg.get('parameterization', '?')}`, sample shape `{cfg.get('sample_shape')}`.\n\n"
        "```python\nimport scoresolve as ss\n\nmodel = ss.ScoreModel.from_pretrained(\"<this repo or folder>\")\n"
        "x = ss.sample(model, solver=\"dpmpp_2m\", steps=20, batch_size=16)\n```\n"
    )


def save_pretrained(model: Any, directory: str | os.PathLike[str], **save_kwargs: Any) -> Path:
    """Write ``model`` as ``directory/{config.json, model.safetensors, README.md}`` (huggingface_hub's
    ``ModelHubMixin`` layout), replacing an existing folder as a whole (module docstring). Keyword arguments
    as for :func:`scoresolve.io.save`. Returns the folder.

    Raises:
        CheckpointError: the parent folder cannot be written, or ``directory`` is a file.
    """
    dest = Path(directory)
    if dest.exists() and not dest.is_dir():
        raise CheckpointError(f"cannot save to {dest}: it is a file, not a folder")
    parent = make_folder(dest.parent, error=CheckpointError)
    recover(dest)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp, new, old = (parent / f".{dest.name}.{stage}-{tag}" for stage in _STAGES)
    try:
        _write_folder(model, tmp, **save_kwargs)
        cfg = json.loads((tmp / CONFIG_NAME).read_text())
        (tmp / MODEL_CARD_NAME).write_text(model_card(cfg), encoding="utf-8")
        for f in tmp.iterdir():  # on disk before the rename makes them visible under the folder's name
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, new)  # complete from here on: recover() prefers it
        if not dest.exists():
            os.replace(new, dest)
        elif _exchange(new, dest):
            shutil.rmtree(new, ignore_errors=True)  # now the old folder
        else:  # two renames; a kill between them is repaired by recover()
            os.replace(dest, old)
            os.replace(new, dest)
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise CheckpointError(f"saving {dest} failed ({e}); the previous folder, if any, is unchanged") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload scoresolve model",
    **save_kwargs: Any,
) -> str:
    """Write the model with :func:`save_pretrained` to a temporary folder and upload it
    to ``repo_id`` (created if missing). Needs network access and a token. Returns the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        folder = save_pretrained(model, Path(d) / "model", **save_kwargs)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    return str(url)
