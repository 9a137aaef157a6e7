r"""diffusers interoperability: ``UNet2DModel`` s and pipelines as scoresolve score models, and scoresolve
samplers as a drop-in for a pipeline's ``__call__`` (docs/adapters.md, docs/flow.md).

``diffusers`` is an optional dependency (``pip install diffusers``), imported inside the functions; the
conversions themselves are :mod:`scoresolve.models`'. Conventions read from the scheduler config:

- VE score models (``ScoreSdeVeScheduler``): the UNet gets :math:`\sigma`, returns the score; ``VESDE`` from config.
- Discrete-time models (a scheduler with ``alphas_cumprod``), ε / v / x0: :class:`DiscreteTimeMap` puts timestep
  :math:`i` where the SDE's log-SNR equals :math:`\tfrac12\log(\bar\alpha_i/(1-\bar\alpha_i))` (fractional or
  nearest index in between) on the VP SDE of :func:`vp_sde_for_alphas_cumprod`, which ends at the last trained
  noise level.
- Flow-matching models (``FlowMatch*``): velocity :math:`\varepsilon - x_0` at timestep :math:`1000\tau`,
  ``RectifiedFlow(shift)`` (:func:`rectified_flow_for_scheduler`).
- No clipping unless ``clip_x0=True`` (a warning when the config clips); ``class_labels`` and classifier-free
  guidance :math:`u + w(c - u)` in the network's output space."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ..aliases import resolve
from ..models import ScoreModel
from ..registry import SOLVERS
from ..sampling import SampleResult, sample
from ..sde import SDE, VESDE, VPSDE, RectifiedFlow, resolution_shift

# also ``ScoresolveScheduler`` (module __getattr__ below: its module subclasses diffusers' classes)
__all__ = ["from_diffusers", "sample_pipeline", "DiscreteTimeMap", "vp_sde_for_alphas_cumprod",
           "rectified_flow_for_scheduler", "budget_kwargs"]

TimestepMode = Literal["fractional", "nearest"]
_PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "score": "score", "flow": "velocity"}


def _import_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("this adapter needs diffusers: pip install 'scoresolve[diffusers]' (or diffusers)") from e
    return diffusers


class DiscreteTimeMap:
    r"""The exact correspondence between a discrete schedule ``alphas_cumprod`` and continuous time of ``sde``.

    Node :math:`i` sits at :math:`t_i = \lambda^{-1}(\lambda_i)` with
    :math:`\lambda_i = \tfrac12\log\bar\alpha_i - \tfrac12\log(1-\bar\alpha_i)` (:meth:`SDE.t_from_log_snr`), so
    the SDE's noise level at :math:`t_i` is the scheduler's at index :math:`i`:
    :math:`\alpha(t_i)^2 = \bar\alpha_i` and :math:`\sigma(t_i)^2 = 1 - \bar\alpha_i` for VP.

    Calling the map sends times to timestep indices: :math:`\lambda(t)` is located between the nodes and the
    index interpolated linearly in :math:`\lambda` (``mode="fractional"``) or rounded to the nearest node
    (``"nearest"``); outside :math:`[\lambda_{N-1}, \lambda_0]` it clamps to ``N-1`` or ``0``.

    Args:
        alphas_cumprod: :math:`\bar\alpha_i`, shape ``(N,)``, decreasing in ``i``, in ``(0, 1)``.
        sde: the continuous SDE whose time axis is used.
        mode: ``"fractional"`` or ``"nearest"``.
    """

    def __init__(self, alphas_cumprod: Tensor | Sequence[float], sde: SDE, mode: TimestepMode = "fractional") -> None:
        ac = torch.as_tensor(alphas_cumprod).detach().to(device="cpu", dtype=torch.float64)
        if ac.ndim != 1 or ac.numel() < 2:
            raise ValueError(f"alphas_cumprod must be 1-D with at least 2 entries, got shape {tuple(ac.shape)}")
        if not ((ac > 0) & (ac < 1)).all():
            raise ValueError("alphas_cumprod must lie in (0, 1) (a zero terminal SNR has no finite time)")
        if not (ac[1:] < ac[:-1]).all():
            raise ValueError("alphas_cumprod must be strictly decreasing")
        if mode not in ("fractional", "nearest"):
            raise ValueError(f"timestep_mode must be 'fractional' or 'nearest', got {mode!r}")
        self.alphas_cumprod = ac
        self.sde = sde
        self.mode: TimestepMode = mode
        self.log_snr = 0.5 * (torch.log(ac) - torch.log1p(-ac))  # decreasing in i
        self.times = sde.t_from_log_snr(self.log_snr)

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    def t_of_timestep(self, i: int | Tensor) -> Tensor:
        """Continuous time of the (integer) timestep index ``i``."""
        return self.times[torch.as_tensor(i, dtype=torch.long)]

    def grid(self, timesteps: Tensor | Sequence[int]) -> Tensor:
        """A scoresolve time grid (float64, decreasing) through the given trained timesteps, e.g. a diffusers
        scheduler's ``timesteps`` after ``set_timesteps(n)``: ``ss.sample(model, grid=tm.grid(sched.timesteps))``
        evaluates the network at exactly those timesteps. Times within 1e-9 of ``T`` are set to ``T``."""
        idx = torch.as_tensor(timesteps).detach().cpu().long()
        if idx.ndim != 1 or ((idx < 0) | (idx >= self.num_timesteps)).any():
            raise ValueError(f"timesteps must be a 1-D sequence of indices in [0, {self.num_timesteps - 1}]")
        t = self.times[idx].clone()
        t[(t > self.sde.T) & (t <= self.sde.T + 1e-9)] = self.sde.T
        if (t > self.sde.T).any():
            raise ValueError(
                f"timestep(s) {idx[t > self.sde.T].tolist()} lie beyond the SDE's T={self.sde.T} (noisier than its "
                "prior); use the default SDE of from_diffusers, which ends at the last trained level"
            )
        return t

    def __call__(self, t: Tensor) -> Tensor:
        """Timestep index for continuous times ``t``: float32 (``"fractional"``), or int64 (``"nearest"``, so that
        a network which looks its timestep up in an ``nn.Embedding`` receives indices)."""
        lam = self.sde.log_snr(t.detach().to(torch.float64)).cpu()
        neg = -self.log_snr  # increasing in i
        j = torch.searchsorted(neg, -lam).clamp(1, self.num_timesteps - 1)  # neg[j-1] < -lam <= neg[j]
        lo, hi = neg[j - 1], neg[j]
        frac = ((-lam - lo) / (hi - lo)).clamp(0.0, 1.0)
        idx = (j - 1).to(torch.float64) + frac
        if self.mode == "nearest":
            return torch.round(idx).to(device=t.device, dtype=torch.long)
        return idx.to(device=t.device, dtype=torch.float32)

    def alphas_cumprod_at(self, timesteps: Tensor | Sequence[float]) -> Tensor:
        r""":math:`\bar\alpha` at (possibly fractional) timestep indices: exact at the nodes, log-SNR linear in the
        index between them (the interpolation :meth:`__call__` inverts). float64, on the CPU."""
        idx = torch.as_tensor(timesteps, dtype=torch.float64).detach().cpu().clamp(0, self.num_timesteps - 1)
        lo = idx.floor().long().clamp(max=self.num_timesteps - 2)
        frac = idx - lo
        lam = self.log_snr[lo] * (1 - frac) + self.log_snr[lo + 1] * frac
        return torch.sigmoid(2 * lam)


def vp_sde_for_alphas_cumprod(
    alphas_cumprod: Tensor,
    beta_schedule: str | None = None,
    beta_start: float | None = None,
    beta_end: float | None = None,
) -> VPSDE:
    r"""A continuous VP SDE spanning a discrete schedule: its time axis runs from (about) the first trained noise
    level to exactly the last one, :math:`\alpha(T)^2 = \bar\alpha_{N-1}` at :math:`T = 1`, so every trained
    timestep lies in :math:`(0, T]` and sampling starts at the noise level the model was trained to start from.

    With :math:`B(t) = \beta_{min}t + \tfrac12(\beta_{max}-\beta_{min})t^2 = -\log\alpha(t)^2`, the end
    condition is :math:`B(1) = -\log\bar\alpha_{N-1}`, i.e. :math:`\beta_{max} = 2B(1) - \beta_{min}`.
    :math:`\beta_{min}` is ``N*beta_start`` for linear betas (DDPM's continuous limit, Song et al. 2021, App. B:
    for ``google/ddpm-*`` this gives ``VPSDE(0.1, 20.13)`` where the paper's rounded ``VPSDE(0.1, 20)`` would put
    the last trained level at :math:`t = 1.0067 > T`), otherwise the least-squares fit of :math:`B` to
    :math:`-\log\bar\alpha_i` at :math:`t = (i+1)/N`. The SDE only sets the time axis and the prior; the noise
    level at every node is the scheduler's (:class:`DiscreteTimeMap`).
    """
    ac = torch.as_tensor(alphas_cumprod).to(torch.float64)
    n = ac.numel()
    b1 = float(-torch.log(ac[-1]))
    if beta_schedule == "linear" and beta_start is not None:
        bmin = n * float(beta_start)
    else:
        t = torch.arange(1, n + 1, dtype=torch.float64) / n
        u = t - t**2  # B(t) = bmin (t - t^2) + B(1) t^2
        bmin = float((u * (-torch.log(ac) - b1 * t**2)).sum() / (u**2).sum())
    bmin = min(max(bmin, 0.0), b1 * (1 - 1e-6))
    return VPSDE(beta_min=bmin, beta_max=2 * b1 - bmin, N=n)


# ---------------------------------------------------------------------------------------------------------
# loading


def rectified_flow_for_scheduler(scheduler: Any, image_seq_len: int | None = None) -> RectifiedFlow:
    r"""The :class:`~scoresolve.RectifiedFlow` of a diffusers flow-matching scheduler (object or config dict).

    ``shift`` comes from the config; with ``use_dynamic_shifting`` it is the resolution-dependent shift of
    ``image_seq_len`` latent tokens (``base_image_seq_len``, ``max_image_seq_len``, ``base_shift``,
    ``max_shift`` from the config; ``time_shift_type="linear"`` uses :math:`\mu` itself as the shift). The
    config's grid options (``shift_terminal``, ``use_karras_sigmas``, ...) choose diffusers' sampling grid, not
    the model, and are not carried over: scoresolve's solvers choose their own grid.
    """
    cfg = _scheduler_config(scheduler) or {}
    name = str(cfg.get("_class_name", ""))
    if not name.startswith("FlowMatch"):
        raise ValueError(f"rectified_flow_for_scheduler: expected a FlowMatch* scheduler config, got {name!r}")
    if not cfg.get("use_dynamic_shifting"):
        return RectifiedFlow(shift=float(cfg.get("shift", 1.0)))
    if image_seq_len is None:
        raise ValueError(
            f"{name} has use_dynamic_shifting=True: pass image_seq_len= (latent tokens, e.g. (H/16)*(W/16) for "
            "Flux) or sde=ss.RectifiedFlow(shift=...)"
        )
    shift = resolution_shift(
        image_seq_len,
        base_seq_len=int(cfg.get("base_image_seq_len", 256)),
        max_seq_len=int(cfg.get("max_image_seq_len", 4096)),
        base_shift=float(cfg.get("base_shift", 0.5)),
        max_shift=float(cfg.get("max_shift", 1.15)),
    )
    if cfg.get("time_shift_type", "exponential") == "linear":
        shift = math.log(shift)  # diffusers' linear variant uses mu itself
    return RectifiedFlow(shift=shift)


def _read_json(p: Path) -> dict[str, Any] | None:
    return json.loads(p.read_text()) if p.is_file() else None


def _resolve_path(ref: str | os.PathLike[str], revision: str | None) -> Path:
    path = Path(ref)
    if path.exists():
        return path
    from huggingface_hub import snapshot_download  # honours HF_HUB_OFFLINE and HF_HUB_CACHE

    return Path(snapshot_download(str(ref), revision=revision))


def _load_from_path(path: Path, model_cls: str | None) -> tuple[Any, dict[str, Any] | None]:
    diffusers = _import_diffusers()
    index = _read_json(path / "model_index.json")
    if index is not None:  # a pipeline folder: unet/ + scheduler/
        entry = index.get("unet") or index.get("transformer")
        sub = "unet" if "unet" in index else "transformer"
        if entry is None:
            raise ValueError(f"{path}/model_index.json lists no 'unet' (or 'transformer') component")
        cls_name = model_cls or entry[1]
        net = getattr(diffusers, cls_name).from_pretrained(path, subfolder=sub)
        sched = _read_json(path / "scheduler" / "scheduler_config.json")
        return net, sched
    cfg = _read_json(path / "config.json")
    if cfg is None:
        raise FileNotFoundError(f"{path} holds neither model_index.json (a pipeline) nor config.json (a model)")
    cls_name = model_cls or cfg.get("_class_name", "UNet2DModel")
    net = getattr(diffusers, cls_name).from_pretrained(path)
    return net, _read_json(path / "scheduler_config.json")


def _scheduler_config(scheduler: Any) -> dict[str, Any] | None:
    if scheduler is None:
        return None
    if isinstance(scheduler, dict):
        return dict(scheduler)
    cfg = getattr(scheduler, "config", None)
    if cfg is None:
        raise TypeError(f"scheduler must be a diffusers scheduler or its config dict, got {type(scheduler).__name__}")
    out = dict(cfg)
    out.setdefault("_class_name", type(scheduler).__name__)
    return out


def _alphas_cumprod(cfg: dict[str, Any], scheduler: Any) -> Tensor | None:
    ac = (
        getattr(scheduler, "alphas_cumprod", None)
        if scheduler is not None and not isinstance(scheduler, dict)
        else None
    )
    if ac is not None:
        return torch.as_tensor(ac)
    name = cfg.get("_class_name")
    if name is None or not any(k in cfg for k in ("beta_schedule", "trained_betas", "beta_start")):
        return None
    diffusers = _import_diffusers()
    cls = getattr(diffusers, name, None) or diffusers.DDPMScheduler
    sched = cls.from_config(cfg)
    ac = getattr(sched, "alphas_cumprod", None)
    return None if ac is None else torch.as_tensor(ac)


def _network_dtype_device(net: Any) -> tuple[torch.dtype, torch.device]:
    if isinstance(net, torch.nn.Module):
        for p in net.parameters():
            return p.dtype, p.device
    return torch.float32, torch.device("cpu")


def _sample_shape(net: Any) -> tuple[int, ...] | None:
    cfg = getattr(net, "config", None)
    if cfg is None:
        return None
    c = cfg.get("in_channels") if hasattr(cfg, "get") else getattr(cfg, "in_channels", None)
    size = cfg.get("sample_size") if hasattr(cfg, "get") else getattr(cfg, "sample_size", None)
    if c is None or size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return (int(c), *(int(s) for s in hw))


def from_diffusers(
    unet_or_pipeline_or_path: Any,
    *,
    scheduler: Any = None,
    sde: SDE | None = None,
    prediction_type: str | None = None,
    timestep_mode: TimestepMode = "fractional",
    class_labels: int | Tensor | None = None,
    guidance_scale: float | None = None,
    null_class_label: int | None = None,
    clip_x0: bool | None = None,
    data_range: tuple[float, float] | None = None,
    revision: str | None = None,
    model_class: str | None = None,
    image_seq_len: int | None = None,
) -> ScoreModel:
    r"""A diffusers model as a :class:`~scoresolve.ScoreModel` (SDE, time convention and parameterisation set).

    Args:
        unet_or_pipeline_or_path: a ``UNet2DModel`` (or any module called as ``net(x, timestep,
            class_labels=...)``), a pipeline with ``.unet`` and ``.scheduler``, a local folder (a pipeline with
            ``model_index.json``, or a model with ``config.json`` and optionally ``scheduler_config.json``), or
            a Hub id resolved through ``huggingface_hub.snapshot_download`` (which honours ``HF_HUB_OFFLINE``
            and ``HF_HUB_CACHE``).
        scheduler: the scheduler (object or config dict) that says how the model was trained; taken from the
            pipeline/folder when not given. ``ScoreSdeVeScheduler`` -> VE score model; a scheduler with
            ``alphas_cumprod`` -> discrete VP model.
        sde: override the SDE (the time axis). For VE the network still receives :math:`\sigma(t)` of this
            SDE; for discrete models node ``i`` is mapped onto it by noise level.
        prediction_type: override the scheduler's (``"epsilon"``, ``"v_prediction"``, ``"sample"``,
            ``"score"``, or ``"flow"``: a flow-matching velocity).
        timestep_mode: ``"fractional"`` (default) or ``"nearest"`` for discrete models (see
            :class:`DiscreteTimeMap`).
        class_labels: label(s) for class-conditional UNets: an int or a ``(B,)`` tensor.
        guidance_scale: classifier-free guidance weight :math:`w` (output :math:`u + w(c-u)`); needs
            ``class_labels`` and ``null_class_label``. ``None``: no guidance.
        null_class_label: the label of the unconditional class used for guidance.
        clip_x0: clamp Tweedie's :math:`\hat x_0` to ``data_range`` and rebuild the score from it.
            ``None`` (default) = no clipping, with a warning if the scheduler config clips.
        data_range: the data range (default ``(0, 1)`` for VE score models, ``(-1, 1)`` otherwise).
        revision: Hub revision when loading by id.
        model_class: the diffusers model class name when it cannot be read from the folder.
        image_seq_len: latent tokens, for flow-matching schedulers with ``use_dynamic_shifting``
            (:func:`rectified_flow_for_scheduler`).

    Returns:
        The score model, with ``metadata`` holding ``scheduler_config`` and (discrete models) ``time_map``.
    """
    obj = unet_or_pipeline_or_path
    sched_obj = scheduler
    if isinstance(obj, (str, os.PathLike)):
        net, folder_sched = _load_from_path(_resolve_path(obj, revision), model_class)
        if sched_obj is None:
            sched_obj = folder_sched
    elif hasattr(obj, "unet") and hasattr(obj, "scheduler"):
        net = obj.unet
        if sched_obj is None:
            sched_obj = obj.scheduler
    elif callable(obj):
        net = obj
    else:
        raise TypeError("from_diffusers: expected a UNet, a pipeline, a folder or a Hub id, got " + type(obj).__name__)
    cfg = _scheduler_config(sched_obj) or {}
    if isinstance(net, torch.nn.Module):
        net.eval()
    net_dtype, _ = _network_dtype_device(net)
    is_diffusers_model = hasattr(net, "config") and isinstance(net, torch.nn.Module)
    ts_dtype = torch.float64 if net_dtype == torch.float64 else torch.float32

    # --- what kind of model is it?
    is_ve = cfg.get("_class_name") == "ScoreSdeVeScheduler" or ("sigma_max" in cfg and "snr" in cfg)
    is_flow = str(cfg.get("_class_name", "")).startswith("FlowMatch")
    ptype = prediction_type or ("score" if is_ve else "flow" if is_flow else cfg.get("prediction_type"))
    if ptype is None:
        raise ValueError(
            "from_diffusers: cannot tell what the network predicts; pass scheduler= (the one it was trained "
            "with) or prediction_type= ('epsilon', 'v_prediction', 'sample', 'score') together with sde="
        )
    if ptype not in _PREDICTION_TYPES:
        raise ValueError(
            f"from_diffusers: unknown prediction_type {ptype!r}; expected one of {list(_PREDICTION_TYPES)}"
        )
    param = _PREDICTION_TYPES[ptype]

    time_map: DiscreteTimeMap | None = None
    if is_ve:
        if sde is None:
            sde = VESDE(
                sigma_min=float(cfg.get("sigma_min", 0.01)),
                sigma_max=float(cfg.get("sigma_max", 1348.0)),
                N=int(cfg.get("num_train_timesteps", 2000)),
            )
        time_fn: Callable[[Tensor], Tensor] = sde.marginal_std
        default_range = (0.0, 1.0)
    elif is_flow:
        if sde is None:
            sde = rectified_flow_for_scheduler(cfg, image_seq_len)
        n_train = float(cfg.get("num_train_timesteps", 1000))
        time_fn = lambda tau: tau * n_train  # noqa: E731  (the velocity conversion passes the interpolant time)
        default_range = (-1.0, 1.0)
    else:
        ac = _alphas_cumprod(cfg, sched_obj)
        if ac is None:
            if sde is None:
                raise ValueError(
                    "from_diffusers: no scheduler with alphas_cumprod (or ScoreSdeVe config) was found; pass "
                    "scheduler= or sde= (the network is then called with t itself)"
                )
            time_fn = lambda t: t  # noqa: E731
        else:
            if sde is None:
                sde = vp_sde_for_alphas_cumprod(
                    ac, cfg.get("beta_schedule"), cfg.get("beta_start"), cfg.get("beta_end")
                )
            time_map = DiscreteTimeMap(ac, sde, timestep_mode)
            time_fn = time_map
        default_range = (-1.0, 1.0)
    rng = data_range or default_range

    # --- conditioning
    if guidance_scale is not None and (class_labels is None or null_class_label is None):
        raise ValueError("guidance_scale needs class_labels= and null_class_label= (the unconditional class)")

    def labels_for(b: int, device: torch.device, value: int | Tensor) -> Tensor:
        lab = torch.as_tensor(value, device=device, dtype=torch.long)
        if lab.ndim == 0:
            return lab.expand(b)
        if lab.shape != (b,):
            raise ValueError(f"class_labels has shape {tuple(lab.shape)}; expected a scalar or ({b},)")
        return lab

    def call_net(x: Tensor, ts: Tensor, labels: Tensor | None) -> Tensor:
        kwargs: dict[str, Any] = {} if labels is None else {"class_labels": labels}
        if is_diffusers_model:
            kwargs["return_dict"] = False
        # timesteps in float32 (diffusers' convention, whatever the weights' dtype) unless the net is float64
        ts = ts.to(device=x.device, dtype=ts_dtype if ts.is_floating_point() else ts.dtype)
        out = net(x.to(net_dtype), ts, **kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        if out.shape[1] == 2 * x.shape[1] and out.shape[1] != x.shape[1]:
            out = out[:, : x.shape[1]]  # learned-variance models: the first half is the prediction
        return out

    def fn(x: Tensor, ts: Tensor) -> Tensor:
        b = x.shape[0]
        if class_labels is None:
            return call_net(x, ts, None)
        cond = labels_for(b, x.device, class_labels)
        if guidance_scale is None:
            return call_net(x, ts, cond)
        null = labels_for(b, x.device, int(null_class_label))  # type: ignore[arg-type]
        both = call_net(torch.cat([x, x]), torch.cat([ts, ts]), torch.cat([cond, null]))
        c, u = both[:b], both[b:]
        return u + guidance_scale * (c - u)

    meta: dict[str, Any] = {"scheduler_config": cfg, "time_map": time_map, "network": net}
    base = ScoreModel(fn, sde, _sample_shape(net), parameterization=param, data_range=rng, time_fn=time_fn, **meta)

    if clip_x0 is None and (cfg.get("clip_sample") or cfg.get("thresholding")):
        warnings.warn(
            "the scheduler config clips/thresholds its x0 prediction (clip_sample/thresholding); scoresolve "
            "does not: pass clip_x0=True to clamp Tweedie's x0 to data_range, or clip_x0=False to silence this",
            UserWarning,
            stacklevel=2,
        )
    return _clipped(base, rng) if clip_x0 else base


def _clipped(base: ScoreModel, rng: tuple[float, float]) -> ScoreModel:
    """``base`` with Tweedie's :math:`\\hat x_0` clamped to ``rng`` (diffusers' ``clip_sample``), as an x0 model."""
    lo, hi = rng

    def clipped_x0(x: Tensor, t: Tensor) -> Tensor:
        return base.x0(x, t).clamp(lo, hi)

    return ScoreModel(clipped_x0, base.sde, base.sample_shape, parameterization="x0", data_range=rng, **base.metadata)


# ---------------------------------------------------------------------------------------------------------
# scoresolve samplers for a diffusers user


#: ``from_diffusers`` options that ``sample_pipeline`` accepts (the rest of its keywords go to the solver)
def budget_kwargs(solver: Any, n: int) -> dict[str, int]:
    """The keyword of :func:`scoresolve.sample` for ``n`` steps of a pipeline or scheduler: the evaluation budget
    ``nfe=`` for a solver that takes one (``auto`` and the few-step solvers, by name, alias or instance), else
    ``steps=`` (grid intervals)."""
    if isinstance(solver, str):
        solver = resolve(solver)[0]
        budgeted = solver == "auto" or bool(getattr(SOLVERS.get(solver, argument="solver"), "budgeted", False))
    else:
        budgeted = bool(getattr(solver, "budgeted", False))
    return {"nfe": n} if budgeted else {"steps": n}


_MODEL_OPTIONS = ("scheduler", "sde", "prediction_type", "timestep_mode", "data_range", "revision", "model_class")


def _own_sampler(model: ScoreModel, steps: int | None) -> tuple[str, int | None, dict[str, Any]]:
    """The pipeline's own sampler in scoresolve terms, from its scheduler config: ``(solver, steps, options)``.

    ``DDPMScheduler``: ancestral sampling through its trained timesteps (``set_timesteps(steps)``, default all
    of them), the last step Tweedie's :math:`\\hat x_0` at timestep 0, as its own last step is;
    ``ScoreSdeVeScheduler``: the paper's predictor-corrector sampler (``pc``). Others: no default.
    """
    cfg = model.metadata.get("scheduler_config") or {}
    name = cfg.get("_class_name")
    if name == "DDPMScheduler" and model.metadata.get("time_map") is not None:
        sched = _import_diffusers().DDPMScheduler.from_config(cfg)
        sched.set_timesteps(steps or sched.config.num_train_timesteps)
        grid = model.metadata["time_map"].grid(sched.timesteps)
        opts = {"predictor": "ancestral_sampling", "corrector": "none", "grid": grid, "final": "tweedie"}
        return "pc", None, opts
    if name == "ScoreSdeVeScheduler":
        return "pc", steps, {}
    raise ValueError(
        f"sample_pipeline: no default sampler for a pipeline whose scheduler is {name!r}; pass solver= "
        "(e.g. 'dpmpp_2m', 'unipc', 'auto'; see ss.solvers())"
    )


def sample_pipeline(
    pipeline: Any,
    solver: str | None = None,
    steps: int | None = None,
    *,
    batch_size: int = 1,
    generator: torch.Generator | None = None,
    class_labels: int | Tensor | None = None,
    guidance_scale: float | None = None,
    null_class_label: int | None = None,
    clip_x0: bool | None = None,
    output_type: Literal["pil", "np", "pt"] = "pil",
    return_dict: bool = True,
    **kwargs: Any,
) -> Any:
    """Drop-in for an unconditional/class-conditional image pipeline's ``pipe(...)``: sample with a scoresolve
    solver and post-process like diffusers.

    ``images = pipe(batch_size=4, generator=g).images`` becomes
    ``images = sample_pipeline(pipe, batch_size=4, generator=g).images`` (the pipeline's own sampler), or
    ``sample_pipeline(pipe, "dpmpp_2m", 20, ...)`` for one of ours.

    Args:
        pipeline: a pipeline (``.unet`` + ``.scheduler``), or anything :func:`from_diffusers` accepts.
        solver, steps: the scoresolve solver and its steps (the evaluation budget ``nfe=`` of a few-step solver,
            :func:`budget_kwargs`). ``solver=None`` (default): the pipeline's own
            sampler (``DDPMScheduler``: ancestral sampling through its timesteps, ``steps`` of them, default
            all; ``ScoreSdeVeScheduler``: ``pc``).
        batch_size, generator: as in diffusers.
        class_labels, guidance_scale, null_class_label: see :func:`from_diffusers`.
        clip_x0: clamp Tweedie's :math:`\\hat x_0` to the data range. ``None`` (default): as the pipeline's
            scheduler does (``clip_sample``), like the pipeline itself.
        output_type: ``"pil"`` (list of PIL images), ``"np"`` (``(B, H, W, C)`` in [0, 1]) or ``"pt"``
            (``(B, C, H, W)`` tensor in [0, 1]).
        return_dict: return diffusers' ``ImagePipelineOutput`` (``.images``) rather than the bare images.
        **kwargs: :func:`from_diffusers` options (``scheduler``, ``sde``, ``prediction_type``,
            ``timestep_mode``, ``data_range``, ``revision``, ``model_class``); everything else goes to
            :func:`scoresolve.sample` (``return_result=True``: the :class:`~scoresolve.SampleResult`, with the
            post-processed images in ``info["images"]``; ``snr=``, ``grid=``, ...).
    """
    model_options = {k: kwargs.pop(k) for k in _MODEL_OPTIONS if k in kwargs}
    if clip_x0 is None:
        sched = model_options.get("scheduler", getattr(pipeline, "scheduler", None))
        cfg = _scheduler_config(sched) or {}
        clip_x0 = bool(cfg.get("clip_sample"))
        if clip_x0 and "data_range" not in model_options and "clip_sample_range" in cfg:
            r = float(cfg["clip_sample_range"])
            model_options["data_range"] = (-r, r)
    model = from_diffusers(
        pipeline,
        class_labels=class_labels,
        guidance_scale=guidance_scale,
        null_class_label=null_class_label,
        clip_x0=clip_x0,
        **model_options,
    )
    if solver is None:
        solver, steps, own = _own_sampler(model, steps)
        kwargs = {**own, **kwargs}
    device = kwargs.pop("device", None) or _network_dtype_device(model.metadata["network"])[1]
    if "shape" not in kwargs and "x_T" not in kwargs:
        kwargs["batch_size"] = batch_size
    if steps is not None:
        kwargs = {**budget_kwargs(solver, steps), **kwargs}
    out = sample(model, model.sde, solver, generator=generator, device=device, **kwargs)
    x = out.samples if isinstance(out, SampleResult) else out
    lo, hi = model.data_range or (-1.0, 1.0)
    img = ((x.float() - lo) / (hi - lo)).clamp(0, 1)
    if output_type == "pt":
        images: Any = img
    else:
        arr = img.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            images = arr
        elif output_type == "pil":
            from diffusers.utils.pil_utils import numpy_to_pil

            images = numpy_to_pil(arr)
        else:
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
    if isinstance(out, SampleResult):
        out.info["images"] = images
        return out
    if not return_dict:
        return (images,)
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

    return ImagePipelineOutput(images=images)


def __getattr__(name: str) -> Any:
    if name == "ScoresolveScheduler":  # its module subclasses diffusers' classes: imported on first use
        from .diffusers_scheduler import ScoresolveScheduler

        return ScoresolveScheduler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
