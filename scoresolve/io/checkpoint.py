"""Safe checkpoints: safetensors weights with a JSON config, atomic writes, strict loading (docs/loading.md).

One ``.safetensors`` file whose metadata key ``"scoresolve"`` holds a JSON config (``format``,
``format_version``, ``architecture`` and ``arch_kwargs`` to rebuild the network, ``sde`` = ``SDE.config()``,
``parameterization``, ``data_range``, ``sample_shape``, ``weights``, ``extra``, optional ``data_moments``); a
:func:`save_pretrained` folder holds ``model.safetensors`` and the same config as ``config.json`` (the Hub's
layout). Weights are plain tensors; ``ema.`` / ``model.`` prefixed sets are accepted, EMA unless
``use_ema=False``. Torch files (``.pt``/``.pth``/``.ckpt``/``.bin``) are read with
``torch.load(weights_only=True)`` only: a pickle that needs arbitrary globals is a :class:`CheckpointError`,
never unsafe unpickling. Writes go to a temporary file beside the destination, are flushed, then renamed over
it (:func:`os.replace`), so a crash, a full disk or an unwritable directory leaves the previous file intact."""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._util import _HOST, make_folder, sweep_temporaries, to_json  # noqa: F401  (_HOST: the temporaries' naming, for tests)
from .._util import atomic_write as _atomic_write
from ..digest import tensor_sha256, update_digest  # noqa: F401  (update_digest: public here too)
from ..models import ScoreModel, _check_data_moments
from ..sde import SDE, VESDE, VPSDE, RectifiedFlow, SubVPSDE

__all__ = [
    "CheckpointError",
    "FORMAT",
    "FORMAT_VERSION",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "BUNDLED",
    "register_architecture",
    "architectures",
    "save",
    "save_pretrained",
    "load_file",
    "read_config",
    "sde_from_config",
    "atomic_write",
    "sweep_temporaries",
    "tensor_sha256",
    "torch_load_safe",
]

FORMAT = "scoresolve"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_META_KEY = "scoresolve"
_DIGEST_KEY = "scoresolve.sha256"  # JSON {tensor name: tensor_sha256} in the safetensors metadata
_MOMENT_KEYS = ("data_moments.mean", "data_moments.cov")
_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
_DATA = Path(__file__).resolve().parent.parent / "data"

#: Models shipped inside the package, loadable by name with :func:`load`.
BUNDLED: dict[str, Path] = {
    "digits": _DATA / "digits_model.safetensors",
    "mnist": _DATA / "mnist_model.safetensors",  # 28x28, scoresolve.train.bundled_mnist
}

# name -> "module:attribute" (imported on first use) or a callable building the network
_ARCHITECTURES: dict[str, str | Callable[..., nn.Module]] = {
    "mlp": "scoresolve.train.nets:MLP",
    "unet": "scoresolve.train.nets:UNet",
}

_SDES: dict[str, type[SDE]] = {"VESDE": VESDE, "VPSDE": VPSDE, "SubVPSDE": SubVPSDE, "RectifiedFlow": RectifiedFlow}


class CheckpointError(ValueError):
    """A checkpoint could not be read, written or matched to its architecture; the message says why."""


