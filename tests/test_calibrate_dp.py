"""The trajectory calibration (scoresolve.calibrate_dp): teacher against the closed form, the dynamic programme
against exhaustive search, the weights-keyed file cache, the budget and the fallback of solver="auto"."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import scoresolve as ss
from scoresolve.calibrate import CalibrationMismatchError
from scoresolve.calibrate_dp import (
    calibrate_trajectory,
    check_budget,
    choose,
    dp_path,
    local_costs,
    moment_mismatch,
    paired_margin,
    teacher_trajectories,
)
from scoresolve.recipes import NETWORK, trajectory_candidates
from scoresolve.solvers.ipndm import IPNDM

SMALL = {"fine": 12, "n_fit": 16, "n_holdout": 16}


class GaussianScore(torch.nn.Module):
    """Exact score of N(mean, var I) data under ``sde`` (a network in form: its weights are its parameters)."""

    def __init__(self, sde, mean, var):
        super().__init__()
        self.sde = sde
        self.mean = torch.nn.Parameter(torch.as_tensor(mean, dtype=torch.float64))
        self.logvar = torch.nn.Parameter(torch.tensor(math.log(var), dtype=torch.float64))

    def forward(self, x, t):
        a = self.sde.alpha(t.double()).reshape(-1, 1)
        s = self.sde.sigma(t.double()).reshape(-1, 1) * a  # marginal std
        v = a * a * self.logvar.exp() + s * s
        return (-(x.double() - a * self.mean) / v).to(x.dtype)


def _model(var=0.3, dim=4):
    sde = ss.VPSDE()
    net = GaussianScore(sde, torch.linspace(-0.5, 0.5, dim), var)
    return ss.ScoreModel(net, sde=sde, sample_shape=(dim,), parameterization="score"), net


def test_teacher_states_follow_the_closed_form_gaussian_flow():
    """For N(m, c I) data the PF-ODE in y = x/alpha is y(s) - m = (y_T - m) sqrt((c + s^2)/(c + s_T^2))."""
    model, net = _model(var=0.3)
    sde = model.sde
    x_T = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tr = teacher_trajectories(net, sde, x_T, sde.default_eps, fine=10, sub=4)
    s = sde.sigma(tr.times)
    m = net.mean.detach()
    y_T = tr.ys[0]
    exact = m + (y_T - m) * torch.sqrt((0.3 + s * s) / (0.3 + s[0] ** 2)).reshape(-1, 1, 1)
    assert tr.nfe == 10 * 4 + 1 and tr.ys.shape == (11, 8, 4) and tr.scores.shape == (11, 8, 4)
    assert float((tr.ys - exact).abs().max()) < 1e-3 * float(exact.abs().max())


def test_dp_path_is_the_least_cost_path_of_exhaustive_search():
    torch.manual_seed(1)
    m = 7
    c0 = torch.rand(m + 1).double()
    c = torch.rand(m + 1, m + 1, m + 1).double()
    for n in (1, 2, 3, 5):
        path = dp_path(c0, c, n)

        def total(nodes):
            return float(c0[nodes[1]]) + sum(float(c[nodes[k - 1], nodes[k], nodes[k + 1]])
                                             for k in range(1, len(nodes) - 1))
        best = min(total([0, *inner, m]) for inner in itertools.combinations(range(1, m), n - 1))
        assert path[0] == 0 and path[-1] == m and len(path) == n + 1
        assert total(path) == pytest.approx(best, rel=1e-12)
    with pytest.raises(ValueError, match="intervals"):
        dp_path(c0, c, m + 1)


def test_local_costs_vanish_where_the_solver_is_exact():
    """For Gaussian data the first-order step on d = (y - D)/sigma is not exact, but as the step shrinks its error
    falls as the square of the step (order 1): the cost of the shortest jump is far below the longest."""
    model, net = _model()
    sde = model.sde
    x_T = torch.randn(16, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    tr = teacher_trajectories(net, sde, x_T, sde.default_eps, fine=12, sub=4)
    c0, c = local_costs(IPNDM(order=1), sde, tr, 16)
    assert torch.isfinite(c0[1:]).all() and math.isinf(float(c0[0]))
    assert float(c[0, 1, 2]) < float(c[0, 1, 12]) and float(c[3, 4, 5]) < 1e-3 * float(c[3, 4, 12])


def test_cache_is_keyed_by_the_weights_and_loads_in_a_new_process(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORESOLVE_CALIBRATION_CACHE", str(tmp_path))
    model, net = _model()
    kw = dict(shape=(4,), eps=model.sde.default_eps, budget=None, default="dpmpp_2m@analytic", **SMALL)  # as auto
    cands = trajectory_candidates()
    cg, info = calibrate_trajectory(model, net, model.sde, cands, 5, **kw)
    assert not info["cached"] and info["nfe"] > 12 and info["seconds"] > 0 and len(os.listdir(tmp_path)) == 1
    moments = cg.extra["heldout_moments"]  # the held-out winner by distribution, fixed grids included
    assert moments[cg.extra["choice"]["best"]] == min(moments.values()) and cg.rmse == cg.extra["heldout_rmse"][cg.init]
    assert cg.init == "dpmpp_2m@analytic" or cg.extra["choice"]["replaced"]
    assert {"ipndm@karras", "unipc@log_snr", "dpmpp_2m@fitted1"} <= set(moments) == set(cg.extra["heldout_rmse"])
    cg2, info2 = calibrate_trajectory(model, net, model.sde, cands, 5, **kw)
    assert info2["cached"] and cg2.times == cg.times
    with torch.no_grad():
        net.logvar += 0.5  # other weights: another file, a new calibration
    cg3, info3 = calibrate_trajectory(model, net, model.sde, cands, 5, **kw)
    assert not info3["cached"] and len(os.listdir(tmp_path)) == 2
    with torch.no_grad():
        net.logvar -= 0.5
    # a new process with a model of the same weights (built anew) loads the file
    code = (
        "import json, torch, scoresolve as ss\n"
        "from tests.test_calibrate_dp import _model, SMALL\n"
        "m, net = _model()\n"
        "r = ss.sample(m, solver='auto', nfe=5, batch_size=3, generator=torch.Generator().manual_seed(0),\n"
        "             calibrate=dict(SMALL), calibration_budget=1e9, return_result=True)\n"
        "print(json.dumps({'cached': r.info['calibration']['cached'], 'grid': r.grid.tolist()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["cached"] and got["grid"] == pytest.approx(cg.times, abs=0)


def test_auto_on_a_network_uses_the_trajectory_calibration_and_its_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORESOLVE_CALIBRATION_CACHE", str(tmp_path))
    model, _ = _model()
    r = ss.sample(model, solver="auto", nfe=6, batch_size=4, generator=torch.Generator().manual_seed(0),
                  calibrate=dict(SMALL), return_result=True)
    cal = r.info["calibration"]
    assert cal["method"] == "trajectory-dp" and cal["fallback"] is None and r.nfe == 6
    name = cal["choice"].split("@")[0]
    assert r.info["auto"]["name"] == name and cal["rmse"] == cal["heldout_rmse"][cal["choice"]]
    test, moments = cal["test"], cal["heldout_moments"]
    assert test["default"] == "dpmpp_2m@analytic" and test["best"] == min(moments, key=moments.get)
    if test["replaced"]:  # only by a candidate clearly better than the uncalibrated recipe
        d, se = test["margins"][cal["choice"]]
        assert d < -test["z"] * se and moments[cal["choice"]] < moments[test["default"]]
    else:
        assert cal["choice"] == test["default"]
    assert torch.isfinite(r.samples).all()


def test_auto_on_a_network_from_10_evaluations_runs_its_recipe_uncalibrated_unless_asked(tmp_path, monkeypatch):
    """From 10 evaluations on a network the row of NETWORK runs as it is (no teacher, no cache file), says so in
    info, and gives the same samples as that solver on that grid; calibrate={"method": "trajectory"} still fits."""
    monkeypatch.setenv("SCORESOLVE_CALIBRATION_CACHE", str(tmp_path))
    model, _ = _model()
    x_T = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    for nfe, grid in ((10, "analytic"), (20, "karras")):
        r = ss.sample(model, solver="auto", nfe=nfe, x_T=x_T, return_result=True)
        cal = r.info["calibration"]
        assert cal["method"] is None and cal["nfe"] == 0 and "not calibrated" in cal["fallback"] and r.nfe == nfe
        fixed = ss.sample(model, solver="dpmpp_2m", nfe=nfe, grid=grid, final="none", x_T=x_T)
        assert torch.equal(r.samples, fixed) and not os.listdir(tmp_path)
    r = ss.sample(model, solver="auto", nfe=10, x_T=x_T, calibrate={"method": "trajectory", **SMALL},
                  return_result=True)
    assert r.info["calibration"]["method"] == "trajectory-dp" and r.info["calibration"]["test"]["default"]


def test_a_network_wrapped_in_a_closure_is_recognised_as_a_network(tmp_path, monkeypatch):
    """A plain function that calls a network (as the diffusers and k-diffusion adapters build) holds weights:
    auto calibrates it from trajectories, not by re-simulation."""
    monkeypatch.setenv("SCORESOLVE_CALIBRATION_CACHE", str(tmp_path))
    _, net = _model()
    model = ss.ScoreModel(lambda x, t: net(x, t), sde=net.sde, sample_shape=(4,), parameterization="score")
    r = ss.sample(model, solver="auto", nfe=6, batch_size=4, generator=torch.Generator().manual_seed(0),
                  calibrate=dict(SMALL), return_result=True)
    assert r.info["calibration"]["method"] == "trajectory-dp"


def test_auto_falls_back_when_the_budget_cannot_pay(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORESOLVE_CALIBRATION_CACHE", str(tmp_path))
    model, _ = _model()
    r = ss.sample(model, solver="auto", nfe=5, batch_size=4, generator=torch.Generator().manual_seed(0),
                  calibration_budget={"evaluations": 20}, return_result=True)
    cal = r.info["calibration"]
    assert "cannot pay" in cal["fallback"] and cal["nfe"] == 2 and r.nfe == 5
    assert r.info["auto"]["class"] == NETWORK[0].solver.__name__ and not os.listdir(tmp_path)
    # with enough evaluations the same call calibrates, within them
    r2 = ss.sample(model, solver="auto", nfe=5, batch_size=4, generator=torch.Generator().manual_seed(0),
                   calibrate=dict(SMALL), calibration_budget={"evaluations": 400}, return_result=True)
    assert r2.info["calibration"]["fallback"] is None and r2.info["calibration"]["nfe"] <= 400


def test_calibration_budget_is_validated():
    assert check_budget(30) == (30.0, None) and check_budget({"evaluations": 100}) == (None, 100)
    for bad in (0, -1, "60", {"minutes": 1}, {"evaluations": 1.5}, True):
        with pytest.raises(ValueError, match="calibration_budget"):
            check_budget(bad)
    model, _ = _model()
    with pytest.raises(ValueError, match="calibration_budget"):
        ss.sample(model, solver="dpmpp_2m", nfe=5, batch_size=2, calibration_budget=10)
    with pytest.raises(ValueError, match="method"):
        ss.sample(model, solver="auto", nfe=5, batch_size=2, calibrate={"method": "dp"})


def test_auto_with_a_cache_file_path_keeps_it_and_refuses_other_weights(tmp_path):
    model, net = _model()
    path = tmp_path / "auto5.json"
    kw = dict(solver="auto", nfe=5, batch_size=2, calibrate={"cache": str(path), **SMALL}, return_result=True)
    r = ss.sample(model, **kw)
    assert path.is_file() and not r.info["calibration"]["cached"]
    assert ss.sample(model, **kw).info["calibration"]["cached"]
    with torch.no_grad():
        net.mean += 1.0
    with pytest.raises(CalibrationMismatchError, match="other weights"):
        ss.sample(model, **kw)


def test_analytic_grid_is_log_snr_where_the_data_variance_vanishes_and_needs_no_model():
    from scoresolve.solvers.grids import make_grid

    for sde in (ss.VPSDE(), ss.VESDE(sigma_min=0.01, sigma_max=50.0)):
        eps = sde.default_eps
        # c -> 0, no floor: f''/f = 1 everywhere, the density is flat in log sigma: the log-SNR grid
        a = make_grid("analytic", sde, 6, eps, c=1e-12, floor=0.0)
        b = make_grid("log_snr", sde, 6, eps)
        assert torch.allclose(sde.sigma(a).log(), sde.sigma(b).log(), atol=2e-3)
        # the default (c = 0.1): log-SNR-like steps at high noise, wider ones where sigma^2 << c
        s = sde.sigma(make_grid("analytic", sde, 10, eps)).log()
        steps = s[:-1] - s[1:]
        assert float(steps[-1]) > 1.5 * float(steps[0])


def test_the_choice_criterion_prefers_the_right_spread_to_a_smoothed_sample():
    """Samples shrunk toward the mean (what a too-coarse solver gives) have the lower paired RMSE against the
    teacher, yet the wrong distribution; moment_mismatch ranks them below unbiased samples of the right spread.
    Closed form (spread 0.8): shrinking by 0.7 gives RMSE 0.3 * 0.8 and a spread error 0.3 * 0.8 in every direction;
    correlation 0.9 with fresh noise gives RMSE sqrt(0.2) * 0.8 and a spread error O(1/sqrt(n))."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(512, 16, generator=g, dtype=torch.float64) * 0.8 + torch.linspace(-1, 1, 16)
    mean = teacher.mean(0)
    shrunk = mean + 0.7 * (teacher - mean)
    noisy = mean + 0.9 * (teacher - mean) + math.sqrt(1 - 0.81) * 0.8 * torch.randn(512, 16, generator=g,
                                                                                      dtype=torch.float64)

    def rmse(x):
        return float((x - teacher).pow(2).mean().sqrt())

    assert rmse(shrunk) < 0.8 * rmse(noisy)  # the old rule (paired RMSE) picks the smoothed samples
    assert moment_mismatch(noisy, teacher) < 0.2 * moment_mismatch(shrunk, teacher)
    assert moment_mismatch(shrunk, teacher) == pytest.approx((0.3 * 0.8) ** 2, rel=0.02)  # same means
    assert moment_mismatch(teacher, teacher) == 0.0


