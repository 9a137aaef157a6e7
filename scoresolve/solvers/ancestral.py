r"""Ancestral and singlestep-SDE samplers of k-diffusion, for any linear SDE (EDM variables, see
:mod:`scoresolve.solvers.karras`).

An *ancestral* step from :math:`\sigma_i` to :math:`\sigma_{i+1}` first solves the probability-flow ODE
down to :math:`\sigma_{down}` and then adds fresh noise of standard deviation :math:`\sigma_{up}`:

.. math::  \sigma_{up} = \min\Big(\sigma_{i+1},\ \eta\,\sigma_{i+1}\sqrt{1 - \sigma_{i+1}^2/\sigma_i^2}\Big),
           \qquad \sigma_{down} = \sqrt{\sigma_{i+1}^2 - \sigma_{up}^2}.

With :math:`\eta = 1` and an Euler step this is the DDPM posterior step (Ho et al. 2020, arXiv:2006.11239); with
:math:`\eta \in [0, 1]` it is DDIM's (Song, Meng, Ermon 2021, arXiv:2010.02502, eq. 12 in :math:`y = x/\alpha`).
``euler_ancestral`` (1 evaluation per step), ``dpm_2_ancestral`` (2, midpoint in :math:`\log\sigma`),
``dpmpp_2s_ancestral`` (2, DPM-Solver++(2S)) and ``dpmpp_sde`` (2, stage at ratio ``r``) have strong order 1;
``lcm`` (1) jumps to :math:`D` and renoises to :math:`\sigma_{i+1}` (consistency models, arXiv:2303.01469). The
run ends with ``final="tweedie"`` (:mod:`scoresolve.solvers.finish`), k-diffusion's noise-free last Euler step."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from torch import Tensor

from .._util import check_float
from ..registry import SOLVERS
from .base import Interval, SolveContext, Step
from .karras import SigmaStepSolver, denoise_at_sigma

__all__ = [
    "ancestral_step",
    "EulerAncestral",
    "DPM2Ancestral",
    "DPMSolverPP2SAncestral",
    "DPMSolverPPSDE",
    "ConsistencySampler",
]


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    r"""``(sigma_down, sigma_up)`` of an ancestral step (module docstring); ``eta=0`` gives ``(sigma_next, 0)``."""
    if eta == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


class _Ancestral(SigmaStepSolver):
    """An ODE step to ``sigma_down`` plus noise ``sigma_up`` (see the module docstring)."""

    stochastic: ClassVar[bool] = True
    order: ClassVar[float] = 1.0

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0) -> None:
        self.eta = check_float(eta, "eta", positive=False)
        self.s_noise = check_float(s_noise, "s_noise", positive=False)
        self.stochastic = self.eta > 0  # type: ignore[misc]

    def step(self, ctx: SolveContext, y: Tensor, iv: Interval, state: Any) -> Step:
        s = iv.sigma
        D = denoise_at_sigma(ctx, y, s, iv.t)
        s_down, s_up = ancestral_step(s, iv.sigma_next, self.eta)
        y_mean = self.ode_step(ctx, y, D, s, s_down)
        d = (y - D) / s
        if s_up == 0:
            return Step(y_mean, direction=d)
        return Step(y_mean + (self.s_noise * s_up) * ctx.noise.randn_like(y), y_mean, direction=d)

    def ode_step(self, ctx: SolveContext, y: Tensor, D: Tensor, s: float, s_down: float) -> Tensor:
        raise NotImplementedError  # pragma: no cover


@SOLVERS.register("euler_ancestral", description="k-diffusion Euler ancestral (eta=1: DDPM; eta: DDIM's eta)")
class EulerAncestral(_Ancestral):
    r"""Euler ancestral sampling (k-diffusion's ``sample_euler_ancestral``, diffusers'
    ``EulerAncestralDiscreteScheduler``; "Euler a"): :math:`y \leftarrow D + \sigma_{down}(y - D)/\sigma
    + s_{noise}\sigma_{up} z`. This is DDIM with :math:`\eta` (Song et al. 2021, arXiv:2010.02502) and
    DDPM's ancestral step for :math:`\eta = 1` (Ho et al. 2020, arXiv:2006.11239). One evaluation per step;
    strong order 1 (order 1 and deterministic for ``eta=0``).

    Args:
        eta: noise fraction (1: ancestral/DDPM, 0: deterministic DDIM = ``euler``).
        s_noise: scale of the added noise.
    """

    nfe_per_step: ClassVar[int] = 1
    reference: ClassVar[str] = "Song, Meng, Ermon 2021, Denoising Diffusion Implicit Models, arXiv:2010.02502"

    def ode_step(self, ctx, y, D, s, s_down):
        return y + (s_down - s) * ((y - D) / s)


@SOLVERS.register("dpm_2_ancestral", description="k-diffusion DPM-2 ancestral: log-sigma midpoint step plus noise")
class DPM2Ancestral(_Ancestral):
    r"""k-diffusion's ``sample_dpm_2_ancestral`` (diffusers' ``KDPM2AncestralDiscreteScheduler``): the DPM-2
    midpoint step (:class:`~scoresolve.solvers.karras.DPM2Solver`, Lu et al. 2022, arXiv:2206.00927) down to
    :math:`\sigma_{down}`, then noise :math:`\sigma_{up}`. Two evaluations per step; strong order 1. Args as
    :class:`EulerAncestral`.
    """

    nfe_per_step: ClassVar[int] = 2
    reference: ClassVar[str] = "Lu et al. 2022, DPM-Solver, arXiv:2206.00927 (k-diffusion's ancestral variant)"

    def ode_step(self, ctx, y, D, s, s_down):
        d = (y - D) / s
        if s_down == 0:
            return y - s * d
        s_mid = math.sqrt(s * s_down)
        y2 = y + (s_mid - s) * d
        d2 = (y2 - denoise_at_sigma(ctx, y2, s_mid)) / s_mid
        return y + (s_down - s) * d2


@SOLVERS.register(
    "dpmpp_2s_ancestral", description="k-diffusion DPM-Solver++(2S) ancestral: 2-stage log-SNR step plus noise"
)
class DPMSolverPP2SAncestral(_Ancestral):
    r"""DPM-Solver++(2S) (Lu et al. 2022, arXiv:2211.01095, Algorithm 1 with :math:`r = 1/2`) to
    :math:`\sigma_{down}`, then noise :math:`\sigma_{up}` (k-diffusion's ``sample_dpmpp_2s_ancestral``).
    With :math:`h = \log(\sigma/\sigma_{down})`, :math:`\sigma_m = \sqrt{\sigma\sigma_{down}}`:

    :math:`u = (\sigma_m/\sigma) y + (1 - e^{-h/2}) D`, :math:`y \leftarrow (\sigma_{down}/\sigma) y
    + (1 - e^{-h}) D(u, \sigma_m)`. Two evaluations per step; strong order 1 (order 2 for ``eta=0``).
    Args as :class:`EulerAncestral`.
    """

    nfe_per_step: ClassVar[int] = 2
    reference: ClassVar[str] = "Lu et al. 2022, DPM-Solver++, arXiv:2211.01095"

    def ode_step(self, ctx, y, D, s, s_down):
        if s_down == 0:
            return D
        h = math.log(s / s_down)
        s_mid = math.sqrt(s * s_down)
        u = (s_mid / s) * y - math.expm1(-0.5 * h) * D
        D2 = denoise_at_sigma(ctx, u, s_mid)
        return (s_down / s) * y - math.expm1(-h) * D2


@SOLVERS.register("dpmpp_sde", description="k-diffusion DPM++ SDE: 2-stage stochastic DPM-Solver++, Brownian noise")
class DPMSolverPPSDE(_Ancestral):
    r"""k-diffusion's ``sample_dpmpp_sde`` ("DPM++ SDE"; diffusers' ``DPMSolverSDEScheduler``): a two-stage
    DPM-Solver++ step (Lu et al. 2022, arXiv:2211.01095) in which each stage is ancestral.

    With :math:`\lambda = -\log\sigma`, :math:`h = \lambda_{i+1} - \lambda_i`, the stage at
    :math:`\lambda_s = \lambda_i + r h`: an ancestral DPM-Solver++(1) step to :math:`\sigma_s`
    (noise :math:`z_1`), then :math:`D_2 = D(u, \sigma_s)`, and an ancestral step from :math:`\sigma_i` to
    :math:`\sigma_{i+1}` with :math:`(1 - \tfrac1{2r}) D + \tfrac1{2r} D_2` (noise :math:`z_2`). The two
    noises are the normalised increments of one Brownian motion in :math:`\sigma` over
    :math:`[\sigma_s, \sigma_i]` and :math:`[\sigma_{i+1}, \sigma_i]`, as k-diffusion's Brownian-tree noise
    gives them (correlated, :math:`\mathrm{corr} = \sqrt{(\sigma_i - \sigma_s)/(\sigma_i - \sigma_{i+1})}`).
    Two evaluations per step; strong order 1 (order 2 with ``eta=0``).

    Args:
        eta: noise fraction of each ancestral stage (1 default, 0 deterministic).
        s_noise: scale of the added noise.
        r: position of the stage in log-SNR (k-diffusion's default 1/2).
    """

    nfe_per_step: ClassVar[int] = 2
    reference: ClassVar[str] = "Lu et al. 2022, DPM-Solver++, arXiv:2211.01095"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5) -> None:
        super().__init__(eta, s_noise)
        self.r = check_float(r, "r")

    def step(self, ctx: SolveContext, y: Tensor, iv: Interval, state: Any) -> Step:
        s, s_next = iv.sigma, iv.sigma_next
        D = denoise_at_sigma(ctx, y, s, iv.t)
        h = math.log(s / s_next)
        s_stage = s * math.exp(-self.r * h)
        # stage 1: ancestral DPM-Solver++(1) to sigma_stage
        sd, su = ancestral_step(s, s_stage, self.eta)
        u = (sd / s) * y + (1.0 - sd / s) * D
        z1 = ctx.noise.randn_like(y) if su > 0 else None
        if z1 is not None:
            u = u + (self.s_noise * su) * z1
        D2 = denoise_at_sigma(ctx, u, s_stage)
        # stage 2: ancestral step from sigma to sigma_next with the combined data prediction
        fac = 1.0 / (2.0 * self.r)
        sd, su = ancestral_step(s, s_next, self.eta)
        y_mean = (sd / s) * y + (1.0 - sd / s) * ((1.0 - fac) * D + fac * D2)
        if su == 0:
            return Step(y_mean, direction=(y - D) / s)
        z2 = ctx.noise.randn_like(y)
        if z1 is not None:  # the Brownian increment over [sigma_next, sigma] contains the one over [sigma_stage, sigma]
            w1, w2 = s - s_stage, s_stage - s_next
            z2 = (math.sqrt(w1) * z1 + math.sqrt(w2) * z2) / math.sqrt(w1 + w2)
        return Step(y_mean + (self.s_noise * su) * z2, y_mean, direction=(y - D) / s)


@SOLVERS.register("lcm", description="multistep consistency sampling (LCM): jump to D, renoise to the next sigma")
class ConsistencySampler(SigmaStepSolver):
    r"""Multistep consistency sampling (Song, Dhariwal, Chen, Sutskever 2023, arXiv:2303.01469, Algorithm 1;
    the "LCM" sampler of latent consistency models, Luo et al. 2023, arXiv:2310.04378): every step evaluates
    the model once, jumps to its data prediction and adds fresh noise of the next level,
    :math:`y_{i+1} = D(y_i, \sigma_i) + \sigma_{i+1} z` (``euler_ancestral`` with :math:`\sigma_{down} = 0`).
    Meant for consistency / LCM-distilled models, whose :math:`D` is a one-step generator; with an ordinary
    denoiser it does not converge as the grid is refined (no ``order``). One evaluation per step; stochastic.

    Args:
        s_noise: scale of the added noise.
    """

    order: ClassVar[float] = 0.0
    nfe_per_step: ClassVar[int] = 1
    stochastic: ClassVar[bool] = True
    reference: ClassVar[str] = "Song et al. 2023, Consistency Models, arXiv:2303.01469 (Algorithm 1)"

    def __init__(self, s_noise: float = 1.0) -> None:
        self.s_noise = check_float(s_noise, "s_noise", positive=False)

    def step(self, ctx: SolveContext, y: Tensor, iv: Interval, state: Any) -> Step:
        D = denoise_at_sigma(ctx, y, iv.sigma, iv.t)
        return Step(D + (self.s_noise * iv.sigma_next) * ctx.noise.randn_like(y), D, direction=(y - D) / iv.sigma)
