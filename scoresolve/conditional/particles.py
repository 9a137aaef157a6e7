r"""Asymptotically exact conditional sampling with particles (after SMCDiff, Trippe et al. 2022, arXiv:2206.04119).

One forward-noised path of the observation is drawn on the grid (each coordinate pinned at :math:`\alpha y` where
it enters, :meth:`Observation.path`). Each output gets its own system of ``K`` particles, which move by the model's
Gaussian reverse kernel :math:`N(\mu(x_t), s^2 I)` with the observed block pinned to the path, are weighted by the
kernel's density of the next observed value (a fully adapted filter) and resampled (systematic) when the ESS falls
below ``ess_threshold · K``; one particle per system is drawn from the final weights and denoised (Tweedie).
``info["log_z"]`` estimates :math:`\log p(y) = \log p(\text{path}) - \log q(\text{path} \mid y)`.
``exact_variance``: weights with the exact transition's variance :math:`s^2 + c_0^2\,\mathrm{Var}(x_0 \mid x_t)`
(second-order Tweedie from one probe). ``twist``: a guided proposal and twisted weights after TDS (Wu et al. 2023,
arXiv:2306.17775), :math:`\psi(x_t) = \exp(-\lVert y - \hat x_{0,o}(x_t)\rVert^2 / 2v)`, from one Hessian-vector
product of the score (a finite difference). ``refine``: Metropolis-adjusted Langevin moves on each output's free
block at the last time (:mod:`.refine`). Cost: ``n·(K·steps + 1 + refine)`` score evaluations, ``2·K·steps`` with
``exact_variance`` or ``twist`` (or both). Derivations and measured figures: docs/conditional.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._util import check_int, one_of
from ..models import score_to_x0
from ..noise import NoiseSource
from ..progress import Progress
from ..sampling import SampleResult
from ..sde import SDE
from ..solvers.base import CountedScore
from ._common import Observation, rand
from .refine import mala_refine, path_anchor

__all__ = ["smc_inpaint", "KERNELS", "systematic_resample"]

KERNELS = ("ancestral", "reverse_diffusion", "euler_maruyama")
_FD_STEP = 1e-2  # forward-difference step of the score, relative to sigma_t


def _t(v: float) -> Tensor:
    return torch.tensor(v, dtype=torch.float64)


def kernel_coefficients(sde: SDE, kernel: str, t: float, t_next: float) -> tuple[float, float, float]:
    r"""The reverse kernel from ``t`` to ``t_next`` as :math:`N(c_x x + c_s s(x, t),\ \mathrm{std}^2 I)`.

    Returns ``(c_x, c_s, std)`` as floats (computed in float64).
    """
    tt, ts = _t(t), _t(t_next)
    if kernel == "ancestral":
        a, b = sde.transition(tt, ts)
        sig_t, sig_s = sde.marginal_std(tt), sde.marginal_std(ts)
        alpha_t, alpha_s = sde.alpha(tt), sde.alpha(ts)
        c0 = b**2 / sig_t**2 * alpha_s  # coefficient of x0_hat = (x + sig_t^2 s) / alpha_t
        ct = a * sig_s**2 / sig_t**2
        c_x = ct + c0 / alpha_t
        c_s = c0 * sig_t**2 / alpha_t
        std = sig_s * b / sig_t
    elif kernel == "reverse_diffusion":
        a, b = sde.transition(tt, ts)
        c_x = 2.0 - a  # x - f with f = (a - 1) x
        c_s = b**2
        std = b
    else:  # euler_maruyama
        dt = ts - tt
        h, g = sde.drift_coef(tt), sde.diffusion(tt)
        c_x = 1.0 + h * dt
        c_s = -(g**2) * dt
        std = g * torch.sqrt(-dt)
    return float(c_x), float(c_s), float(std)


def ancestral_x0_gain(sde: SDE, t: float, t_next: float) -> float:
    r"""The ancestral kernel's :math:`c_0^2 \sigma_t^2/\alpha_t^2`: the exact reverse transition's variance is
    :math:`s_i^2 + c_0^2\,\mathrm{Var}(x_0 \mid x_t)` with :math:`\mathrm{Var}(x_0 \mid x_t) =
    \sigma_t^2/\alpha_t^2\,(1 + \sigma_t^2 \partial_x s)` (second-order Tweedie), so this times the bracket."""
    tt, ts = _t(t), _t(t_next)
    _, b = sde.transition(tt, ts)
    sig_t, alpha_t, alpha_s = sde.marginal_std(tt), sde.alpha(tt), sde.alpha(ts)
    c0 = b**2 / sig_t**2 * alpha_s
    return float(c0**2 * sig_t**2 / alpha_t**2)


def systematic_resample(logw: Tensor, generator: torch.Generator | None) -> Tensor:
    """Systematic resampling of each row of normalised log-weights ``(n, K)`` → ancestor indices ``(n, K)``.

    One uniform per row from ``generator``; rows are independent.
    """
    n, k = logw.shape
    w = torch.softmax(logw.to(torch.float64), dim=1)
    cdf = torch.cumsum(w, dim=1)
    cdf[:, -1] = 1.0
    u = (rand((n, 1), generator, logw.device, torch.float64) + torch.arange(k, device=logw.device)) / k
    return torch.searchsorted(cdf, u).clamp_(max=k - 1)


def smc_inpaint(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    obs: Observation,
    times: Tensor,
    *,
    particles: int = 64,
    kernel: str = "ancestral",
    ess_threshold: float = 0.1,
    exact_variance: bool = False,
    twist: bool = False,
    refine: int = 0,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    return_result: bool = False,
    progress: bool | None = None,
) -> Tensor | SampleResult:
    """Run ``n`` independent particle systems (see the module docstring) on the grid ``times``;
    ``progress``: a tqdm bar over the steps (:mod:`scoresolve.progress`)."""
    kernel = one_of(kernel, KERNELS, "kernel")
    for name, flag in (("exact_variance", exact_variance), ("twist", twist)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    check_int(refine, "refine", min=0)
    fix = bool(exact_variance) and kernel == "ancestral"
    thr = float(ess_threshold)
    if not 0.0 <= thr <= 1.0:
        raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold!r}")
    n, d, k = obs.n, obs.dim, particles
    ev = obs.event_shape
    dev, dt = obs.y.device, obs.y.dtype
    noise = NoiseSource(generator=generator, device=dev)
    counted = CountedScore(score_fn)
    n_int = times.numel() - 1
    bar = Progress(n_int, f"conditional sampling (SMC, {k} particles x {n})", progress=progress)
    f64 = torch.float64

    with torch.no_grad():
        y_path, m_path, log_q = obs.path(sde, times, noise)  # (N+1, n, d), (n,)

        def rep(v: Tensor) -> Tensor:
            return v.repeat_interleave(k, 0)

        x = noise.randn((n * k, d), device=dev, dtype=dt) * sde.prior_std
        x = torch.where(rep(m_path[0]), rep(y_path[0]), x)
        logw = torch.full((n, k), -math.log(k), device=dev, dtype=f64)
        log_z = torch.zeros(n, device=dev, dtype=f64)
        n_resampled = torch.zeros(n, device=dev, dtype=torch.long)
        ess_min = torch.full((n,), float(k), device=dev, dtype=f64)
        arange_k = torch.arange(k, device=dev)
        log2pi = math.log(2 * math.pi)
        # twist: log p(y_{t_i} | x_{t_{i-1}}) and log psi_{i-1}(x_{t_{i-1}}) carried by each particle
        pending = torch.zeros(n * k, device=dev, dtype=f64)
        lpsi_prev = torch.zeros(n * k, device=dev, dtype=f64)
        y_end = rep(obs.y.to(f64))
        nu_end2 = rep(torch.clamp(obs.nu.to(f64), min=float(sde.sigma(_t(float(times[-1]))))) ** 2)

        rows = 0  # score evaluations of single samples

        def reweight(lw: Tensor) -> None:
            nonlocal logw, log_z, ess_min
            new = logw + lw.view(n, k)
            lse = torch.logsumexp(new, dim=1, keepdim=True)
            log_z += lse[:, 0]  # logw stays normalised, so this is log of the mean incremental weight
            logw = new - lse
            ess_min = torch.minimum(ess_min, 1.0 / torch.exp(2 * logw).sum(1))

        for i in range(n_int):
            t, t_next = float(times[i]), float(times[i + 1])
            counted.step = i
            s = counted(x.reshape(n * k, *ev), torch.full((n * k,), t, device=dev, dtype=dt)).reshape(n * k, d)
            c_x, c_s, std = kernel_coefficients(sde, kernel, t, t_next)
            mean = c_x * x + c_s * s
            m_next, y_next = rep(m_path[i + 1]), rep(y_path[i + 1])
            r = torch.where(m_next, y_next - mean, torch.zeros((), device=dev, dtype=dt)).to(f64)
            n_obs = m_next.sum(1).to(f64)
            rows += n * k
            if twist and bool(m_next.any()):
                lpsi, g, bracket = _twist(counted, sde, x, s, t, m_next, y_end, nu_end2, ev)
                rows += n * k
            elif twist:  # nothing left to observe (noisy coordinates below their t*): psi = 1
                lpsi, g, bracket = torch.zeros_like(pending), torch.zeros_like(x, dtype=f64), torch.ones_like(x)
            elif fix:
                bracket = _x0_var_bracket(counted, x, s, t, float(sde.marginal_std(_t(t))), m_next, ev, generator)
                rows += n * k
            if fix:
                var = (std**2 + ancestral_x0_gain(sde, t, t_next) * bracket).to(f64)
                var = torch.where(m_next, var, torch.ones((), device=dev, dtype=f64))
                lw = -0.5 * (r.pow(2) / var + torch.log(var)).sum(1) - n_obs * 0.5 * log2pi
            else:
                lw = -0.5 * r.pow(2).sum(1) / std**2 - n_obs * (math.log(std) + 0.5 * log2pi)
            if twist:  # weight p(y_i | x_{i-1}) psi_i(x_i) / psi_{i-1}(x_{i-1}); p(y_{i+1} | x_i) waits a step
                lw, pending, lpsi_prev = pending + lpsi - lpsi_prev, lw, lpsi
                mean = mean + (std**2 * g).to(dt)
            reweight(lw)
            need = 1.0 / torch.exp(2 * logw).sum(1) < thr * k
            mean = mean.view(n, k, d)
            # the uniforms are drawn every step, so one system's decisions never shift another's noise
            idx = systematic_resample(logw, generator)
            if bool(need.any()):
                idx = torch.where(need[:, None], idx, arange_k)
                mean = torch.gather(mean, 1, idx[:, :, None].expand(n, k, d))
                if twist:
                    g = torch.gather(g.view(n, k, d), 1, idx[:, :, None].expand(n, k, d)).reshape(n * k, d)
                    pending = torch.gather(pending.view(n, k), 1, idx).reshape(n * k)
                    lpsi_prev = torch.gather(lpsi_prev.view(n, k), 1, idx).reshape(n * k)
                logw = torch.where(need[:, None], torch.full_like(logw, -math.log(k)), logw)
                n_resampled += need.long()
            z = noise.randn((n * k, d), device=dev, dtype=dt)
            x = mean.reshape(n * k, d) + std * z
            if twist:  # the proposal's correction N(x'; mu, s^2) / N(x'; mu + s^2 g, s^2)
                pending = pending - std * (g * z.to(f64)).sum(1) - 0.5 * std**2 * g.pow(2).sum(1)
            x = torch.where(m_next, y_next, x)
            bar.update(1)
        if twist:
            reweight(pending - lpsi_prev)  # psi_N = 1: nothing is left to observe

        # one output per system, drawn from its final weights
        pick = torch.multinomial(torch.exp(logw).float().cpu(), 1, generator=_cpu_gen(generator)).to(dev)[:, 0]
        out = x.view(n, k, d)[torch.arange(n, device=dev), pick]
        t_end = float(times[-1])
        te = torch.full((n,), t_end, device=dev, dtype=dt)
        counted.step = n_int
        s_out = None
        accept = None
        if refine:  # MALA on each output's free block at t_N (one evaluation per output and move)

            def score_end(xx: Tensor) -> Tensor:
                return counted(xx.reshape(n, *ev), te).reshape(n, d)

            s_out = score_end(out)
            sig_end = float(sde.marginal_std(_t(t_end)))
            out, s_out, accept = mala_refine(score_end, out, s_out, ~m_path[-1], refine, sig_end**2, noise, generator,
                                             path_anchor(sde, times, y_path, m_path))
            rows += n * refine + (0 if denoise else n)
        if denoise:
            xe = out.reshape(n, *ev)
            s_out = counted(xe, te) if s_out is None else s_out.reshape(n, *ev)
            out = score_to_x0(s_out, xe, te, sde).reshape(n, d)
        exact = obs.mask & (obs.nu == 0)
        out = torch.where(exact, obs.y, out)
        counted.check()
        # log p(y) = log p(path) - log q(path | y); p(path) = N(y_{t_0}; 0, prior^2) * (the filter's Z)
        y0, m0 = y_path[0].to(f64), m_path[0]
        ps = float(sde.prior_std)
        log_prior = torch.where(m0, -0.5 * (y0 / ps) ** 2 - math.log(ps) - 0.5 * log2pi, torch.zeros_like(y0)).sum(1)
        log_evidence = log_z + log_prior - log_q
    rows += n if denoise else 0
    bar.close(evaluations=counted.nfe, score_rows=rows)
    samples = out.reshape(n, *ev)
    if not return_result:
        return samples
    info: dict[str, Any] = {
        "method": "smc",
        "particles": k,
        "kernel": kernel,
        "score_rows": rows,
        "log_z": log_evidence,
        "ess_min": ess_min,
        "n_resampled": n_resampled,
    }
    if accept is not None:
        info["refine_accept"] = accept
    return SampleResult(samples=samples, nfe=counted.nfe, grid=times, info=info)


def _twist(counted: CountedScore, sde: SDE, x: Tensor, s: Tensor, t: float, mask: Tensor, y: Tensor, nu2: Tensor,
           ev: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    r"""TDS-style twist at ``x_t`` from one extra score evaluation: the forward difference of the score along
    the residual's direction ``u`` gives :math:`H u` (``H = ∂s/∂x``, symmetric). Returns :math:`\log\psi`, the
    proposal's shift direction :math:`\nabla_{x_m}\log\psi = (\sigma_t^2/\alpha_t)(H\,r/v)_m` and the bracket
    :math:`1 + \sigma_t^2 u^\top H u`, with :math:`\psi = \exp(-\lVert r\rVert^2/2v)`, :math:`r = y - \hat x_{0,o}`
    (Tweedie) and :math:`v = \sigma_t^2/\alpha_t^2\cdot\text{bracket} + \nu^2`: the variance of :math:`x_0 \mid x_t`
    along the residual plus the observation's noise."""
    f64, zero = torch.float64, torch.zeros((), device=x.device, dtype=torch.float64)
    tt = _t(t)
    sig, alpha = float(sde.marginal_std(tt)), float(sde.alpha(tt))
    res = torch.where(mask, y - ((x + sig**2 * s) / alpha).to(f64), zero)
    rn = res.norm(dim=1, keepdim=True)
    u = res / rn.clamp(min=1e-300)
    h = _FD_STEP * sig
    hu = _score_step(counted, x, s, t, u.to(x.dtype), h, ev).to(f64) / h
    bracket = (1.0 + sig**2 * (torch.where(mask, hu, zero) * u).sum(1, keepdim=True)).clamp(min=1e-4, max=4.0)
    v = (sig / alpha) ** 2 * bracket + nu2
    lpsi = torch.where(mask, -0.5 * res.pow(2) / v, zero).sum(1)
    vbar = torch.where(mask, v, zero).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
    g = torch.where(mask | (rn == 0), zero, sig**2 / alpha * hu * rn / vbar.clamp(min=1e-300))
    return lpsi, g, bracket.expand_as(res)