# --- architectures --------------------------------------------------------------------------------
def register_architecture(name: str, factory: Callable[..., nn.Module] | str) -> None:
    """Make ``name`` loadable: ``factory(**arch_kwargs)`` (or ``"module:attr"``) builds the network.

    The network saved under this name needs ``arch_name = name`` and a JSON-friendly ``config``
    dict of its constructor arguments (as :class:`scoresolve.train.nets.ScoreNet` has).
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"architecture name must be a non-empty string, got {name!r}")
    _ARCHITECTURES[name] = factory


def architectures() -> list[str]:
    """Registered architecture names."""
    return sorted(_ARCHITECTURES)


def _build_net(arch: str, kwargs: Mapping[str, Any]) -> nn.Module:
    if arch not in _ARCHITECTURES:
        raise CheckpointError(
            f"unknown architecture {arch!r} in the checkpoint config; registered: {', '.join(architectures())}. "
            "Register yours with scoresolve.io.register_architecture(name, factory)."
        )
    factory = _ARCHITECTURES[arch]
    if isinstance(factory, str):
        mod, attr = factory.split(":")
        factory = getattr(importlib.import_module(mod), attr)
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"architecture {arch!r} rejected the config's arch_kwargs {dict(kwargs)}: {e}") from e


def _check_before_allocating(arch: str, kwargs: Mapping[str, Any], state: Mapping[str, Tensor], where: str) -> None:
    """Match the config's network against the stored weights (keys and shapes) before allocating it: the
    network is first built on the ``meta`` device (no memory), so a tampered size (``hidden=1e9``) is
    refused at no cost."""
    if arch not in _ARCHITECTURES:
        _build_net(arch, kwargs)  # raises the unknown-architecture error
    try:
        with torch.device("meta"):
            net = _build_net(arch, kwargs)
    except CheckpointError:
        raise
    except Exception:  # noqa: BLE001 - an architecture that cannot be built on meta: checked after building
        return
    _compare_keys(net.state_dict(), state, where)


def sde_from_config(cfg: Mapping[str, Any]) -> SDE:
    """Rebuild an SDE from :meth:`SDE.config` output (``{"type": "VPSDE", ...}``)."""
    if not isinstance(cfg, Mapping) or "type" not in cfg:
        raise CheckpointError(f"the checkpoint's sde config must be a dict with a 'type', got {cfg!r}")
    kind = cfg["type"]
    known = {**SDE.classes, **_SDES}  # every SDE subclass defined so far, by class name
    if not isinstance(kind, str) or kind not in known:
        raise CheckpointError(f"unknown SDE type {kind!r} in the checkpoint config; known: {', '.join(sorted(known))}")
    kwargs = {k: v for k, v in cfg.items() if k != "type"}
    try:
        return known[kind](**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"bad SDE config {dict(cfg)}: {e}") from e


# --- atomic writes --------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike[str]) -> contextlib.AbstractContextManager[str]:
    """Yield a temporary path next to ``path``; on success flush it and ``os.replace`` it onto ``path``
    (:func:`scoresolve._util.atomic_write`). On any error the temporary file is removed and ``path`` keeps
    its previous content.

    Raises:
        CheckpointError: the directory is missing or not writable, or the write failed.
    """
    return _atomic_write(path, error=CheckpointError)


# --- integrity ------------------------------------------------------------------------------------
def _verify_digests(state: Mapping[str, Tensor], digests: Any, where: str) -> None:
    """Check every tensor against the digests stored beside it; :class:`CheckpointError` names the tensor."""
    if not isinstance(digests, Mapping):
        raise CheckpointError(f"{where}: the stored tensor digests are malformed")
    for k, v in state.items():
        if k not in digests:
            raise CheckpointError(f"{where}: tensor {k!r} has no stored digest (added after saving?); refusing it")
        if tensor_sha256(v) != digests[k]:
            raise CheckpointError(
                f"{where}: tensor {k!r} fails its integrity check (its SHA-256 differs from the one stored when it "
                "was saved): the file is corrupted or was altered"
            )
    missing = sorted(set(digests) - set(state))
    if missing:
        raise CheckpointError(f"{where}: tensors {missing[:8]} listed in the digests are missing from the file")


# --- saving ---------------------------------------------------------------------------------------
def _jsonable(v: Any) -> Any:
    return to_json(v, strict=True, error=CheckpointError)


def make_config(
    net: nn.Module,
    sde: SDE,
    *,
    parameterization: str,
    sample_shape: tuple[int, ...] | list[int] | None,
    data_range: tuple[float, float] | list[float] | None = None,
    weights: str = "model",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON config of a network (``arch_name`` + ``config``) and its SDE/metadata."""
    arch = getattr(net, "arch_name", None)
    kwargs = getattr(net, "config", None)
    if not arch or not isinstance(kwargs, Mapping):
        raise CheckpointError(
            f"cannot save a {type(net).__name__}: the network needs an 'arch_name' and a 'config' dict of its "
            "constructor arguments (use scoresolve.train.nets, or subclass ScoreNet and register_architecture)"
        )
    if not isinstance(sde, SDE):
        raise CheckpointError(f"the model needs its SDE to be saved, got sde={sde!r}")
    cfg = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": arch,
        "arch_kwargs": _jsonable(dict(kwargs)),
        "sde": sde.config(),
        "parameterization": parameterization,
        "data_range": list(data_range) if data_range is not None else None,
        "sample_shape": list(sample_shape) if sample_shape is not None else None,
        "weights": weights,
        "extra": _jsonable(dict(extra or {})),
    }
    json.dumps(cfg)  # fail here, not halfway through a write
    return cfg


