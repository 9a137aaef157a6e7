r"""Load the official score_sde checkpoints (Song et al. 2021, arXiv:2011.13456) without the original code.

A released ``checkpoint_<n>.pth`` holds ``model`` (a ``DataParallel`` ``state_dict``, keys ``module.…``),
``ema`` (``decay``, ``num_updates``, ``shadow_params``: the EMA of the trainable parameters as a positional list,
the weights the paper samples with), ``optimizer`` and ``step``. It is read with
``torch.load(weights_only=True)`` (nothing unpickled); the architecture is not in the file, so pass a ``preset``
or an :class:`~scoresolve.adapters.ncsnpp.NCSNppConfig`; any missing, unexpected or mis-shaped tensor is named
in a :class:`CheckpointMismatchError`. Time conditioning as the released continuous models: VE networks receive
:math:`\sigma(t)` and return the score; VP / sub-VP networks receive :math:`(N-1)\,t` and return
:math:`\varepsilon`. Details: docs/adapters.md ("Official score_sde checkpoints")."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..models import ScoreModel
from ..sde import SDE, VESDE, VPSDE, SubVPSDE
from .ddpmpp import ddpmpp_config
from .ncsnpp import NCSNpp, NCSNppConfig

__all__ = [
    "PRESETS",
    "CheckpointMismatchError",
    "load_score_sde_checkpoint",
    "from_score_sde",
    "make_score_sde_checkpoint",
]


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the architecture; the message names them."""


def _ve(**kw: Any) -> NCSNppConfig:
    return NCSNppConfig(**kw)


#: name -> (architecture, SDE) of the released continuous-time CIFAR-10 configurations covered by NCSNpp.
PRESETS: dict[str, tuple[NCSNppConfig, SDE]] = {
    "ve/cifar10_ncsnpp_continuous": (_ve(), VESDE(0.01, 50.0, 1000)),
    "ve/cifar10_ncsnpp_deep_continuous": (_ve(num_res_blocks=8), VESDE(0.01, 50.0, 1000)),
    "vp/cifar10_ddpmpp_continuous": (ddpmpp_config(), VPSDE(0.1, 20.0, 1000)),
    "vp/cifar10_ddpmpp_deep_continuous": (ddpmpp_config(num_res_blocks=8), VPSDE(0.1, 20.0, 1000)),
    "subvp/cifar10_ddpmpp_continuous": (ddpmpp_config(), SubVPSDE(0.1, 20.0, 1000)),
    "subvp/cifar10_ddpmpp_deep_continuous": (ddpmpp_config(num_res_blocks=8), SubVPSDE(0.1, 20.0, 1000)),
}


def _resolve_config(preset: str | None, config: NCSNppConfig | None) -> tuple[NCSNppConfig, SDE | None]:
    if preset is not None and config is not None:
        raise ValueError("pass either preset= or config=, not both")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        cfg, sde = PRESETS[preset]
        return cfg, sde
    if config is None:
        raise ValueError(
            f"the checkpoint does not record its architecture: pass preset= (one of {list(PRESETS)}) "
            "or config=NCSNppConfig(...)"
        )
    return config, None


def _read(checkpoint: str | os.PathLike[str] | Mapping[str, Any], map_location: Any) -> Mapping[str, Any]:
    if isinstance(checkpoint, Mapping):
        return checkpoint
    # weights_only: tensors and plain containers only; never fall back to unpickling arbitrary objects
    ckpt = torch.load(os.fspath(checkpoint), map_location=map_location, weights_only=True)
    if not isinstance(ckpt, Mapping):
        raise CheckpointMismatchError(f"{checkpoint}: expected a dict with 'model'/'ema', got {type(ckpt).__name__}")
    return ckpt


