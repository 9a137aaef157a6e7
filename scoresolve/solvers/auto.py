r"""``solver="auto"``: the best measured few-step deterministic sampler for a given budget.

What it runs (measured on the digits mixture under VP, ``benchmarks/fewstep.py``, docs/fast_samplers.md):
iPNDM — 4th-order Adams–Bashforth on the denoiser direction with iPNDM's fixed coefficients, order
ramping 1→4 — on a grid **calibrated for this model, solver and budget** (the solver's own endpoint
error against a fine teacher, in the data's local metric; :func:`scoresolve.calibrate.calibrate_grid`),
ending with a step to :math:`\tilde\sigma = 0` that uses the evaluation at ``eps``
(``last_step="zero"``). Calibration runs once per (model, SDE, budget, shape) in a process (in-memory
cache keyed by the model's fingerprint) or once ever with ``calibrate="file.json"``; its cost is reported
in ``SampleResult.info["calibration"]`` and is not counted in the sampling NFE.

``steps=K`` spends exactly ``K`` evaluations (``K >= 2``: ``K - 1`` grid intervals and the jump to 0).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from torch import Tensor

from ..registry import SOLVERS
from .base import SolveContext
from .ipndm import IPNDM

__all__ = ["AutoSolver"]


@SOLVERS.register("auto", description="best measured few-step choice: iPNDM on a calibrated grid, step to 0")
class AutoSolver(IPNDM):
    """The one-word few-step sampler (see the module docstring for what it runs and why).

    Args:
        calibrate: ``True`` (default): calibrate the grid at the first call (in-memory cache);
            a path: cache the calibrated grid in that JSON file; ``False``: no calibration, Karras grid.
    """

    reference = "Zhang & Chen 2023, iPNDM, arXiv:2204.13902; grid calibration: this package"
    default_grid: ClassVar[str] = "karras"

    def __init__(self, calibrate: bool | str | os.PathLike[str] = True) -> None:
        super().__init__(order=4, variable=False, last_step="zero", calibrate=calibrate)

    def steps_to_grid(self, steps: int) -> int:
        if isinstance(steps, int) and not isinstance(steps, bool) and steps == 1:
            raise ValueError(
                "steps=1 is too small for solver='auto' (it spends one evaluation at eps for the final step to "
                "sigma=0 and needs >= 2); with a single evaluation use solver='ipndm', last_step='none'"
            )
        return super().steps_to_grid(steps)

    def solve(self, ctx: SolveContext, x: Tensor) -> Tensor:
        ctx.info["auto"] = {"solver": "ipndm", "variable": False, "order": 4, "last_step": "zero",
                            "grid": "calibrated" if self.calibrate else "default"}
        ctx.info["last_step"] = self.last_step
        return super().solve(ctx, x)

    def config(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "order": self.order, "variable": self.variable,
                "last_step": self.last_step}