def _x0_var_bracket(counted: CountedScore, x: Tensor, s: Tensor, t: float, sig: float, mask: Tensor,
                    ev: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    r""":math:`\max(0, 1 + \sigma_t^2 \partial_{x_c} s_c)` on the coordinates ``mask``, from one Rademacher probe
    :math:`v` on them and a forward difference of the score (one extra evaluation per row): :math:`v_c (J v)_c`
    is unbiased for :math:`J_{cc}` (Hutchinson's diagonal estimator)."""
    v = torch.where(mask, 2.0 * (rand(x.shape, generator, x.device, x.dtype) < 0.5).to(x.dtype) - 1.0,
                    torch.zeros((), device=x.device, dtype=x.dtype))
    h = _FD_STEP * sig
    jv = _score_step(counted, x, s, t, v, h, ev) / h
    return torch.clamp(1.0 + sig**2 * v * jv, min=0.0)


def _score_step(counted: CountedScore, x: Tensor, s: Tensor, t: float, direction: Tensor, h: float,
                ev: tuple[int, ...]) -> Tensor:
    """``s(x + h·direction, t) − s(x, t)`` from one evaluation per row (``s`` is the score at ``x``): divided by
    ``h``, the forward-difference product of the score's Jacobian with ``direction``."""
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
    return counted((x + h * direction).reshape(x.shape[0], *ev), tt).reshape(x.shape) - s


def _cpu_gen(generator: torch.Generator | None) -> torch.Generator | None:
    """torch.multinomial on CPU probabilities needs a CPU generator: draw a seed from an accelerator one."""
    if generator is None or generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return torch.Generator().manual_seed(seed)
