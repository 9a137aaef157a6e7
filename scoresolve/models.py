r"""Score models and the conversions between parameterisations, all in one place (docs/core.md, docs/flow.md).

A *score model* is any callable ``score(x, t) -> Tensor`` (``x`` of shape ``(B, *dims)``, ``t`` of shape ``(B,)``)
returning :math:`\nabla_x \log p_t(x)`; :class:`ScoreModel` adds its SDE, sample shape, parameterisation and data
range. Other targets convert (one network call per evaluation) through the kernel
:math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon` and Tweedie's :math:`E[x_0 \mid x_t] = (x_t + \sigma_t^2 s)/\alpha_t`:

- ``eps``: score :math:`= -\hat\varepsilon/\sigma_t`; ``x0``: score :math:`= (\alpha_t\hat x_0 - x_t)/\sigma_t^2`;
- ``v`` (:math:`\hat v = \alpha_t\varepsilon - \sigma_t x_0`, Salimans & Ho 2022, arXiv:2202.00512):
  :math:`\hat x_0 = (\alpha_t x_t - \sigma_t\hat v)/(\alpha_t^2+\sigma_t^2)`, then the ``x0`` rule;
- ``velocity`` (flow matching, :math:`\hat v = \varepsilon - x_0` at :math:`x_t/(\alpha_t+\sigma_t)`,
  :math:`\tau = \sigma_t/(\alpha_t+\sigma_t)`): :math:`\hat x_0 = x_t/(\alpha_t+\sigma_t) - \tau\hat v`;
- ``denoiser`` (:math:`D(x_t/\alpha_t, \sigma_t/\alpha_t)`, Karras et al. 2022, arXiv:2206.00364):
  score :math:`= (\alpha_t D - x_t)/\sigma_t^2`."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from .gaussian import GaussianFit, as_gaussian_fit
from .sde import SDE

__all__ = [
    "ScoreModel",
    "Parameterization",
    "from_eps",
    "from_x0",
    "from_v",
    "from_denoiser",
    "from_velocity",
    "resolve_gaussian_prior",
    "score_to_x0",
    "score_to_eps",
]

Parameterization = Literal["score", "eps", "x0", "v", "denoiser", "velocity"]
_PARAMETERIZATIONS = ("score", "eps", "x0", "v", "denoiser", "velocity")

#: the file and Hub functions behind :meth:`ScoreModel.from_pretrained`, ``save_pretrained`` and ``push_to_hub``
#: (``load``, ``recover``, ``save_pretrained``, ``push_to_hub``). :mod:`scoresolve.io` builds on this module and
#: registers them here when it is imported (``import scoresolve`` does).
_PERSISTENCE: dict[str, Callable[..., Any]] = {}


class ScoreModel:
    """A score function with the metadata a sampler needs.

    Args:
        fn: the network or callable. Its meaning depends on ``parameterization``: ``score``,
            ``eps`` and ``x0`` and ``v`` are called as ``fn(x, t)``; ``denoiser`` as
            ``fn(x / alpha, sigma / alpha)`` (k-diffusion/EDM convention); ``velocity`` as
            ``fn(x / (alpha + sigma), time_fn(sigma / (alpha + sigma)))`` (flow matching, :func:`from_velocity`).
        sde: the SDE the network was trained with (used for conversions and as the default SDE
            of :func:`scoresolve.sample`).
        sample_shape: shape of one sample, e.g. ``(3, 32, 32)``; lets ``sample`` infer ``shape``.
        parameterization: what ``fn`` predicts (see the module docstring).
        data_range: the ``(low, high)`` range of the data, e.g. ``(-1, 1)`` (informational; used by
            likelihood in bits/dim).
        time_fn: optional map applied to ``t`` before calling ``fn`` (e.g. continuous time to a
            network's discrete timestep index). Not used by ``denoiser`` models, which are called
            with the noise level ``sigma(t)`` instead of ``t``.
        data_moments: optional ``(mean, cov)`` of the data (in :math:`x_0` space, flattened to ``D``
            numbers): ``mean`` with ``D`` elements (any shape, e.g. ``sample_shape``, or a scalar) and
            ``cov`` a ``(D, D)`` covariance matrix, ``(D,)`` variances (diagonal) or a scalar variance.
            Validated here (finite, symmetric positive semi-definite, dimensions agreeing with each other
            and with ``sample_shape``; errors name ``data_moments``). Used by the budgeted few-step
            solvers with ``gaussian_prior="estimate"`` (the default of ``solver="auto"``): their first
            interval from ``T`` is then the exact probability-flow ODE of :math:`N(\\text{mean}, \\text{cov})`
            with these moments instead of moments estimated during grid calibration, and it works with
            ``calibrate=False`` too (docs/fast_samplers.md). An
            explicit ``gaussian_prior=`` given to :func:`scoresolve.sample` wins. Stored as float64 tensors; the
            validated Gaussian fit is :attr:`data_fit`.

    Calling the model returns the score :math:`\\nabla_x\\log p_t(x)` in ``x``'s dtype, whatever the
    network's dtype.
    """

    def __init__(
        self,
        fn: Callable[..., Tensor],
        sde: SDE | None = None,
        sample_shape: Sequence[int] | None = None,
        parameterization: Parameterization = "score",
        data_range: tuple[float, float] | None = None,
        time_fn: Callable[[Tensor], Tensor] | None = None,
        data_moments: tuple[Tensor | float, Tensor | float] | None = None,
        **metadata: Any,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"ScoreModel: fn must be callable, got {type(fn).__name__}")
        if parameterization not in _PARAMETERIZATIONS:
            raise ValueError(
                f"ScoreModel: unknown parameterization {parameterization!r}; expected one of "
                f"{', '.join(_PARAMETERIZATIONS)}"
            )
        if parameterization != "score" and sde is None:
            raise ValueError(f"ScoreModel: parameterization={parameterization!r} needs the model's sde")
        if sde is not None and not isinstance(sde, SDE):
            raise TypeError(f"ScoreModel: sde must be an SDE, got {type(sde).__name__}")
        self.fn = fn
        self.sde = sde
        self.sample_shape = tuple(int(s) for s in sample_shape) if sample_shape is not None else None
        self.parameterization: Parameterization = parameterization
        self.data_range = data_range
        self.time_fn = time_fn
        self.metadata = metadata
        self.data_moments = data_moments

    @property
    def data_moments(self) -> tuple[Tensor, Tensor] | None:
        """The data's ``(mean, cov)`` (float64 tensors, as given) or ``None``; assigning validates it."""
        return self._data_moments

    @data_moments.setter
    def data_moments(self, value: tuple[Tensor | float, Tensor | float] | None) -> None:
        self._data_moments, self._data_fit = _check_data_moments(value, self.sample_shape)

    @property
    def data_fit(self) -> Any:
        """The validated Gaussian fit of :attr:`data_moments` (a
        :class:`~scoresolve.gaussian.GaussianFit`), or ``None``."""
        return self._data_fit

    # --- huggingface_hub's ModelHubMixin interface (config.json + model.safetensors + README.md) -----------------
    @classmethod
    def from_pretrained(cls, source: str | os.PathLike[str], **kwargs: Any) -> ScoreModel:
        """Load a model from a :meth:`save_pretrained` folder, a file, a bundled name (``"digits"``) or a Hub id
        ``"org/name"`` (through huggingface_hub's cache; offline with ``HF_HUB_OFFLINE=1``). Safetensors only,
        never pickle; older scoresolve files load too. Keyword arguments as for :func:`scoresolve.io.load`
        (``device``, ``dtype``, ``revision``, ``local_files_only``, ``cache_dir``, ``use_ema``)."""
        _PERSISTENCE["recover"](source)  # a save to this folder that was killed: put the complete folder back first
        return _PERSISTENCE["load"](source, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike[str], **kwargs: Any) -> Path:
        """Write ``directory/{config.json, model.safetensors, README.md}``, replacing the folder as a whole
        (:func:`scoresolve.io.hub.save_pretrained`; keyword arguments as for :func:`scoresolve.io.save`)."""
        return _PERSISTENCE["save_pretrained"](self, directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload to the Hugging Face Hub (network and a token needed); see :func:`scoresolve.io.hub.push_to_hub`."""
        return _PERSISTENCE["push_to_hub"](self, repo_id, **kwargs)

    def raw(self, x: Tensor, t: Tensor) -> Tensor:
        """The wrapped network's own output at ``(x, t)`` (no conversion). A ``torch.nn.Module`` whose weights
        are in another floating dtype (a float16 or bfloat16 network under a float32 sampler) gets ``x`` in its
        weights' dtype; ``t`` is passed as it is."""
        dt = _net_dtype(self.fn)
        if dt is not None and dt != x.dtype:
            x = x.to(dt)
        if self.parameterization == "denoiser":
            assert self.sde is not None
            a = self.sde.alpha(t)
            return self.fn(x / SDE.bcast(a, x), self.sde.sigma(t))
        if self.parameterization == "velocity":
            assert self.sde is not None
            a, s = self.sde.alpha(t), self.sde.marginal_std(t)
            tau = s / (a + s)
            return self.fn(x / SDE.bcast(a + s, x), self.time_fn(tau) if self.time_fn is not None else tau)
        tt = self.time_fn(t) if self.time_fn is not None else t
        return self.fn(x, tt)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.raw(x, t)
        if self.parameterization == "score":
            return out.to(x.dtype)
        return output_to_score(out.to(x.dtype), x, t, self.sde, self.parameterization)  # type: ignore[arg-type]

    def x0(self, x: Tensor, t: Tensor) -> Tensor:
        """Tweedie's denoised estimate :math:`E[x_0 \\mid x_t]`."""
        assert self.sde is not None, "x0 needs the model's sde"
        return score_to_x0(self(x, t), x, t, self.sde)

    def __repr__(self) -> str:
        moments = "" if self._data_fit is None else f", data_moments=<dimension {self._data_fit.dim}>"
        return (
            f"ScoreModel(parameterization={self.parameterization!r}, sde={self.sde!r}, "
            f"sample_shape={self.sample_shape}{moments})"
        )


def _check_data_moments(value: Any, sample_shape: tuple[int, ...] | None) -> tuple[Any, Any]:
    """Validate ``data_moments``: ``((mean, cov) as float64 tensors, GaussianFit)``, or ``(None, None)``."""
    if value is None:
        return None, None
    if isinstance(value, Tensor) or not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"ScoreModel: data_moments must be None or a (mean, cov) pair, got {type(value).__name__}")
    mean, cov = value
    try:
        mean_t = torch.as_tensor(mean, dtype=torch.float64).detach().clone()
        cov_t = torch.as_tensor(cov, dtype=torch.float64).detach().clone()
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"ScoreModel: data_moments must be a (mean, cov) pair of tensors or numbers ({e})") from None
    d = math.prod(sample_shape) if sample_shape is not None else None
    if d is not None and mean_t.numel() == 1 and cov_t.ndim == 0:
        mean_t = mean_t.reshape(()).expand(d).clone()  # a scalar mean and variance for every coordinate
    fit = GaussianFit(mean_t, cov_t, name="data_moments")
    if d is not None and fit.dim != d:
        raise ValueError(
            f"ScoreModel: data_moments are for dimension {fit.dim} but sample_shape={sample_shape} has {d} "
            "elements (mean: D elements; cov: (D, D), (D,) or a scalar)"
        )
    return (mean_t, cov_t), fit


