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


def test_a_new_solver_joins_every_contract_test_by_registering(request):
    """The one-file solver of docs/contributing.md, registered for this test only, is found by every registry-driven
    test with no list edited: the budget contract here, the order test (tests/test_order.py), the listing, the
    generated solver table (stale until regenerated) and the filters the tests select solvers by."""
    import test_order
    from reference import deterministic_fixed_grid, registered, variants
    from test_docs import _hooks

    hooks = _hooks()
    assert not hooks.stale_pages()
    SOLVERS.register("test_one_file_ddim", description="DDIM (test)")(_OneFileDDIM)
    request.addfinalizer(lambda: SOLVERS.unregister("test_one_file_ddim"))  # registered for this test only
    assert "test_one_file_ddim" in _fixed_grid() and "test_one_file_ddim" in ss.solvers()
    assert ("test_one_file_ddim", {}) in variants(registered(deterministic_fixed_grid))
    assert [p.name for p in hooks.stale_pages()] == ["solvers.md"]  # the generated table now lists it
    _check_budgets("test_one_file_ddim")
    for process in ("vp", "flow"):  # the order test, as it runs for every registered deterministic solver
        slope, errs = test_order.empirical_order("test_one_file_ddim", {}, process)
        assert abs(slope - _OneFileDDIM.order) <= 0.3, (process, slope, errs)
