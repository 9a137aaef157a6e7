r"""Training objectives for score models (Song et al. 2021, arXiv:2011.13456, eq. 7 and App. C).

All losses take the raw network ``net(x, t)`` and the ``parameterization`` it is trained in; its output
is turned into a score by the single conversion of :mod:`scoresolve.models`, so one loss serves the
``score``, ``eps``, ``x0``, ``v`` and ``denoiser`` parameterisations alike.

Randomness (times, noise, projections) comes from ``generator`` (drawn on the CPU, then moved), so a
training run is reproducible and resumable exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._util import one_of
from ..models import ScoreModel
from ..sde import SDE

__all__ = ["dsm_loss", "ddpm_loss", "flow_matching_loss", "sliced_score_matching_loss", "ddpm_schedule", "WEIGHTINGS"]

WEIGHTINGS = ("sigma2", "likelihood")


def _reduce(err: Tensor, reduce: str) -> Tensor:
    flat = err.reshape(err.shape[0], -1)
    if reduce == "mean":
        return flat.mean(-1)
    if reduce == "sum":
        return flat.sum(-1)
    raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")


def _randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=like.device, dtype=like.dtype)


def _rand(n: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64).to(device=like.device)


def _perturb(sde: SDE, x0: Tensor, eps: float, generator: torch.Generator | None, t: Tensor | None,
             noise: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(t, z, std, x_t)``: ``t ~ U(eps, T)`` and ``z ~ N(0, I)`` unless given, ``x_t = alpha_t x0 + std z``."""
    if not 0 <= eps < sde.T:
        raise ValueError(f"eps must lie in [0, T), got {eps}")
    if t is None:
        t = (eps + _rand(x0.shape[0], x0, generator) * (sde.T - eps)).to(x0.dtype)
    z = _randn(tuple(x0.shape), x0, generator) if noise is None else noise
    mean, std = sde.marginal(x0, t)
    return t, z, std, mean + SDE.bcast(std, x0) * z


def _as_model(net: Callable[[Tensor, Tensor], Tensor], sde: SDE, parameterization: str) -> ScoreModel:
    if isinstance(net, ScoreModel):
        return net
    return ScoreModel(net, sde, parameterization=parameterization)  # type: ignore[arg-type]