def output_to_score(out: Tensor, x: Tensor, t: Tensor, sde: SDE, parameterization: Parameterization) -> Tensor:
    """Convert a network output of the given parameterisation to the score (formulas above)."""
    a = SDE.bcast(sde.alpha(t), x)
    s = SDE.bcast(sde.marginal_std(t), x)
    if parameterization == "score":
        return out
    if parameterization == "eps":
        return -out / s
    if parameterization == "v":
        x0 = (a * x - s * out) / (a**2 + s**2)
        return (a * x0 - x) / s**2
    if parameterization in ("x0", "denoiser"):
        return (a * out - x) / s**2
    if parameterization == "velocity":
        x0 = (x - s * out) / (a + s)
        return (a * x0 - x) / s**2
    raise ValueError(f"unknown parameterization {parameterization!r}")


def score_to_x0(score: Tensor, x: Tensor, t: Tensor, sde: SDE) -> Tensor:
    r"""Tweedie: :math:`\hat x_0 = (x_t + \sigma_t^2 s)/\alpha_t`."""
    a = SDE.bcast(sde.alpha(t), x)
    s = SDE.bcast(sde.marginal_std(t), x)
    return (x + s**2 * score) / a


def score_to_eps(score: Tensor, x: Tensor, t: Tensor, sde: SDE) -> Tensor:
    r""":math:`\hat\varepsilon = -\sigma_t s`."""
    return -SDE.bcast(sde.marginal_std(t), x) * score


