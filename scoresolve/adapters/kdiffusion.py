r"""k-diffusion / EDM interoperability (Karras et al. 2022, arXiv:2206.00364; docs/adapters.md).

k-diffusion models are *denoisers* :math:`D(x, \sigma)` of ``x = x_0 + \sigma n``; both directions go through
:func:`scoresolve.from_denoiser` (the one place the formula lives):

- **their model, our solvers**: :func:`from_kdiffusion` wraps ``model(x, sigma, **extra_args)`` as a
  :class:`~scoresolve.ScoreModel` under a :class:`~scoresolve.VESDE` spanning the model's noise range (or any
  SDE: the score is then :math:`(\alpha_t D(x_t/\alpha_t, \sigma_t/\alpha_t) - x_t)/\sigma_t^2`);
- **our solvers, their code**: :func:`sample_scoresolve` and ``sample_<solver>`` for every registered solver and
  every k-diffusion sampler name take k-diffusion's ``sample_*(model, x, sigmas, extra_args=None, ...)`` and
  run a scoresolve solver on exactly the noise levels ``sigmas`` (the state is ``x`` unchanged on
  ``VESDE(sigmas_pos[-1] / 2, sigmas[0])``; a final ``sigma = 0`` is the Tweedie step, ``final="zero"`` for
  LMS). Noise comes from ``generator=`` / ``seeds=``, else from the global RNG as in k-diffusion. Cost: the
  solver's own (one network call per evaluation)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..aliases import KDIFFUSION_SAMPLERS
from ..aliases import resolve as resolve_alias
from ..models import ScoreModel, from_denoiser
from ..sampling import sample
from ..sde import SDE, VESDE
from ..solvers.base import Solver
from ..solvers.exponential import DPMSolver

__all__ = [
    "from_kdiffusion",
    "sample_scoresolve",
    "kdiffusion_sampler",
    "sde_for_sigmas",
    "sigmas_to_grid",
    "load_kdiffusion_sampling",
    "sample_dpm_fast",
    "sample_dpm_adaptive",
    "KDIFFUSION_SAMPLERS",
]

Denoiser = Callable[..., Tensor]

_KSAMPLING: tuple[Any, str | None] | None = None


def load_kdiffusion_sampling() -> tuple[Any, str | None]:
    """k-diffusion's own sampler module ``k_diffusion.sampling`` (for comparisons), and a note.

    ``k_diffusion/__init__.py`` imports scikit-image, torchvision, kornia, ...; its ``sampling.py`` only
    needs scipy, torchsde, tqdm and two helpers of ``k_diffusion.utils``. When the package import fails,
    ``sampling.py`` is loaded alone under a private package name with those two helpers, and the note
    says so (``None`` when the package imported normally). The result is cached.

    Raises:
        ImportError: k-diffusion (``pip install --no-deps k-diffusion``) or one of scipy, torchsde,
            tqdm is missing.
    """
    global _KSAMPLING
    if _KSAMPLING is not None:
        return _KSAMPLING
    import importlib
    import importlib.util
    import sys
    import types

    try:
        _KSAMPLING = (importlib.import_module("k_diffusion.sampling"), None)
        return _KSAMPLING
    except Exception as e:  # the package's own optional imports
        reason = e
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (pip install --no-deps k-diffusion)") from reason
    for dep in ("scipy", "torchsde", "tqdm"):
        importlib.import_module(dep)  # ImportError names the missing one
    name = "_scoresolve_kdiffusion"
    pkg = types.ModuleType(name)
    pkg.__path__ = []  # type: ignore[attr-defined]
    utils = types.ModuleType(f"{name}.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]  # type: ignore[attr-defined]
    utils.append_zero = lambda x: torch.cat([x, x.new_zeros([1])])  # type: ignore[attr-defined]
    pkg.utils = utils  # type: ignore[attr-defined]
    sys.modules[name], sys.modules[f"{name}.utils"] = pkg, utils
    path = list(spec.submodule_search_locations)[0] + "/sampling.py"
    sspec = importlib.util.spec_from_file_location(f"{name}.sampling", path)
    assert sspec is not None and sspec.loader is not None
    mod = importlib.util.module_from_spec(sspec)
    sys.modules[f"{name}.sampling"] = mod
    sspec.loader.exec_module(mod)
    _KSAMPLING = (mod, f"k_diffusion.sampling loaded without the package __init__ (its import failed: {reason})")
    return _KSAMPLING


def _scalar(v: Any, name: str) -> float:
    if isinstance(v, Tensor):
        if v.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(v.shape)}")
        v = v.item()
    f = float(v)
    if not (math.isfinite(f) and f > 0):
        raise ValueError(f"{name} must be a finite positive number, got {v!r}")
    return f


def from_kdiffusion(
    model: Denoiser,
    *,
    sigma_min: float | Tensor | None = None,
    sigma_max: float | Tensor | None = None,
    sde: SDE | None = None,
    extra_args: dict[str, Any] | None = None,
    sample_shape: Sequence[int] | None = None,
    data_range: tuple[float, float] | None = None,
) -> ScoreModel:
    r"""Wrap a k-diffusion/EDM denoiser ``model(x, sigma, **extra_args) -> x0`` as a score model.

    The score is :math:`(\alpha_t D(x_t/\alpha_t, \sigma_t/\alpha_t) - x_t)/\sigma_t^2`
    (:func:`scoresolve.from_denoiser`); with the default VE SDE (:math:`\alpha = 1`) it is
    :math:`(D(x, \sigma) - x)/\sigma^2`.

    Args:
        model: the denoiser, called as ``model(x, sigma, **extra_args)`` with ``sigma`` of shape ``(B,)``
            (k-diffusion's wrappers such as ``CompVisDenoiser`` / ``DiscreteEpsDDPMDenoiser`` qualify; they
            quantise or interpolate their own discrete noise levels).
        sigma_min, sigma_max: the model's noise range; default: the model's ``sigma_min`` / ``sigma_max``
            attributes (k-diffusion's ``DiscreteSchedule`` has them). Define ``VESDE(sigma_min, sigma_max)``.
        sde: use this SDE instead (e.g. a ``VPSDE``: the denoiser sees :math:`x_t/\alpha_t` and
            :math:`\sigma_t/\alpha_t`). Mutually exclusive with ``sigma_min`` / ``sigma_max``.
        extra_args: keyword arguments passed on every call (conditioning, as k-diffusion's ``extra_args``).
        sample_shape: shape of one sample, e.g. ``(3, 32, 32)``.
        data_range: the data range, informational.

    Returns:
        A :class:`~scoresolve.ScoreModel` with ``parameterization="denoiser"``.
    """
    if not callable(model):
        raise TypeError(f"from_kdiffusion: model must be callable model(x, sigma), got {type(model).__name__}")
    if sde is not None:
        if sigma_min is not None or sigma_max is not None:
            raise ValueError("from_kdiffusion: pass either sde= or sigma_min=/sigma_max=, not both")
    else:
        if sigma_min is None:
            sigma_min = getattr(model, "sigma_min", None)
        if sigma_max is None:
            sigma_max = getattr(model, "sigma_max", None)
        if sigma_min is None or sigma_max is None:
            raise ValueError(
                "from_kdiffusion: the model's noise range is unknown; pass sigma_min= and sigma_max= "
                "(e.g. 0.002 and 80 for EDM models) or sde="
            )
        sde = VESDE(sigma_min=_scalar(sigma_min, "sigma_min"), sigma_max=_scalar(sigma_max, "sigma_max"))
    kwargs = dict(extra_args or {})

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        return model(x, sigma, **kwargs)

    return from_denoiser(denoise, sde, sample_shape=sample_shape, data_range=data_range)


def _check_sigmas(sigmas: Any) -> Tensor:
    s = torch.as_tensor(sigmas).detach().to(device="cpu", dtype=torch.float64)
    if s.ndim != 1 or s.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of at least 2 noise levels, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError("sigmas contains NaN or inf")
    if not (s[1:] < s[:-1]).all():
        raise ValueError(f"sigmas must be strictly decreasing, got {s.tolist()[:8]}...")
    if s[-1] < 0 or (s[:-1] <= 0).any():
        raise ValueError("sigmas must be positive except for an optional final 0")
    return s


def sde_for_sigmas(sigmas: Tensor) -> VESDE:
    """The VE SDE a k-diffusion noise schedule is run under: ``sigma_max = sigmas[0]``, ``sigma_min`` half the
    smallest positive sigma (see the module docstring)."""
    s = _check_sigmas(sigmas)
    pos = s[s > 0]
    return VESDE(sigma_min=float(pos[-1]) / 2, sigma_max=float(pos[0]))


def sigmas_to_grid(sigmas: Tensor, sde: SDE) -> Tensor:
    """The decreasing float64 times at which ``sde``'s EDM noise level :meth:`SDE.sigma` equals the positive
    entries of ``sigmas`` (a final 0 is dropped: it is the denoising step)."""
    s = _check_sigmas(sigmas)
    pos = s[s > 0]
    t = sde.t_from_sigma(pos)
    if math.isclose(float(t[0]), sde.T, rel_tol=0, abs_tol=1e-12):
        t[0] = sde.T
    return t


def sample_scoresolve(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    disable: bool | None = None,
    *,
    solver: str | Solver = "dpmpp_2m",
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | Tensor | None = None,
    **solver_options: Any,
) -> Tensor:
    r"""Run a scoresolve solver with k-diffusion's sampler convention.

    Drop-in for ``k_diffusion.sampling.sample_*``: ``x`` is the starting state at ``sigmas[0]`` (k-diffusion
    convention: ``x = randn * sigmas[0]``, *not* divided by anything), ``sigmas`` the decreasing noise levels
    (an optional final 0). The model is called as ``model(x, sigma * ones(B), **extra_args)`` exactly at the
    given sigmas (see the module docstring for the mapping to a scoresolve time grid). NFE: the solver's, plus
    one for a final ``sigma = 0``.

    Args:
        model, x, sigmas, extra_args: as in k-diffusion.
        callback: called after every step with k-diffusion's dict ``{'x', 'i', 'sigma', 'sigma_hat',
            'sigma_next', 'denoised'}``; ``x`` is the state *after* step ``i`` (at ``sigma_next``) and
            ``denoised`` the latest denoiser output (k-diffusion calls it before the step, with the state at
            ``sigma``).
        disable: ``True`` hides the progress bar (k-diffusion's meaning).
        solver: a registered scoresolve solver name or instance (default ``"dpmpp_2m"``).
        generator, seeds: scoresolve's noise control (default: the global RNG, as k-diffusion).
        **solver_options: passed to the solver (e.g. ``predictor=``, ``corrector=``, ``snr=`` for ``"pc"``).

    Returns:
        The final state, in ``x``'s dtype and device.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor (the starting state at sigmas[0])")
    if solver_options.pop("noise_sampler", None) is not None:
        raise TypeError("noise_sampler= is not supported: pass generator= or seeds= (scoresolve's noise control)")
    s = _check_sigmas(sigmas)
    final_zero = bool(s[-1] == 0)
    final = "tweedie" if final_zero else "none"  # the step onto sigma = 0 is sample()'s Tweedie step ...
    if isinstance(solver, str):  # k-diffusion / diffusers names too ("dpmpp_2m_sde", "euler_a")
        solver, solver_options, _ = resolve_alias(solver, solver_options)
        if solver == "lms" and final_zero:  # ... but k-diffusion's LMS takes it with its own multistep rule
            final = "zero"
    kwargs = dict(extra_args or {})
    pos = s[s > 0]
    last: dict[str, Tensor] = {}

    def denoise(xx: Tensor, sigma: Tensor) -> Tensor:
        out = model(xx, sigma, **kwargs)
        last["denoised"] = out
        return out

    def report(i: int, x_now: Tensor) -> None:
        if callback is not None:
            callback(
                {
                    "x": x_now,
                    "i": i,
                    "sigma": s[i],
                    "sigma_hat": s[i],
                    "sigma_next": s[i + 1],
                    "denoised": last.get("denoised", x_now),
                }
            )

    if pos.numel() == 1:  # sigmas = [s0, 0]: one denoising step
        ones = x.new_ones(x.shape[0])
        out = denoise(x, float(pos[0]) * ones)
        report(0, out)
        return out

    sde = sde_for_sigmas(s)
    grid = sigmas_to_grid(s, sde)
    score_model = from_denoiser(denoise, sde)

    def cb(step: int, t: Tensor, x: Tensor, x_mean: Tensor) -> None:
        report(step, x)

    out = sample(
        score_model,
        sde,
        solver,
        grid=grid,
        x_T=x,
        final=final,
        generator=generator,
        seeds=seeds,
        progress=False if disable else None,
        callback=cb if callback is not None else None,
        **solver_options,
    )
    assert isinstance(out, Tensor)
    if final_zero:
        report(s.numel() - 2, out)
    return out


def kdiffusion_sampler(solver: str | Solver = "dpmpp_2m", **solver_options: Any) -> Callable[..., Tensor]:
    """A k-diffusion-style ``sample_*`` function that runs the scoresolve ``solver`` with ``solver_options``.

    Example::

        sample_pc = kdiffusion_sampler("pc", predictor="ancestral_sampling", corrector="none")
        x = sample_pc(model, torch.randn(4, 3, 32, 32) * sigmas[0], sigmas)
    """
    if isinstance(solver, str):
        resolve_alias(solver)  # fail now, with the closest name

    def sampler(
        model: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        extra_args: dict[str, Any] | None = None,
        callback: Callable[[dict[str, Any]], Any] | None = None,
        disable: bool | None = None,
        **options: Any,
    ) -> Tensor:
        return sample_scoresolve(
            model, x, sigmas, extra_args, callback, disable, solver=solver, **{**solver_options, **options}
        )

    name = solver if isinstance(solver, str) else type(solver).__name__
    sampler.__name__ = sampler.__qualname__ = f"sample_{name}"
    sampler.__doc__ = f"scoresolve solver {name!r} with k-diffusion's sample_* convention (see sample_scoresolve)."
    return sampler


def _segments(sigma_min: float, sigma_max: float, n: int) -> list[tuple[int, list[float]]]:
    """DPM-Solver-fast's plan (Lu et al. 2022, arXiv:2206.00927, Sec. 3.4, as in k-diffusion): ``n //3 + 1``
    steps uniform in log-SNR, third order but the last (order ``n % 3``, or 2 then 1); returned as runs of equal
    order ``(order, noise levels incl. the stage points)``."""
    m = n // 3 + 1
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    lam = torch.linspace(-math.log(sigma_max), -math.log(sigma_min), m + 1, dtype=torch.float64)
    runs: list[tuple[int, list[float]]] = []
    for k, o in enumerate(orders):
        pts = [float(torch.exp(-(lam[k] + (lam[k + 1] - lam[k]) * j / o))) for j in range(o + 1)]
        if runs and runs[-1][0] == o:
            runs[-1][1].extend(pts[1:])
        else:
            runs.append((o, pts))
    return runs


def _noise_range(fn: str, sigma_min: Any, sigma_max: Any, eta: float, noise_sampler: Any) -> tuple[float, float]:
    """``(sigma_min, sigma_max)`` of k-diffusion's range-signature samplers as floats, refusing what we do not run
    (``eta > 0``, ``noise_sampler=``) and an empty range, each error naming ``fn``."""
    if eta:
        raise ValueError(f"{fn}: eta > 0 is not supported (use sample_dpm_2_ancestral or sample_dpmpp_sde)")
    if noise_sampler is not None:
        raise TypeError(f"{fn}: noise_sampler= is not supported (scoresolve's noise comes from generator= / seeds=)")
    lo, hi = _scalar(sigma_min, "sigma_min"), _scalar(sigma_max, "sigma_max")
    if lo >= hi:
        raise ValueError(f"{fn} needs sigma_min < sigma_max, got {lo}, {hi}")
    return lo, hi


def sample_dpm_fast(
    model: Denoiser,
    x: Tensor,
    sigma_min: float,
    sigma_max: float,
    n: int,
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    disable: bool | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: Any = None,
    *,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | Tensor | None = None,
) -> Tensor:
    """DPM-Solver-fast with k-diffusion's signature ``(model, x, sigma_min, sigma_max, n)``: ``n`` evaluations,
    ``n // 3 + 1`` singlestep DPM-Solver steps uniform in log-SNR (third order but the last), from ``sigma_max``
    to ``sigma_min`` without a final denoising; our ``dpm_solver(order=o, method="singlestep")`` on those
    levels. ``eta > 0`` (k-diffusion's ancestral variant) is not supported."""
    lo, hi = _noise_range("sample_dpm_fast", sigma_min, sigma_max, eta, noise_sampler)
    n = int(n)
    if n < 1:
        raise ValueError(f"sample_dpm_fast needs n >= 1, got n={n}")
    done = 0
    for order, pts in _segments(lo, hi, n):
        step_cb = None
        if callback is not None:
            step_cb = (lambda off: lambda d: callback({**d, "i": d["i"] + off}))(done)
        x = sample_scoresolve(model, x, torch.tensor(pts, dtype=torch.float64), extra_args, step_cb, disable,
                              solver=DPMSolver(order=order, method="singlestep"), generator=generator, seeds=seeds)
        done += len(pts) - 1
    return x


#: dopri5 in t needs tolerances this much tighter than DPM-Solver-23 in log-SNR for a like error (docs/adapters.md)
_ADAPTIVE_TIGHTER = 50.0


def sample_dpm_adaptive(
    model: Denoiser,
    x: Tensor,
    sigma_min: float,
    sigma_max: float,
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    disable: bool | None = None,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
    noise_sampler: Any = None,
    return_info: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Any]]:
    """k-diffusion's adaptive DPM-Solver signature ``(model, x, sigma_min, sigma_max)``, run by our per-sample
    adaptive probability-flow ODE solver (``ode_adaptive``: dopri5, an error norm and a step size per sample)
    from ``sigma_max`` to ``sigma_min``, no final denoising. A different method from k-diffusion's DPM-Solver-23
    with one batch-wide PID step (docs/adapters.md): the same ODE, with ``rtol``/``atol`` divided by 50, which
    gives dopri5 in ``t`` about k-diffusion's accuracy at their loose defaults (their error is measured on an
    exponential integrator in log-SNR); ``order``, ``h_init`` and the PID coefficients are ignored.
    ``eta > 0`` is not supported. ``return_info=True`` adds ``{"nfe": ...}``."""
    lo, hi = _noise_range("sample_dpm_adaptive", sigma_min, sigma_max, eta, noise_sampler)
    sig = torch.tensor([hi, lo], dtype=torch.float64)
    sde = sde_for_sigmas(sig)
    kwargs = dict(extra_args or {})
    score_model = from_denoiser(lambda xx, s: model(xx, s, **kwargs), sde)
    eps = float(sigmas_to_grid(sig, sde)[-1])
    res = sample(score_model, sde, "ode_adaptive", x_T=x, eps=eps, final="none",
                 rtol=rtol / _ADAPTIVE_TIGHTER, atol=atol / _ADAPTIVE_TIGHTER,
                 progress=False if disable else None, return_result=True)
    assert not isinstance(res, Tensor)
    return (res.samples, {"nfe": res.nfe}) if return_info else res.samples


def __getattr__(name: str) -> Any:
    # sample_<name> for every registered solver and alias, e.g. sample_dpmpp_2m, sample_euler_a, sample_dpmpp_2m_sde
    if name.startswith("sample_"):
        try:
            resolve_alias(name[len("sample_") :])
        except ValueError:
            pass
        else:
            return kdiffusion_sampler(name[len("sample_") :])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
