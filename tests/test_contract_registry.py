"""Contracts every registered fixed-grid solver keeps, found through the registry (no hand-kept list).

For every fixed-grid solver and every final step, ``nfe=K`` spends exactly the evaluations the planner declares,
the most within ``K`` (``K`` itself for a few-step solver unless its last interval is cheaper, EDM's Euler last
step), the samples are finite, and a budget below the minimum is an error naming ``nfe``. A solver defined in one file
(the one docs/contributing.md shows) joins these checks by registering, nothing else.
"""

from __future__ import annotations

import pytest
import torch

import scoresolve as ss
from scoresolve.registry import SOLVERS
from scoresolve.solvers.base import EDMSolver, GridSolver, Step
from scoresolve.solvers.finish import FINALS
from scoresolve.solvers.loop import cost, plan


def _fixed_grid() -> list[str]:
    return [n for n in SOLVERS.names() if isinstance(SOLVERS.get(n), type) and issubclass(SOLVERS.get(n), GridSolver)]


def _check_budgets(name: str) -> None:
    gm = ss.analytic.anisotropic(dim=3, n_components=2, seed=4)
    for sde in (ss.VPSDE(), ss.VESDE(sigma_min=0.01, sigma_max=50.0)):
        model = gm.score_model(sde)
        solver = SOLVERS.get(name)()
        for final in FINALS:
            for k in (1, 2, 3, 6):
                try:
                    n = plan(solver, k, final)
                except ValueError:
                    with pytest.raises(ValueError, match="nfe"):
                        ss.sample(model, sde, solver=name, nfe=k, final=final, shape=(2, 3))
                    continue
                res = ss.sample(model, sde, solver=name, nfe=k, final=final, shape=(4, 3), return_result=True,
                                generator=torch.Generator().manual_seed(k))
                assert res.nfe == cost(solver, n, final, False) <= k, (name, final, k, res.nfe)
                assert k - solver.nfe_per_step < res.nfe, (name, final, k, res.nfe)  # the most within k
                if isinstance(solver, EDMSolver):
                    assert res.nfe == k or solver.nfe_last is not None, (name, final, k, res.nfe)
                assert res.grid.numel() - 1 == n and torch.isfinite(res.samples).all()


@pytest.mark.parametrize("name", _fixed_grid())
def test_budget_and_final_contract(name):
    _check_budgets(name)


class _OneFileDDIM(EDMSolver):
    """The one-file solver of docs/contributing.md."""

    order = 1.0
    nfe_per_step = 1
    reference = "Song et al. 2021, DDIM, arXiv:2010.02502"

    def step(self, ctx, y, iv, state):
        D = ctx.denoise(y, iv.t, iv.sigma, iv.alpha)
        d = (y - D) / iv.sigma
        return Step(y + (iv.sigma_next - iv.sigma) * d, state=state, direction=d)


def test_a_new_solver_joins_the_contract_by_registering(monkeypatch):
    for table in ("_entries", "_descriptions"):  # registered for this test only
        monkeypatch.setattr(SOLVERS, table, dict(getattr(SOLVERS, table)))
    SOLVERS.register("test_one_file_ddim", description="DDIM (test)")(_OneFileDDIM)
    assert "test_one_file_ddim" in _fixed_grid() and "test_one_file_ddim" in ss.solvers()
    _check_budgets("test_one_file_ddim")
    # and it is a first-order solver of the PF-ODE: halving the step about halves the error
    gm, sde = ss.analytic.anisotropic(dim=3, n_components=2, seed=4), ss.VPSDE()
    model = gm.score_model(sde)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = ss.sample(model, sde, solver="ipndm", nfe=400, x_T=x_T)
    err = [float((ss.sample(model, sde, solver="test_one_file_ddim", nfe=k, x_T=x_T) - ref).pow(2).mean().sqrt())
           for k in (100, 200)]
    assert 1.6 < err[0] / err[1] < 2.4, err