def _strip(state: Mapping[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def _check_state(model: nn.Module, state: Mapping[str, Tensor], strict: bool = True) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if not strict and (missing or unexpected):
        warnings.warn(
            f"strict=False: ignoring {len(missing)} missing ({', '.join(missing[:5])}) and {len(unexpected)} "
            f"unexpected ({', '.join(unexpected[:5])}) tensors",
            UserWarning,
            stacklevel=3,
        )
        missing, unexpected = [], []
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" ... (+{len(items) - 10} more)" if len(items) > 10 else ""
                parts.append(f"{title} ({len(items)}): " + ", ".join(items[:10]) + more)
        raise CheckpointMismatchError("checkpoint does not match the architecture; " + "; ".join(parts))


def _load_ema(model: nn.Module, ema: Mapping[str, Any]) -> None:
    shadow = ema.get("shadow_params")
    if not isinstance(shadow, (list, tuple)):
        raise CheckpointMismatchError("ema['shadow_params'] must be a list of tensors")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if len(shadow) != len(named):
        raise CheckpointMismatchError(
            f"ema has {len(shadow)} shadow parameters but the model has {len(named)} trainable parameters"
        )
    bad = [
        f"#{i} {n}: ema {tuple(s.shape)} vs model {tuple(p.shape)}"
        for i, ((n, p), s) in enumerate(zip(named, shadow, strict=True))
        if tuple(s.shape) != tuple(p.shape)
    ]
    if bad:
        raise CheckpointMismatchError("ema shadow parameters do not match: " + ", ".join(bad[:10]))
    with torch.no_grad():
        for (_, p), s in zip(named, shadow, strict=True):
            p.copy_(s.to(dtype=p.dtype, device=p.device))


def load_score_sde_checkpoint(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    *,
    preset: str | None = None,
    config: NCSNppConfig | None = None,
    model: nn.Module | None = None,
    use_ema: bool = True,
    strict: bool = True,
    map_location: Any = "cpu",
) -> nn.Module:
    """Build the network and load a score_sde checkpoint into it (EMA weights by default).

    Args:
        checkpoint: a ``checkpoint_*.pth`` path (read with ``weights_only=True``) or the loaded dict; a bare
            ``state_dict`` is accepted too.
        preset: a key of :data:`PRESETS`, e.g. ``"ve/cifar10_ncsnpp_continuous"``.
        config: or the architecture itself.
        model: or an already built module to load into.
        use_ema: load the EMA ``shadow_params`` (what the paper samples with) over the raw weights.
        strict: ``False`` warns about missing/unexpected tensors instead of raising (mis-shaped tensors always
            raise); the released restore code loads with ``strict=False``.
        map_location: passed to ``torch.load``.

    Returns:
        The network in ``eval()`` mode.

    Raises:
        CheckpointMismatchError: naming every missing / unexpected / mis-shaped tensor.
    """
    ckpt = _read(checkpoint, map_location)
    if model is None:
        cfg, _ = _resolve_config(preset, config)
        model = NCSNpp(cfg)
    raw = ckpt.get("model", ckpt) if isinstance(ckpt.get("model"), Mapping) else ckpt
    state = _strip(raw)
    _check_state(model, state, strict)
    model.load_state_dict(state, strict=strict)
    if use_ema:
        if "ema" not in ckpt:
            raise CheckpointMismatchError("use_ema=True but the checkpoint has no 'ema' entry (pass use_ema=False)")
        _load_ema(model, ckpt["ema"])
    return model.eval()


def from_score_sde(
    checkpoint_or_model: str | os.PathLike[str] | Mapping[str, Any] | nn.Module,
    *,
    preset: str | None = None,
    config: NCSNppConfig | None = None,
    sde: SDE | None = None,
    use_ema: bool = True,
) -> ScoreModel:
    r"""A score_sde network (or checkpoint) as a :class:`~scoresolve.ScoreModel`, time-conditioned as the
    released code does for continuous models: VE -> ``net(x, sigma(t))`` is the score; VP / sub-VP ->
    ``net(x, (N-1) t)`` is :math:`\varepsilon`.

    ``sde`` defaults to the preset's; it is required with ``config=`` or a module.
    """
    cfg_sde: SDE | None = None
    if isinstance(checkpoint_or_model, nn.Module):
        net = checkpoint_or_model.eval()
        if preset is not None:
            cfg_sde = _resolve_config(preset, None)[1]
    else:
        net = load_score_sde_checkpoint(checkpoint_or_model, preset=preset, config=config, use_ema=use_ema)
        cfg_sde = _resolve_config(preset, config)[1]
    sde = sde or cfg_sde
    if sde is None:
        raise ValueError("from_score_sde: pass sde= (e.g. ss.VESDE(0.01, 50.0) for NCSN++ CIFAR-10)")
    cfg: NCSNppConfig | None = getattr(net, "config", None)
    centered = bool(cfg.centered) if cfg is not None else False
    shape = (cfg.num_channels, cfg.image_size, cfg.image_size) if cfg is not None else None
    rng = (-1.0, 1.0) if centered else (0.0, 1.0)

    def fn(x: Tensor, cond: Tensor) -> Tensor:
        return net(x, cond)

    if isinstance(sde, VESDE):
        return ScoreModel(fn, sde, shape, "score", rng, time_fn=sde.marginal_std, architecture=cfg)
    scale = float(sde.N - 1)
    return ScoreModel(fn, sde, shape, "eps", rng, time_fn=lambda t: scale * t, architecture=cfg)


def make_score_sde_checkpoint(
    model: nn.Module,
    ema_params: list[Tensor] | None = None,
    step: int = 0,
    optimizer: Any = None,
    decay: float = 0.999,
) -> dict[str, Any]:
    """Build a dict with the released checkpoint's structure (``module.`` keys, positional EMA list,
    optimizer state, step), e.g. to save one of our own networks as the original code would."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    shadow = [p.detach().clone() for p in trainable] if ema_params is None else [t.detach().clone() for t in ema_params]
    opt = optimizer if optimizer is not None else torch.optim.Adam(trainable, lr=2e-4)
    return {
        "optimizer": opt.state_dict(),
        "model": {"module." + k: v.detach().clone() for k, v in model.state_dict().items()},
        "ema": {"decay": decay, "num_updates": step, "shadow_params": shadow},
        "step": step,
    }