def _unpack_model(model: Any, sde: SDE | None, parameterization: str | None, sample_shape: Any, data_range: Any):
    moments = None
    if isinstance(model, ScoreModel):
        moments = model.data_moments
        net = model.fn
        sde = sde or model.sde
        parameterization = parameterization or model.parameterization
        sample_shape = sample_shape or model.sample_shape
        data_range = data_range or model.data_range
        if model.time_fn is not None:
            raise CheckpointError("cannot save a ScoreModel with a time_fn (it is code, not data)")
    else:
        net = model
    if not isinstance(net, nn.Module):
        raise CheckpointError(
            f"save() needs a ScoreModel wrapping a torch module, or a module; got {type(net).__name__}"
        )
    sample_shape = sample_shape or getattr(net, "sample_shape", None)
    return net, sde, parameterization or "score", sample_shape, data_range, moments


def _state_for_saving(net: nn.Module, dtype: torch.dtype | None) -> dict[str, Tensor]:
    """The network's state on the CPU; ``dtype`` casts its floating-point parameters, not its buffers (a time
    embedding's fixed frequencies, rounded to float16, move its phases by up to 0.1 rad)."""
    params = {k for k, _ in net.named_parameters()}
    out = {}
    for k, v in net.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point() and k in params:
            v = v.to(dtype)
        out[k] = v.contiguous().clone()
    return out


def save(
    model: ScoreModel | nn.Module,
    path: str | os.PathLike[str],
    *,
    sde: SDE | None = None,
    parameterization: str | None = None,
    sample_shape: tuple[int, ...] | None = None,
    data_range: tuple[float, float] | None = None,
    dtype: torch.dtype | None = None,
    weights: str = "model",
    extra: Mapping[str, Any] | None = None,
    data_moments: tuple[Tensor | float, Tensor | float] | None = None,
) -> Path:
    """Save a model in scoresolve's format, atomically.

    ``path`` ending in ``.safetensors`` writes one file; any other path is treated as a directory and
    written by :func:`save_pretrained` (``model.safetensors`` + ``config.json``).

    Args:
        model: a :class:`~scoresolve.ScoreModel` whose ``fn`` is a network with ``arch_name`` and
            ``config`` (e.g. :class:`scoresolve.train.nets.UNet`), or such a network with ``sde=``.
        sde, parameterization, sample_shape, data_range: override or supply the metadata.
        dtype: store floating-point parameters in this dtype (e.g. ``torch.float16`` halves the file;
            they are cast back to the network's dtype on load). Buffers keep their dtype.
        weights: label recorded in the config (``"ema"`` when these are EMA weights).
        extra: any JSON-friendly metadata (training steps, data set, ...).
        data_moments: the data's ``(mean, cov)`` (see :class:`~scoresolve.ScoreModel`); default: the
            model's own ``data_moments``. Stored as float64 tensors beside the weights.

    Returns:
        The written path.
    """
    p = Path(path)
    if p.suffix != ".safetensors":
        return save_pretrained(
            model, p, sde=sde, parameterization=parameterization, sample_shape=sample_shape,
            data_range=data_range, dtype=dtype, weights=weights, extra=extra, data_moments=data_moments,
        )
    from safetensors.torch import save_file

    net, sde_, par, shape, rng, moments = _unpack_model(model, sde, parameterization, sample_shape, data_range)
    if data_moments is not None:
        moments = _check_data_moments(data_moments, tuple(shape) if shape is not None else None)[0]
    cfg = make_config(net, sde_, parameterization=par, sample_shape=shape, data_range=rng, weights=weights,
                      extra=extra)
    tensors = _state_for_saving(net, dtype)
    if moments is not None:
        # weights under "model." (readers without moment support then ignore the two moment tensors)
        tensors = {f"model.{k}": v for k, v in tensors.items()}
        for k, v in zip(_MOMENT_KEYS, moments, strict=True):
            tensors[k] = v.detach().cpu().to(torch.float64).contiguous().clone()
        cfg["data_moments"] = list(_MOMENT_KEYS)
    digests = {k: tensor_sha256(v) for k, v in tensors.items()}
    with atomic_write(p) as tmp:
        save_file(tensors, tmp, metadata={_META_KEY: json.dumps(cfg), _DIGEST_KEY: json.dumps(digests)})
    return p


