r"""Predictors of the predictor–corrector sampler (Song et al. 2021, arXiv:2011.13456, Sec. 4.2).

A predictor advances the reverse-time SDE by one grid step from ``t`` to ``t_next < t`` and returns
``(x_next, x_mean)``, where ``x_mean`` is the update without its noise. It uses only the SDE's methods
(:meth:`~scoresolve.sde.SDE.reverse_drift`, :meth:`~scoresolve.sde.SDE.discretize`,
:meth:`~scoresolve.sde.SDE.transition`), never its type.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..models import score_to_x0
from ..noise import NoiseSource
from ..registry import PREDICTORS
from ..sde import SDE
from .base import CountedScore

__all__ = ["Predictor", "EulerMaruyama", "ReverseDiffusion", "AncestralSampling", "NonePredictor"]


class Predictor:
    """Base class: one reverse-time step. ``nfe`` score evaluations per call."""

    nfe: ClassVar[int] = 1
    stochastic: ClassVar[bool] = True

    def __call__(
        self, score: CountedScore, sde: SDE, x: Tensor, t: Tensor, t_next: Tensor, noise: NoiseSource
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


@PREDICTORS.register("euler_maruyama")
class EulerMaruyama(Predictor):
    r"""Euler–Maruyama on the reverse SDE: strong order 1/2 (weak order 1).

    :math:`\bar x = x + [f(x,t) - g(t)^2 s(x,t)]\,\Delta t`, :math:`x' = \bar x + g(t)\sqrt{|\Delta t|}\,z`,
    with :math:`\Delta t = t_{next} - t < 0` (Song et al. 2021, App. D).
    """

    def __call__(self, score, sde, x, t, t_next, noise):
        s = score(x, t)
        dt = SDE.bcast(t_next - t, x)
        x_mean = x + sde.reverse_drift(x, t, s) * dt
        g = SDE.bcast(sde.diffusion(t), x)
        return x_mean + g * torch.sqrt(-dt) * noise.randn_like(x), x_mean


@PREDICTORS.register("reverse_diffusion")
class ReverseDiffusion(Predictor):
    r"""Reverse diffusion (Song et al. 2021, eq. 46): reverse the discretised forward step
    :math:`x_t = x_s + f + G z` (:meth:`SDE.discretize`):
    :math:`\bar x = x - f + G^2 s(x, t)`, :math:`x' = \bar x + G z`."""

    def __call__(self, score, sde, x, t, t_next, noise):
        f, G = sde.discretize(x, t, t_next)
        s = score(x, t)
        G = SDE.bcast(G, x)
        x_mean = x - f + G**2 * s
        return x_mean + G * noise.randn_like(x), x_mean


@PREDICTORS.register("ancestral_sampling")
class AncestralSampling(Predictor):
    r"""Ancestral sampling: draw :math:`x_s` from the Gaussian posterior
    :math:`q(x_s \mid x_t, \hat x_0)` of the forward process, with :math:`\hat x_0` Tweedie's estimate.

    With the transition :math:`x_t \mid x_s \sim N(a x_s, b^2)` (:meth:`SDE.transition`):
    mean :math:`\tfrac{b^2}{\sigma_t^2}\alpha_s \hat x_0 + \tfrac{a\sigma_s^2}{\sigma_t^2} x_t`,
    std :math:`\sigma_s b / \sigma_t`. For VE this is exactly the SMLD sampler of the paper
    (mean :math:`x + (\sigma_t^2-\sigma_s^2)s`); for VP its mean is DDPM's (Ho et al. 2020,
    arXiv:2006.11239) and its variance DDPM's :math:`\tilde\beta` choice (the paper's code uses
    :math:`\beta`; Ho et al. report both give similar samples).
    """

    def __call__(self, score, sde, x, t, t_next, noise):
        s = score(x, t)
        x0 = score_to_x0(s, x, t, sde)
        a, b = sde.transition(t, t_next)
        sig_t, sig_s = sde.marginal_std(t), sde.marginal_std(t_next)
        c0 = b**2 / sig_t**2 * sde.alpha(t_next)
        ct = a * sig_s**2 / sig_t**2
        x_mean = SDE.bcast(c0, x) * x0 + SDE.bcast(ct, x) * x
        std = SDE.bcast(sig_s * b / sig_t, x)
        return x_mean + std * noise.randn_like(x), x_mean


@PREDICTORS.register("none")
class NonePredictor(Predictor):
    """No predictor: the state is left unchanged (corrector-only sampling, e.g. NCSN's annealed
    Langevin dynamics)."""

    nfe = 0
    stochastic = False

    def __call__(self, score, sde, x, t, t_next, noise):
        return x, x