def dsm_loss(
    net: Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    x0: Tensor,
    *,
    parameterization: str = "eps",
    weighting: str = "sigma2",
    reduce: str = "mean",
    eps: float = 1e-5,
    generator: torch.Generator | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    r"""Continuous-time denoising score matching (Song et al. 2021, eq. 7):

    .. math:: \mathcal L = E_{t\sim U(\epsilon,T)} E_{x_0} E_{z\sim N(0,I)}
              \big[\lambda(t)\, \lVert s_\theta(\alpha_t x_0 + \sigma_t z, t) + z/\sigma_t \rVert^2\big]

    with :math:`\lambda(t) = \sigma_t^2` (``weighting="sigma2"``, the paper's default, which for an
    ε-network is the DDPM loss :math:`\lVert\hat\varepsilon - z\rVert^2`) or :math:`\lambda(t) = g(t)^2`
    (``"likelihood"``: the loss then bounds the negative log-likelihood, Song et al. 2021b,
    arXiv:2101.09258; its variance is high near ``t = 0``). Works for VE, VP and sub-VP alike through
    ``sde.alpha`` / ``sde.marginal_std``.

    Args:
        net: the network ``net(x, t)`` (or a :class:`ScoreModel`).
        sde: the forward SDE.
        x0: data batch ``(B, *dims)``.
        parameterization: what ``net`` predicts (``score``, ``eps``, ``x0``, ``v``, ``denoiser``).
        weighting: ``"sigma2"`` or ``"likelihood"``.
        reduce: ``"mean"`` or ``"sum"`` over the data dimensions (the paper's ``reduce_mean``); the
            batch is always averaged.
        eps: smallest training time (the paper: 1e-5).
        generator: source of ``t`` and the noise; ``t``/``noise`` may also be given.

    Returns:
        The scalar loss.
    """
    one_of(weighting, WEIGHTINGS, "weighting")
    t, z, std, xt = _perturb(sde, x0, eps, generator, t, noise)
    s = SDE.bcast(std, x0)
    score = _as_model(net, sde, parameterization)(xt, t)
    per = _reduce((s * score + z) ** 2, reduce)  # σ²‖s + z/σ‖²
    if weighting == "likelihood":
        per = per * sde.diffusion(t) ** 2 / std**2
    return per.mean()


def flow_matching_loss(
    net: Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    x0: Tensor,
    *,
    reduce: str = "mean",
    eps: float = 1e-5,
    generator: torch.Generator | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    r"""Conditional flow matching with the linear interpolant (Lipman et al. 2022, arXiv:2210.02747, eq. 23;
    rectified flow, Liu et al. 2022, arXiv:2209.03003):

    .. math:: \mathcal L = E_{t\sim U(\epsilon,T)} E_{x_0} E_{z\sim N(0,I)}
              \lVert \hat v(x_\tau, \tau) - (z - x_0) \rVert^2,
              \quad x_\tau = (1-\tau)x_0 + \tau z.

    ``net`` is a velocity network (:func:`scoresolve.from_velocity`), called as the sampler calls it: at
    :math:`x_t/(\alpha_t+\sigma_t)` and :math:`\tau = \sigma_t/(\alpha_t+\sigma_t)`, so under
    :class:`~scoresolve.RectifiedFlow` (:math:`\tau = \sigma_t`, with its shift deciding how the uniform
    clock ``t`` spreads over :math:`\tau`) and under any other SDE alike. Its minimiser is
    :math:`E[z - x_0 \mid x_\tau]`, the probability-flow velocity; the minimum is
    :math:`E_t\,\mathrm{tr}\,\mathrm{Cov}(z - x_0 \mid x_\tau)/D` per dimension (``reduce="mean"``). It is
    DSM with the weighting :math:`\sigma_t^2(\alpha_t+\sigma_t)^2/\alpha_t^2` (as
    :math:`\hat\varepsilon - \varepsilon = \alpha_t(\hat v - v)/(\alpha_t+\sigma_t)`), computed without
    dividing by :math:`\alpha_t`.

    Args:
        net: the velocity network ``net(x, tau)`` (or a :class:`ScoreModel` with ``parameterization="velocity"``).
        sde: the process (e.g. ``RectifiedFlow()``); ``t`` is drawn uniformly on ``[eps, sde.T]``.
        x0: data batch ``(B, *dims)``.
        reduce: ``"mean"`` or ``"sum"`` over the data dimensions; the batch is always averaged.
        eps: smallest training time.
        generator: source of ``t`` and the noise; ``t``/``noise`` may also be given.
    """
    model = _as_model(net, sde, "velocity")
    if model.parameterization != "velocity":
        raise ValueError(
            f"flow_matching_loss trains a velocity network, got parameterization={model.parameterization!r}"
        )
    t, z, _, xt = _perturb(sde, x0, eps, generator, t, noise)
    v = model.raw(xt, t).to(x0.dtype)
    return _reduce((v - (z - x0)) ** 2, reduce).mean()


def ddpm_schedule(sde: SDE, n_steps: int = 1000) -> tuple[Tensor, Tensor]:
    r"""The DDPM discretisation of a VP SDE: :math:`\beta_i = (\beta_{min} + \tfrac{i}{N-1}(\beta_{max}
    -\beta_{min}))/N`, :math:`\bar\alpha_i = \prod_{j\le i}(1-\beta_j)`, and the continuous times
    :math:`t_i` whose log-SNR equals the discrete one (``sde.t_from_log_snr``) — not ``(i+1)/N``, which
    is off by several percent in noise level at the ends. Returns ``(alphas_cumprod, t)`` in float64."""
    bmin, bmax = getattr(sde, "beta_min", None), getattr(sde, "beta_max", None)
    if bmin is None or bmax is None:
        raise ValueError(f"ddpm_schedule needs a VP-type SDE with beta_min/beta_max, got {sde!r}")
    i = torch.arange(n_steps, dtype=torch.float64)
    betas = (bmin + i / (n_steps - 1) * (bmax - bmin)) / n_steps
    abar = torch.cumprod(1 - betas, 0)
    lam = 0.5 * (torch.log(abar) - torch.log1p(-abar))
    return abar, sde.t_from_log_snr(lam)


def ddpm_loss(
    net: Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    x0: Tensor,
    *,
    n_steps: int = 1000,
    reduce: str = "mean",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Discrete-time DDPM ε-loss (Ho et al. 2020, arXiv:2006.11239, eq. 14):

    .. math:: E_{i\sim U\{0..N-1\}}
              \lVert \hat\varepsilon(\sqrt{\bar\alpha_i}x_0 + \sqrt{1-\bar\alpha_i}z,\ t_i) - z\rVert^2

    on the schedule of :func:`ddpm_schedule`. The network is called with the continuous time
    :math:`t_i` of equal log-SNR, so it can be sampled as ``scoresolve.from_eps(net, sde)`` with any
    continuous-time solver.
    """
    abar, times = ddpm_schedule(sde, n_steps)
    b = x0.shape[0]
    i = torch.randint(n_steps, (b,), generator=generator)
    z = _randn(tuple(x0.shape), x0, generator)
    a = abar[i].to(device=x0.device, dtype=x0.dtype)
    a_ = SDE.bcast(a, x0)
    xt = a_.sqrt() * x0 + (1 - a_).sqrt() * z
    out = net(xt, times[i].to(device=x0.device, dtype=x0.dtype))
    return _reduce((out - z) ** 2, reduce).mean()


def sliced_score_matching_loss(
    net: Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    x0: Tensor,
    *,
    parameterization: str = "score",
    n_projections: int = 1,
    variance_reduction: bool = True,
    noise_type: str = "rademacher",
    eps: float = 1e-5,
    reduce: str = "sum",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Sliced score matching on the perturbed data (Song et al. 2019, arXiv:1905.07088), weighted by
    :math:`\sigma_t^2`:

    .. math:: E\Big[\sigma_t^2\big(v^\top \nabla_x (v^\top s_\theta(x_t, t)) + \tfrac12 (v^\top s_\theta)^2\big)\Big]

    (``variance_reduction=True`` replaces :math:`\tfrac12(v^\top s)^2` by its expectation
    :math:`\tfrac12\lVert s\rVert^2`). It needs no knowledge of the perturbation kernel but one
    Jacobian-vector product per projection (autograd, ``create_graph``), so it suits small problems.
    Its minimum is not zero. ``reduce="mean"`` divides by the dimension.
    """
    if noise_type not in ("rademacher", "gaussian"):
        raise ValueError(f"noise_type must be 'rademacher' or 'gaussian', got {noise_type!r}")
    model = _as_model(net, sde, parameterization)
    b = x0.shape[0]
    d = x0[0].numel()
    t = (eps + _rand(b, x0, generator) * (sde.T - eps)).to(x0.dtype)
    mean, std = sde.marginal(x0, t)
    xt = (mean + SDE.bcast(std, x0) * _randn(tuple(x0.shape), x0, generator)).detach().requires_grad_(True)
    score = model(xt, t)
    total = torch.zeros(b, device=x0.device, dtype=x0.dtype)
    for _ in range(n_projections):
        v = _randn(tuple(x0.shape), x0, generator)
        if noise_type == "rademacher":
            v = v.sign()
        vs = (v * score).reshape(b, -1).sum(-1)
        (grad,) = torch.autograd.grad(vs.sum(), xt, create_graph=True)
        jac = (v * grad).reshape(b, -1).sum(-1)
        second = 0.5 * score.reshape(b, -1).pow(2).sum(-1) if variance_reduction else 0.5 * vs**2
        total = total + jac + second
    per = std**2 * total / n_projections
    if reduce == "mean":
        per = per / d
    elif reduce != "sum":
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    return per.mean()