def from_eps(net: Callable[[Tensor, Tensor], Tensor], sde: SDE, **kwargs: Any) -> ScoreModel:
    r"""Wrap an ε-prediction network ``net(x, t)``: score :math:`= -\hat\varepsilon/\sigma_t`."""
    return ScoreModel(net, sde, parameterization="eps", **kwargs)


def from_x0(net: Callable[[Tensor, Tensor], Tensor], sde: SDE, **kwargs: Any) -> ScoreModel:
    r"""Wrap an :math:`x_0`-prediction network: score :math:`= (\alpha_t\hat x_0 - x_t)/\sigma_t^2`."""
    return ScoreModel(net, sde, parameterization="x0", **kwargs)


def from_v(net: Callable[[Tensor, Tensor], Tensor], sde: SDE, **kwargs: Any) -> ScoreModel:
    r"""Wrap a v-prediction network (:math:`v = \alpha_t\varepsilon - \sigma_t x_0`)."""
    return ScoreModel(net, sde, parameterization="v", **kwargs)


def from_denoiser(denoiser: Callable[[Tensor, Tensor], Tensor], sde: SDE, **kwargs: Any) -> ScoreModel:
    r"""Wrap a k-diffusion/EDM denoiser ``D(x, sigma)`` trained on :math:`x = x_0 + \sigma n`.

    Under an SDE with :math:`\alpha_t \neq 1`, :math:`x_t/\alpha_t` is data plus noise of std
    :math:`\sigma_t/\alpha_t`, so the score is :math:`(\alpha_t D(x_t/\alpha_t, \sigma_t/\alpha_t) - x_t)/\sigma_t^2`.
    """
    return ScoreModel(denoiser, sde, parameterization="denoiser", **kwargs)


