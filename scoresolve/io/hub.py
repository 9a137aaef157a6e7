"""Hugging Face Hub access: download through huggingface_hub's cache, offline-capable; upload.

``huggingface_hub`` is imported inside the functions only, so importing :mod:`scoresolve.io` opens
no network code. The environment is read at call time (not at import time, as huggingface_hub does):

- ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``): use the cache only, never the network;
- ``HF_HUB_CACHE`` (else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``): the cache folder,
  laid out as ``models--org--name/{refs/<revision>, snapshots/<commit>/<files>}``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, save_pretrained

__all__ = ["download", "push_to_hub", "is_offline", "cache_dir_from_env"]

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


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload scoresolve model",
    **save_kwargs: Any,
) -> str:
    """Write the model with :func:`~scoresolve.io.save_pretrained` to a temporary folder and upload it
    to ``repo_id`` (created if missing). Needs network access and a token. Returns the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(model, d, **save_kwargs)
        api.upload_folder(repo_id=repo_id, folder_path=d, commit_message=commit_message)
    return str(url)