def save_pretrained(
    model: ScoreModel | nn.Module,
    directory: str | os.PathLike[str],
    **kwargs: Any,
) -> Path:
    """Write ``directory/model.safetensors`` and ``directory/config.json`` (created if missing), each
    atomically — the layout to upload to the Hugging Face Hub (see :func:`scoresolve.io.push_to_hub`).
    Keyword arguments as for :func:`save`. Returns the directory."""
    d = make_folder(directory, error=CheckpointError)
    save(model, d / WEIGHTS_NAME, **kwargs)
    cfg = read_config(d / WEIGHTS_NAME)
    with atomic_write(d / CONFIG_NAME) as tmp:
        Path(tmp).write_text(json.dumps(cfg, indent=2) + "\n")
    return d


# --- loading --------------------------------------------------------------------------------------
def torch_load_safe(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors; never unsafe."""
    sweep_temporaries(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refusing to load — the pickle needs objects beyond plain tensors and containers "
            f"(weights_only=True rejected it: {str(e).splitlines()[-1] if str(e) else e}). scoresolve never "
            "falls back to unsafe unpickling. If you trust the file, convert it yourself to a state dict and "
            "save it with scoresolve.io.save."
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or corrupted?): {e}") from e


def _parse_config(raw: str | Mapping[str, Any], where: str) -> dict[str, Any]:
    try:
        cfg = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where}: the config is not valid JSON ({e})") from e
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a scoresolve config (expected format={FORMAT!r})")
    version = cfg.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise CheckpointError(f"{where}: format_version must be a non-negative integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: format_version {version} is newer than this scoresolve reads ({FORMAT_VERSION}); "
            "upgrade scoresolve"
        )
    for key in ("architecture", "arch_kwargs", "sde"):
        if key not in cfg:
            raise CheckpointError(f"{where}: the config lacks {key!r}")
    if not isinstance(cfg["architecture"], str) or not isinstance(cfg["arch_kwargs"], Mapping):
        raise CheckpointError(f"{where}: 'architecture' must be a string and 'arch_kwargs' a dict")
    rng = cfg.get("data_range")
    if rng is not None and not (
        isinstance(rng, (list, tuple)) and len(rng) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in rng)
        and rng[0] < rng[1]
    ):
        raise CheckpointError(f"{where}: data_range must be [low, high] with finite low < high, got {rng!r}")
    shape = cfg.get("sample_shape")
    if shape is not None and not (
        isinstance(shape, (list, tuple))
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)
    ):
        raise CheckpointError(f"{where}: sample_shape must be a list of positive integers, got {shape!r}")
    if not isinstance(cfg.get("parameterization", "score"), str):
        raise CheckpointError(f"{where}: parameterization must be a string, got {cfg['parameterization']!r}")
    sde_from_config(cfg["sde"])  # validates the SDE's parameters (e.g. N=0) before anything is allocated
    return cfg


def _metadata(p: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CheckpointError(f"{p}: not a readable safetensors file (truncated or corrupted?): {e}") from e


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The scoresolve config of a ``.safetensors`` file (its metadata, else a ``config.json`` beside it)."""
    p = Path(path)
    meta = _metadata(p)
    if _META_KEY in meta:
        return _parse_config(meta[_META_KEY], str(p))
    side = p.with_name(CONFIG_NAME)
    if side.is_file():
        return _parse_config(side.read_text(), str(side))
    raise CheckpointError(f"{p}: no scoresolve config in its metadata and no {CONFIG_NAME} beside it")


def _select_weights(state: Mapping[str, Tensor], use_ema: bool, where: str) -> tuple[dict[str, Tensor], str]:
    ema = {k[4:]: v for k, v in state.items() if k.startswith("ema.")}
    plain = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
    if ema and (use_ema or not plain):
        return ema, "ema"
    if plain:
        return plain, "model"
    return dict(state), "model"


def _compare_keys(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], where: str) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong:

        def few(xs: list[str]) -> str:
            return ", ".join(xs[:8]) + (f", ... ({len(xs)} in all)" if len(xs) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if wrong:
            parts.append(f"wrong shapes: {few(wrong)}")
        raise CheckpointError(f"{where}: the weights do not match the configured architecture — " + "; ".join(parts))


def _load_into(net: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    expected = net.state_dict()
    _compare_keys(expected, state, where)
    with torch.no_grad():
        for k, v in expected.items():
            if not torch.isfinite(state[k]).all() and v.is_floating_point():
                raise CheckpointError(f"{where}: weight {k} contains NaN or inf")
            v.copy_(state[k].to(v.dtype))


def _model_from(cfg: dict[str, Any], state: Mapping[str, Tensor], where: str, use_ema: bool,
                device: Any, dtype: torch.dtype | None) -> ScoreModel:
    state = dict(state)
    stored = [state.pop(k, None) for k in _MOMENT_KEYS]
    moments = None
    if cfg.get("data_moments"):
        if any(v is None for v in stored):
            raise CheckpointError(
                f"{where}: the config lists data_moments but the file lacks the tensors {', '.join(_MOMENT_KEYS)}"
            )
        moments = (stored[0], stored[1])
    sde = sde_from_config(cfg["sde"])
    weights, which = _select_weights(state, use_ema, where)
    _check_before_allocating(cfg["architecture"], cfg["arch_kwargs"], weights, where)
    net = _build_net(cfg["architecture"], cfg["arch_kwargs"])
    _load_into(net, weights, where)
    net.eval()
    if dtype is not None or device is not None:
        net.to(device=device, dtype=dtype)
    shape = cfg.get("sample_shape") or getattr(net, "sample_shape", None)
    rng = cfg.get("data_range")
    try:
        return ScoreModel(
            net,
            sde,
            sample_shape=tuple(shape) if shape is not None else None,
            parameterization=cfg.get("parameterization", "score"),
            data_range=tuple(rng) if rng is not None else None,
            data_moments=moments,
            config=cfg,
            weights=which if which == "ema" else cfg.get("weights", "model"),
            source=where,
        )
    except (TypeError, ValueError) as e:
        if moments is None:
            raise
        raise CheckpointError(f"{where}: invalid stored data_moments: {e}") from e


def load_file(
    path: str | os.PathLike[str],
    *,
    use_ema: bool = True,
    config: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> ScoreModel:
    """Load a local file or ``save_pretrained`` directory (see :func:`scoresolve.io.load`)."""
    p = Path(path)
    if p.is_dir():
        cand = [p / WEIGHTS_NAME] + sorted(p.glob("*.safetensors")) + sorted(
            q for s in _TORCH_SUFFIXES for q in p.glob(f"*{s}")
        )
        found = [c for c in cand if c.is_file()]
        if not found:
            raise CheckpointError(f"{p}: directory holds no {WEIGHTS_NAME} (nor another .safetensors / torch file)")
        return load_file(found[0], use_ema=use_ema, config=config, device=device, dtype=dtype)
    if not p.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {p}")
    where = str(p)
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file as st_load

        sweep_temporaries(p)
        cfg = _parse_config(config, where) if config is not None else read_config(p)
        try:
            state = st_load(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{p}: not a readable safetensors file (truncated or corrupted?): {e}") from e
        digests = _metadata(p).get(_DIGEST_KEY)
        if digests is not None:
            try:
                digests = json.loads(digests)
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{where}: the stored tensor digests are not valid JSON ({e})") from e
            _verify_digests(state, digests, where)
        return _model_from(cfg, state, where, use_ema, device, dtype)
    if p.suffix in _TORCH_SUFFIXES:
        obj = torch_load_safe(p)
        if not isinstance(obj, Mapping):
            raise CheckpointError(
                f"{p}: expected a dict of tensors (a state dict or a checkpoint), got {type(obj).__name__}"
            )
        raw_cfg = config if config is not None else obj.get("config")
        if raw_cfg is None:
            raise CheckpointError(
                f"{p}: a torch file without a scoresolve config; pass config= (the dict scoresolve.io.save writes)"
            )
        cfg = _parse_config(raw_cfg, where)
        if "model" in obj or "ema" in obj:
            state: dict[str, Tensor] = {}
            for part in ("model", "ema"):
                sd = obj.get(part)
                if isinstance(sd, Mapping):
                    state.update({f"{part}.{k}": v for k, v in sd.items()})
            state.update({k: obj[k] for k in _MOMENT_KEYS if k in obj})
        else:
            state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
        if bad:
            raise CheckpointError(f"{p}: non-tensor entries in the weights: {bad[:8]}")
        return _model_from(cfg, state, where, use_ema, device, dtype)
    raise CheckpointError(
        f"{p}: unsupported file type {p.suffix!r}; expected .safetensors or a torch file ({', '.join(_TORCH_SUFFIXES)})"
    )
