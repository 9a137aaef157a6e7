r"""The predictor–corrector sampler of Song et al. 2021 (arXiv:2011.13456, Algorithm 1)."""

from __future__ import annotations

from typing import Any

from .._util import check_float, check_int
from ..registry import CORRECTORS, PREDICTORS, SOLVERS
from .base import GridSolver, Interval, SolveContext, Step
from .correctors import Corrector
from .predictors import Predictor

__all__ = ["PredictorCorrector"]


@SOLVERS.register("pc", description="predictor-corrector sampler of Song et al. 2021 (predictor=, corrector=, snr=)")
class PredictorCorrector(GridSolver):
    r"""Predictor–corrector sampling (Song et al. 2021, Algorithms 1–3).

    On a grid :math:`T = t_0 > t_1 > \dots > t_N = \epsilon` each step runs the predictor from
    :math:`t_i` to :math:`t_{i+1}`, then ``n_corrector_steps`` corrector steps at :math:`t_{i+1}`
    (predictor first, as in the paper's algorithms; the released code runs the corrector first,
    so its corrector never touches the final sample).

    NFE per step: ``predictor.nfe + n_corrector_steps`` (1 + 1 at the defaults).
    Stochastic; strong order 1/2 with Euler–Maruyama.

    Args:
        predictor: a registered predictor name (``euler_maruyama``, ``reverse_diffusion``,
            ``ancestral_sampling``, ``none``) or a :class:`Predictor` instance.
        corrector: a registered corrector name (``langevin``, ``annealed_langevin``, ``none``)
            or a :class:`Corrector` instance.
        snr: the corrector's signal-to-noise ratio :math:`r`. The paper's configurations use
            0.16 for CIFAR-10 (VE and VP), 0.17 for CelebA, 0.075 for LSUN, 0.15 for FFHQ 1024².
        n_corrector_steps: corrector steps per predictor step (the paper's ``n_steps_each``, 1).
    """

    order = 0.5
    stochastic = True
    reference = "Song et al. 2021, Score-Based Generative Modeling through SDEs, arXiv:2011.13456"

    def __init__(
        self,
        predictor: str | Predictor = "reverse_diffusion",
        corrector: str | Corrector = "langevin",
        snr: float = 0.16,
        n_corrector_steps: int = 1,
    ) -> None:
        pred = PREDICTORS.get(predictor, argument="predictor")
        corr = CORRECTORS.get(corrector, argument="corrector")
        self.predictor: Predictor = pred() if isinstance(pred, type) else pred
        self.corrector: Corrector = corr() if isinstance(corr, type) else corr
        self.snr = check_float(snr, "snr", positive=False)
        check_int(n_corrector_steps, "n_corrector_steps", min=0)
        self.n_corrector_steps = n_corrector_steps
        if self.predictor.nfe == 0 and (not self.corrector.uses_score or n_corrector_steps == 0):
            raise ValueError("predictor='none' with no corrector steps would never call the model")

    @property
    def nfe_per_step(self) -> int:  # type: ignore[override]
        return self.predictor.nfe + (self.n_corrector_steps if self.corrector.uses_score else 0)

    def step(self, ctx: SolveContext, x, iv: Interval, state: Any) -> Step:
        t, t_next = ctx.t(iv.i, x), ctx.t(iv.i + 1, x)
        x, x_mean = self.predictor(ctx.score, ctx.sde, x, t, t_next, ctx.noise)
        if self.n_corrector_steps:
            x, x_mean_c = self.corrector(ctx.score, ctx.sde, x, t_next, t, ctx.noise, self.snr, self.n_corrector_steps)
            if self.corrector.uses_score:
                x_mean = x_mean_c
        return Step(x, x_mean, state)
