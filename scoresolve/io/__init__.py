"""Loading and saving score models: scoresolve's safetensors format, torch files (``weights_only``
only) and the Hugging Face Hub (offline-capable). No network code is imported here; the Hub client
is imported when a Hub id is actually loaded.

    model = scoresolve.io.load("digits")            # the model bundled with the package
    model = scoresolve.io.load("run/model.safetensors")
    model = scoresolve.io.load("org/name")          # Hub id, through huggingface_hub's cache
    scoresolve.io.save(model, "out/model.safetensors")
"""

from __future__ import annotations

from ..models import _PERSISTENCE
from .checkpoint import (
    BUNDLED,
    CheckpointError,
    architectures,
    atomic_write,
    load_file,
    read_config,
    register_architecture,
    save,
    sde_from_config,
    torch_load_safe,
)
from .hub import push_to_hub, recover, save_pretrained  # the folder is replaced as a whole (see scoresolve.io.hub)
from .loading import load

__all__ = [
    "load",
    "save",
    "save_pretrained",
    "push_to_hub",
    "load_file",
    "read_config",
    "register_architecture",
    "architectures",
    "sde_from_config",
    "atomic_write",
    "torch_load_safe",
    "CheckpointError",
    "BUNDLED",
]

# ScoreModel.from_pretrained / save_pretrained / push_to_hub are these functions (scoresolve.models sits below io);
# the first import registers them (a second import of this package, in a fresh module table, changes nothing)
_FUNCTIONS = {"load": load, "recover": recover, "save_pretrained": save_pretrained, "push_to_hub": push_to_hub}
for _name, _fn in _FUNCTIONS.items():
    _PERSISTENCE.setdefault(_name, _fn)