def from_velocity(net: Callable[[Tensor, Tensor], Tensor], sde: SDE, **kwargs: Any) -> ScoreModel:
    r"""Wrap a flow-matching / rectified-flow network ``net(x, tau)`` predicting the velocity
    :math:`v = \varepsilon - x_0` of the linear interpolant :math:`x_\tau = (1-\tau)x_0 + \tau\varepsilon`
    (Lipman et al. 2022, arXiv:2210.02747; Liu et al. 2022, arXiv:2209.03003), usually with
    ``sde=ss.RectifiedFlow(shift=...)``.

    Under an SDE with kernel :math:`N(\alpha_t x_0, \sigma_t^2 I)`, :math:`x_t/(\alpha_t+\sigma_t)` is
    the interpolant at :math:`\tau = \sigma_t/(\alpha_t+\sigma_t)` (same SNR), so the network is called
    there (``time_fn``, if given, maps :math:`\tau` to the network's own time, e.g. ``1000 * tau``) and

    .. math:: \hat x_0 = \frac{x_t - \sigma_t\hat v}{\alpha_t+\sigma_t},\quad
              \hat\varepsilon = \frac{x_t + \alpha_t\hat v}{\alpha_t+\sigma_t},\quad
              \nabla\log p_t = -\frac{\hat\varepsilon}{\sigma_t}.

    Under :class:`~scoresolve.RectifiedFlow` (:math:`\alpha+\sigma = 1`): :math:`\hat x_0 = x - \tau\hat v`,
    score :math:`= -(x + (1-\tau)\hat v)/\tau`, and the probability-flow ODE is :math:`dx/d\tau = \hat v`.
    The same network can thus be sampled under VP or any other SDE too.
    """
    return ScoreModel(net, sde, parameterization="velocity", **kwargs)


