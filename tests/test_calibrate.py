"""Calibrated grids: improvement on independent noise, determinism, cache file and fingerprint errors, GITS."""

from __future__ import annotations

import functools

import pytest
import torch

import scoresolve as ss
from scoresolve.calibrate import (
    CalibratedGrid,
    CalibrationMismatchError,
    calibrate_grid,
    gits_grid,
    teacher_solution,
)
from scoresolve.solvers.grids import make_grid
from scoresolve.solvers.ipndm import IPNDM

SHAPE = (4,)


@functools.cache
def _problem():
    gm = ss.analytic.anisotropic(dim=4, n_components=3, seed=2)
    sde = ss.VPSDE()
    return gm, sde, (lambda x, t: gm.score(x, t, sde))


@functools.cache
def _calibrated(steps=4, last_step="none", seed=0):
    gm, sde, score = _problem()
    return calibrate_grid(score, sde, IPNDM(), steps, final=last_step, shape=SHAPE, n_samples=64, seed=seed,
                          max_evals=60, teacher_steps=100)


def _heldout_rmse(grid, last_step="none"):
    gm, sde, score = _problem()
    x_T = sde.prior_sample((256, 4), generator=torch.Generator().manual_seed(777), dtype=torch.float64)
    ref, _ = teacher_solution(score, sde, x_T, sde.default_eps, to_zero=last_step != "none", steps=100)
    out = ss.sample(score, sde, solver="ipndm", grid=grid, x_T=x_T, final=last_step)
    return (out - ref).pow(2).mean().sqrt().item()


def test_calibration_improves_on_independent_noise():
    gm, sde, score = _problem()
    cg = _calibrated()
    assert cg.rmse < cg.rmse_initial
    assert cg.nfe > 0 and cg.seconds > 0 and len(cg.times) == 5
    base = min(_heldout_rmse(make_grid(n, sde, 4, sde.default_eps)) for n in ("log_snr", "karras"))
    tuned = _heldout_rmse(cg.grid)
    assert tuned < 0.8 * base, (tuned, base)


def test_deterministic_given_seed_and_seed_matters():
    gm, sde, score = _problem()
    a = calibrate_grid(score, sde, "ipndm", 3, shape=SHAPE, n_samples=32, seed=5, max_evals=20, teacher_steps=60)
    b = calibrate_grid(score, sde, "ipndm", 3, shape=SHAPE, n_samples=32, seed=5, max_evals=20, teacher_steps=60)
    c = calibrate_grid(score, sde, "ipndm", 3, shape=SHAPE, n_samples=32, seed=6, max_evals=20, teacher_steps=60)
    assert a.times == b.times
    assert a.times != c.times


def test_cache_round_trip_and_mismatch_errors(tmp_path):
    gm, sde, score = _problem()
    path = tmp_path / "grid.json"
    cg = calibrate_grid(score, sde, "ipndm", 3, shape=SHAPE, n_samples=32, max_evals=20, teacher_steps=60, cache=path)
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    again = calibrate_grid(score, sde, "ipndm", 3, shape=SHAPE, n_samples=32, max_evals=20, teacher_steps=60,
                           cache=path)
    assert again.times == cg.times and CalibratedGrid.load(path).times == cg.times
    other = ss.analytic.anisotropic(dim=4, n_components=3, seed=3)
    with pytest.raises(CalibrationMismatchError, match="model"):
        calibrate_grid(lambda x, t: other.score(x, t, sde), sde, "ipndm", 3, shape=SHAPE, cache=path)
    with pytest.raises(CalibrationMismatchError, match="sde"):
        calibrate_grid(lambda x, t: gm.score(x, t, ss.SubVPSDE()), ss.SubVPSDE(), "ipndm", 3, shape=SHAPE, cache=path)
    with pytest.raises(CalibrationMismatchError, match="solver"):
        calibrate_grid(score, sde, "dpmpp_2m", 3, shape=SHAPE, cache=path)
    with pytest.raises(CalibrationMismatchError, match="steps"):
        calibrate_grid(score, sde, "ipndm", 4, shape=SHAPE, cache=path)
    # the same file through sample(): the solver option
    x = ss.sample(score, sde, solver="ipndm", nfe=3, shape=(8, 4), calibrate=str(path), return_result=True)
    assert x.nfe == 3 and x.info["calibration"]["cached"]
    assert torch.allclose(x.grid, cg.grid)


def test_sample_with_calibrate_reports_cost_separately():
    gm, sde, score = _problem()
    res = ss.sample(score, sde, solver="ipndm", nfe=3, shape=(16, 4), calibrate=True, return_result=True,
                    generator=torch.Generator().manual_seed(0), final="zero")
    assert res.nfe == 3  # sampling evaluations only
    cal = res.info["calibration"]
    assert cal["nfe"] > 100 and cal["rmse"] <= cal["rmse_initial"]
    assert res.grid.numel() == 3  # 2 intervals + the jump to sigma = 0


