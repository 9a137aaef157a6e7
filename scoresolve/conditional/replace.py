r"""The paper's inpainting by replacement (Song et al. 2021, arXiv:2011.13456, App. I.2), with every
fixed-grid solver.

After each predictor step and each corrector step (or after each step of any other fixed-grid
solver) the observed coordinates are overwritten with a fresh draw of the forward-perturbed
observation at the new time,

.. math:: x_{t,o} \leftarrow \alpha_t y_o + \sigma_t z, \qquad z \sim N(0, I)

(noise level :math:`\nu`: :math:`\alpha_t y_o + (\sigma_t^2-\alpha_t^2\nu^2)^{1/2} z` once
:math:`\sigma_t/\alpha_t \ge \nu`); the missing coordinates follow the unconditional reverse dynamics.
Cost: that of the unconditional solver. **Not** consistent for :math:`p(x_m \mid x_o = y)`: the missing block
is driven by :math:`\nabla \log p_t(x_t)` at one random draw of :math:`x_{t,o}`, not by
:math:`\nabla \log p_t(x_t \mid y)` (figures: docs/conditional.md). Kept as the paper's baseline; use
``method="smc"`` for the right posterior.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..solvers.base import GridSolver, Interval, SolveContext, Solver, Step
from ..solvers.pc import PredictorCorrector
from ._common import Observation

__all__ = ["ReplacementSolver"]


class ReplacementSolver(GridSolver):
    """Wrap a fixed-grid solver so that the observed coordinates are replaced after every update.

    With the ``pc`` solver the replacement follows the predictor and each corrector step (as in the
    paper's ``get_pc_inpainter``, which uses the pre-step time; here the value is drawn at the time
    the update lands on). Any other :class:`GridSolver` is replaced after each of its steps.

    NFE per step: the wrapped solver's.
    """

    stochastic = True
    reference = "Song et al. 2021, arXiv:2011.13456, Appendix I.2 (imputation by replacement)"

    def __init__(self, inner: Solver, obs: Observation) -> None:
        if not isinstance(inner, GridSolver) or inner.variables != "x":
            raise ValueError(
                f"method='replace' needs a fixed-grid solver in x (a GridSolver such as 'pc'); "
                f"{type(inner).__name__} " + ("chooses its own steps" if not isinstance(inner, GridSolver)
                                              else "works in the EDM variables")
            )
        self.inner = inner
        self.obs = obs
        self.default_grid = inner.default_grid  # type: ignore[misc]
        self.default_final = inner.default_final  # type: ignore[misc]
        self.default_steps = inner.default_steps  # type: ignore[misc]
        self.order = inner.order  # type: ignore[misc]

    @property
    def nfe_per_step(self) -> int:  # type: ignore[override]
        return self.inner.nfe_per_step

    def _replace(self, ctx: SolveContext, x: Tensor, x_mean: Tensor, t: float) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        xf, mf = x.reshape(n, -1), x_mean.reshape(n, -1)
        m = self.obs.mask_at(ctx.sde, t)
        z = ctx.noise.randn_like(x).reshape(n, -1)
        v = self.obs.marginal_at(ctx.sde, t, z)
        xf = torch.where(m, v, xf)
        mf = torch.where(m, self.obs.mean_at(ctx.sde, t), mf)
        return xf.reshape(x.shape), mf.reshape(x.shape)

    def step(self, ctx: SolveContext, x: Tensor, iv: Interval, state: Any) -> Step:
        assert ctx.grid is not None
        i, t_next = iv.i, iv.t_next
        if i == 0:  # the prior sample's observed coordinates first
            x, _ = self._replace(ctx, x, x, iv.t)
        pc = self.inner
        if isinstance(pc, PredictorCorrector):
            t, tn = ctx.t(i, x), ctx.t(i + 1, x)
            x, x_mean = pc.predictor(ctx.score, ctx.sde, x, t, tn, ctx.noise)
            x, x_mean = self._replace(ctx, x, x_mean, t_next)
            if pc.n_corrector_steps and pc.corrector.uses_score:
                for _ in range(pc.n_corrector_steps):
                    x, x_mean = pc.corrector(ctx.score, ctx.sde, x, tn, t, ctx.noise, pc.snr, 1)
                    x, x_mean = self._replace(ctx, x, x_mean, t_next)
            return Step(x, x_mean, state)
        st = self.inner.step(ctx, x, iv, state)
        x, x_mean = self._replace(ctx, st.x, st.x if st.x_mean is None else st.x_mean, t_next)
        return Step(x, x_mean, st.state)