def resolve_model(model: Any, sde: SDE | None) -> tuple[Callable[[Tensor, Tensor], Tensor], SDE]:
    """The score callable of ``model`` and the SDE to use: ``sde``, else the model's own.

    Raises a clear error when neither is given or ``sde`` is not an :class:`SDE`.
    """
    fn = model if callable(model) else as_score_fn(model)  # as_score_fn raises the error
    if sde is None:
        sde = model.sde if isinstance(model, ScoreModel) else None
        if sde is None:
            raise ValueError("sde is required (the model does not carry one): e.g. ss.VPSDE()")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresolve SDE, got {type(sde).__name__}")
    return fn, sde


def _parameters(model: Any) -> Iterator[torch.nn.Parameter]:
    """The parameters of a module or of a :class:`ScoreModel`'s network; none for a plain callable."""
    net = model.fn if isinstance(model, ScoreModel) else model
    return net.parameters() if isinstance(net, torch.nn.Module) else iter(())


def _net_dtype(net: Any) -> torch.dtype | None:
    """The dtype of a module's first floating-point parameter, ``None`` for anything else."""
    return next((p.dtype for p in _parameters(net) if p.is_floating_point()), None)


def model_device(model: Any) -> torch.device | None:
    """The device of a model's (or a :class:`ScoreModel`'s network's) first parameter; ``None`` for a plain
    callable or a module without parameters."""
    return next((p.device for p in _parameters(model)), None)


def cpu_facing(fn: Callable[[Tensor, Tensor], Tensor],
               device: torch.device | None) -> Callable[[Tensor, Tensor], Tensor]:
    """``fn`` for callers that keep their states on the CPU (the grid calibrations: a grid does not depend on
    the device): each call moves its inputs to ``device``, where the network is, and the score back.
    ``fn`` itself when ``device`` is the CPU or unknown."""
    if device is None or device.type == "cpu":
        return fn

    def on_device(x: Tensor, t: Tensor) -> Tensor:
        return fn(x.to(device), t.to(device)).to(x.device)

    return on_device


def as_score_fn(model: Any) -> Callable[[Tensor, Tensor], Tensor]:
    """Return a callable ``score(x, t)`` for a :class:`ScoreModel` or a plain callable."""
    if isinstance(model, ScoreModel):
        return model
    if callable(model):
        return model
    raise TypeError(f"model must be a callable score(x, t) or a scoresolve.ScoreModel, got {type(model).__name__}")


def resolve_gaussian_prior(model: Any, value: Any) -> GaussianFit | str | None:
    """``gaussian_prior=`` of :func:`scoresolve.sample`: ``"estimate"`` becomes the model's ``data_moments`` fit if
    it has one, and otherwise stays ``"estimate"`` (for the calibration to estimate)."""
    if value is None:
        return None
    if isinstance(value, str):
        if value != "estimate":
            raise ValueError(f"gaussian_prior must be None, (mean, cov) or 'estimate', got {value!r}")
        fit = model.data_fit if isinstance(model, ScoreModel) else None
        return fit if fit is not None else "estimate"
    return as_gaussian_fit(value)