def test_gits_grid():
    gm, sde, score = _problem()
    grid, info = gits_grid(score, sde, 4, shape=SHAPE, n_samples=32, fine=40)
    assert grid.shape == (5,) and (grid[1:] < grid[:-1]).all()
    assert grid[0] == sde.T and abs(float(grid[-1]) - sde.default_eps) < 1e-12
    assert info["nfe"] > 0
    with pytest.raises(ValueError, match="steps"):
        gits_grid(score, sde, 50, shape=SHAPE, fine=40)


def test_auto_solver(tmp_path):
    gm, sde, score = _problem()
    from scoresolve.recipes import auto_recipe

    with pytest.raises(ValueError, match="nfe=1"):
        ss.sample(score, sde, solver="auto", nfe=1, shape=(2, 4))
    for k in (2, 5, 9):
        res = ss.sample(score, sde, solver="auto", nfe=k, shape=(8, 4), calibrate=False, return_result=True)
        assert res.nfe == k and torch.isfinite(res.samples).all()
    # the old word: steps= is read as the budget, with a DeprecationWarning
    with pytest.warns(DeprecationWarning, match="nfe=5"):
        old = ss.sample(score, sde, solver="auto", steps=5, shape=(8, 4), calibrate=False, return_result=True)
    assert old.nfe == 5
    # a calibrated grid made once (small search) and used by solver="auto" through its cache file
    path = tmp_path / "auto5.json"
    r = auto_recipe(5, gaussian=True)
    cg = calibrate_grid(score, sde, r.instance, 5, final=r.final, gaussian_prior="estimate", shape=SHAPE,
                        cache=path, **{**r.calibration, "n_samples": 32, "max_evals": 30, "teacher_steps": 60})
    res = ss.sample(score, sde, solver="auto", nfe=5, shape=(8, 4),
                    calibrate={"cache": str(path), "n_samples": 32, "max_evals": 30, "teacher_steps": 60},
                    return_result=True)
    assert res.nfe == 5 and res.info["calibration"]["cached"] and torch.allclose(res.grid, cg.grid)
    assert res.info["auto"]["final"] == "tweedie" and res.info["auto"]["class"] == "IPNDM"
    assert res.info["auto"]["gaussian_prior"] == "estimate" and res.grid.numel() == 6  # K intervals, first analytical
    assert auto_recipe(10, gaussian=True).solver.__name__ == "UniPC"


def test_logp_metric_and_options():
    """metric='logp' (RMSE optimum, then the estimated log-density gap under an RMSE cap): its RMSE on
    the calibration batch stays within the cap of the RMSE-calibrated grid's, bad options are named."""
    gm, sde, score = _problem()
    kw = dict(shape=SHAPE, n_samples=64, max_evals=40, teacher_steps=60)
    base = calibrate_grid(score, sde, IPNDM(), 4, final="zero", metric="rmse", **kw)
    cg = calibrate_grid(score, sde, IPNDM(), 4, final="zero", metric="logp", logp_cap=1.25, fd_weight=4.0, **kw)
    assert cg.solver["calibrate_metric"] == "logp" and len(cg.times) == 4  # K - 1 intervals + the jump to 0
    x_T = sde.prior_sample((64, 4), generator=torch.Generator().manual_seed(0x0CA11B00), dtype=torch.float64)
    ref, _ = teacher_solution(score, sde, x_T, sde.default_eps, to_zero=True, steps=60)
    err = {}
    for name, g in (("rmse", base), ("logp", cg)):
        out = ss.sample(score, sde, solver="ipndm", grid=g.grid, x_T=x_T, final="zero")
        err[name] = (out - ref).pow(2).mean().sqrt().item()
    assert err["logp"] <= 1.25 * 1.25 * err["rmse"] + 1e-9, err  # cap x stage-1 optimum (itself <= the RMSE-only one)
    with pytest.raises(ValueError, match="metric"):
        calibrate_grid(score, sde, IPNDM(), 4, metric="fd", **kw)
    with pytest.raises(ValueError, match="logp_tol"):
        calibrate_grid(score, sde, IPNDM(), 4, metric="logp", logp_tol=0, **kw)