def test_the_default_is_kept_unless_a_candidate_is_better_by_more_than_the_paired_error():
    """choose(): a candidate whose lead is within z paired standard errors does not replace the default; a clearly
    better one does (the least criterion among the clearly better); without a default, the least criterion."""
    scores = {"default": 1.0, "close": 0.9, "clear": 0.95, "worse": 1.2}
    margins = {"close": (-0.1, 0.2), "clear": (-0.05, 0.01)}
    pick, rec = choose(scores, "default", margins.__getitem__, z=2.0)
    assert pick == "clear" and rec["replaced"] and rec["best"] == "close" and rec["se"] == 0.2
    assert set(rec["margins"]) == {"close", "clear"}  # only candidates below the default are tested
    margins["clear"] = (-0.05, 0.03)  # now both leads are within two standard errors: the default stays
    pick, rec = choose(scores, "default", margins.__getitem__, z=2.0)
    assert pick == "default" and not rec["replaced"] and rec["margin"] == -0.1
    assert choose(scores, None, margins.__getitem__)[0] == "close"
    assert choose({**scores, "default": math.inf}, "default", margins.__getitem__)[0] == "close"


def test_paired_margin_separates_a_shrunk_sample_and_not_two_equal_ones():
    """The jackknife SE of the paired criterion difference: a sample shrunk by 0.6 loses to a faithful one by many
    SE on 32 draws; two independent samples of the teacher's own law differ by less than 3 SE; identical: 0, 0."""
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(32, 8, generator=g, dtype=torch.float64)

    def near():
        return 0.9 * teacher + math.sqrt(1 - 0.81) * torch.randn(32, 8, generator=g, dtype=torch.float64)

    good, shrunk = near(), 0.6 * teacher
    d, se = paired_margin(good, shrunk, teacher)
    assert d < 0 and d < -4 * se
    a, b = near(), near()
    d, se = paired_margin(a, b, teacher)
    assert se > 0 and abs(d) < 3 * se
    assert paired_margin(a, a, teacher) == (0.0, 0.0)
    with pytest.raises(ValueError, match="paired rows"):
        paired_margin(a[:5], b, teacher)
