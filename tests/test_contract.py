"""The solver contract, checked for every solver in the registry (no hand-kept list).

Every registered solver x VE / VP / sub-VP x budgets x score outputs rounded to float16, bfloat16,
float32 and float64 (the state stays float32):

- a finite score never gives a non-finite sample: the run returns finite samples, or raises a clear
  error (``ValueError``/``TypeError`` for an unsupported combination such as a budget too small for the
  solver, :class:`NonFiniteScoreError` naming the model when the rounded score itself overflowed);
- with ``seeds=`` a sample does not depend on its batch;
- a solver that declares itself deterministic (``stochastic`` false) runs from ``x_T`` with no noise source at all
  (:func:`scoresolve.sample` builds none), to the seeded run's sample on a fixed grid;
- the NFE is exact: a fixed-grid solver spends what the planner declares for its grid and final step
  (:func:`scoresolve.solvers.loop.cost`), within ``nfe=`` for a solver that takes an evaluation budget
  (``steps=`` grid intervals for the others); adaptive solvers report per-sample counts that add up.

Budgets 1, 2, 5 run by default (tiny problem: 2-D, 3 samples); 10, 50, 1000 (fixed-grid solvers, where
it is cheap) and the slow ``auto`` solver (which calibrates) run under ``-m slow``.
"""

from __future__ import annotations

import pytest
import torch

import scoresolve as ss
from scoresolve.noise import NoiseSource
from scoresolve.registry import SOLVERS
from scoresolve.sampling import resolve_solver
from scoresolve.solvers.base import GridSolver, NonFiniteScoreError, Solver
from scoresolve.solvers.loop import cost

SDES = {"ve": ss.VESDE, "vp": ss.VPSDE, "subvp": ss.SubVPSDE}
SCORE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SLOW_SOLVERS = {"auto"}  # calibrates its grid: a minute per SDE on 2 cores


def _solver_params() -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SOLVERS else n for n in SOLVERS.names()]


def _model(sde: ss.SDE, dtype: torch.dtype) -> ss.ScoreModel:
    mix = ss.analytic.grid2d(n=2)
    return ss.ScoreModel(lambda x, t: mix.score(x, t, sde).to(dtype), sde, sample_shape=(2,))


def _expected_nfe(solver: Solver, res: ss.SampleResult) -> int | None:
    if not isinstance(solver, GridSolver):
        return None
    return cost(solver, res.grid.numel() - 1, solver.default_final, False)


def _budget(solver: Solver, name: str, steps: int) -> dict[str, int]:
    if solver.adaptive:
        return {}
    return {"nfe": steps} if name == "auto" or getattr(solver, "budgeted", False) else {"steps": steps}


def _run(name: str, sde_key: str, steps: int) -> None:
    sde = SDES[sde_key]()
    for dtype in SCORE_DTYPES:
        model = _model(sde, dtype)
        solver = resolve_solver(name, {})
        kw = _budget(solver, name, steps)
        try:
            res = ss.sample(model, sde, name, shape=(3, 2), seeds=[0, 1, 2], return_result=True, **kw)
        except NonFiniteScoreError as e:  # only for a score that overflowed its own dtype
            assert e.culprit == "model" and dtype in (torch.float16, torch.bfloat16), (name, dtype, str(e))
            continue
        except (ValueError, TypeError) as e:  # an unsupported combination: a clear error naming the argument
            assert any(w in str(e) for w in ("steps", "budget", "nfe")), (name, steps, str(e))
            return
        assert torch.isfinite(res.samples).all(), (name, sde_key, steps, dtype)
        want = _expected_nfe(solver, res)
        if want is not None:
            assert res.nfe == want, (name, sde_key, steps, dtype, res.nfe, want)
            assert "nfe" not in kw or res.nfe <= steps, (name, sde_key, steps, res.nfe)
        elif solver.adaptive:
            per = res.info.get("nfe_per_sample")
            assert per is not None and int(torch.as_tensor(per).max()) <= res.nfe
        if dtype is torch.float32:  # seeds=: the same sample alone as in the batch
            alone = ss.sample(model, sde, name, shape=(1, 2), seeds=[1], **kw)
            tol = 1e-5 * (1 + float(res.samples[1].abs().max()))
            assert (res.samples[1] - alone[0]).abs().max() <= tol, (name, sde_key, steps)
            if not solver.stochastic:  # the seeded run's prior sample as x_T, and no generator or seeds
                z = NoiseSource(seeds=[0, 1, 2]).randn((3, 2), device=torch.device("cpu"), dtype=dtype)
                x_T = z * sde.prior_std
                plain = ss.sample(model, sde, name, x_T=x_T, **kw)
                if isinstance(solver, GridSolver):  # adaptive ones control the step per sample only with seeds
                    assert (plain - res.samples).abs().max() <= 1e-5 * (1 + float(res.samples.abs().max())), name
                assert torch.isfinite(plain).all(), name
        if solver.adaptive:
            return  # no budget to vary


@pytest.mark.parametrize("sde_key", list(SDES))
@pytest.mark.parametrize("name", _solver_params())
def test_solver_contract_small_budgets(name: str, sde_key: str) -> None:
    for steps in (1, 2, 5):
        _run(name, sde_key, steps)


@pytest.mark.slow
@pytest.mark.parametrize("sde_key", list(SDES))
@pytest.mark.parametrize("name", _solver_params())
def test_solver_contract_budgets_10_50_1000(name: str, sde_key: str) -> None:
    for steps in (10, 50):
        _run(name, sde_key, steps)
    if not resolve_solver(name, {}).adaptive and name not in SLOW_SOLVERS:
        _run(name, sde_key, 1000)