def test_gaussian_prior_estimate_through_calibration(tmp_path):
    """gaussian_prior='estimate': the moments come from the calibration batch (one extra evaluation),
    are stored in the cache file and reused from it; sampling still spends exactly K evaluations."""
    gm, sde, score = _problem()
    path = tmp_path / "est.json"
    solver = IPNDM(variable=False)
    kw = dict(final="tweedie", gaussian_prior="estimate", return_result=True,
              calibrate={"cache": str(path), "n_samples": 64, "max_evals": 30, "teacher_steps": 60})
    res = ss.sample(score, sde, solver=solver, nfe=4, shape=(16, 4), generator=torch.Generator().manual_seed(0), **kw)
    assert res.nfe == 4 and res.grid.numel() == 5 and torch.isfinite(res.samples).all()
    cg = CalibratedGrid.load(path)
    rec = cg.extra["gaussian_prior"]
    assert rec["kind"] in ("isotropic", "shrunk") and set(rec["objective"]) == {"isotropic", "shrunk"}
    mean, _ = gm.moments()
    assert torch.allclose(torch.tensor(rec["mean"], dtype=torch.float64), mean.reshape(-1), atol=0.1)
    assert cg.solver["gaussian_prior"] == "estimate"
    res2 = ss.sample(score, sde, solver=solver, nfe=4, shape=(16, 4), generator=torch.Generator().manual_seed(0), **kw)
    assert res2.info["calibration"]["cached"] and torch.equal(res2.samples, res.samples)
    with pytest.raises(ValueError, match="calibrate=True"):
        ss.sample(score, sde, solver="ipndm", nfe=4, shape=(4, 4), gaussian_prior="estimate")
    with pytest.raises(ValueError, match="gaussian_prior"):
        ss.sample(score, sde, solver="ipndm", nfe=4, shape=(4, 4), gaussian_prior="guess")


def test_auto_uses_the_gaussian_first_step_outside_7_to_15():
    from scoresolve.recipes import auto_recipe

    r = auto_recipe(5, gaussian=True)
    assert r.gaussian and r.calibration["metric"] == "logp" and r.final == "tweedie"
    assert not auto_recipe(10, gaussian=True).gaussian and auto_recipe(20, gaussian=True).gaussian
    assert not auto_recipe(5, gaussian=False).gaussian and auto_recipe(5, gaussian=False).final == "zero"
    gm, sde, score = _problem()
    mean, cov = gm.moments()
    for k, gp, n in ((5, (mean, cov), 5), (10, (mean, cov), 9), (20, (mean, cov), 20), (20, None, 19)):
        res = ss.sample(score, sde, solver="auto", nfe=k, shape=(2, 4), calibrate=False, gaussian_prior=gp,
                        return_result=True)
        assert res.nfe == k and res.grid.numel() - 1 == n
    # nothing to estimate the moments from without calibration: a plain first step
    assert ss.sample(score, sde, solver="auto", nfe=5, shape=(2, 4), calibrate=False,
                     return_result=True).info["auto"]["gaussian_prior"] is None


def test_auto_does_not_calibrate_large_budgets():
    """Above CALIBRATED_MAX evaluations auto runs uncalibrated iPNDM on the log-SNR grid: no calibration
    cost, exact budget."""
    from scoresolve.recipes import AUTO

    CALIBRATED_MAX = max(r.hi for r in AUTO if r.calibration is not None)

    gm, sde = ss.analytic.anisotropic(dim=4, n_components=3, seed=1), ss.VPSDE()
    for k in (CALIBRATED_MAX + 1, 200):
        r = ss.sample(gm.score_model(sde), sde, solver="auto", nfe=k, shape=(8, 4), return_result=True,
                      generator=torch.Generator().manual_seed(0))
        assert r.nfe == k and "calibration" not in r.info and r.info["auto"]["class"] == "IPNDM"
        torch.testing.assert_close(r.grid, make_grid("log_snr", sde, k - 1, sde.default_eps).to(r.grid))
        assert torch.isfinite(r.samples).all()


def test_calibration_cache_owned_by_the_caller():
    """A CalibrationCache the caller passes holds the grid (not the process default); the model is checked by
    its signature on every lookup."""
    from scoresolve.calibrate import DEFAULT_CACHE, CalibrationCache

    gm, sde, score = _problem()
    mine = CalibrationCache()
    before = len(DEFAULT_CACHE)
    opts = {"cache": mine, "n_samples": 16, "max_evals": 10, "teacher_steps": 30}
    a = ss.sample(score, sde, solver="ipndm", nfe=3, shape=(4, 4), calibrate=opts, return_result=True,
                  generator=torch.Generator().manual_seed(0))
    b = ss.sample(score, sde, solver="ipndm", nfe=3, shape=(4, 4), calibrate=opts, return_result=True,
                  generator=torch.Generator().manual_seed(0))
    assert not a.info["calibration"]["cached"] and b.info["calibration"]["cached"] and b.info["calibration"]["nfe"] == 3
    assert len(mine) == 1 and len(DEFAULT_CACHE) == before and torch.equal(a.samples, b.samples)
    other = ss.analytic.anisotropic(dim=4, n_components=3, seed=9)
    c = ss.sample(lambda x, t: other.score(x, t, sde), sde, solver="ipndm", nfe=3, shape=(4, 4), calibrate=opts,
                  return_result=True)
    assert not c.info["calibration"]["cached"]  # another model: its signature differs
