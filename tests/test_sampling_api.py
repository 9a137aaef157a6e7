"""The contract of ss.sample: NFE accounting, reproducibility, batch independence, errors."""

from __future__ import annotations

import pytest
import torch

import scoresolve as ss
from scoresolve.registry import UnknownNameError

PAIRS = [(p, c) for p in ss.predictors() for c in ss.correctors() if (p, c) != ("none", "none")]


class Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


@pytest.fixture
def problem():
    gm = ss.analytic.grid2d(3)
    return gm, ss.VPSDE()


@pytest.mark.parametrize("pred,corr", PAIRS)
@pytest.mark.parametrize("n_corr", [1, 2])
def test_nfe_equals_calls(problem, pred, corr, n_corr):
    gm, sde = problem
    counter = Counter(lambda x, t: gm.score(x, t, sde))
    res = ss.sample(counter, sde, steps=7, shape=(5, 2), predictor=pred, corrector=corr,
                    n_corrector_steps=n_corr, return_result=True, generator=torch.Generator().manual_seed(0))
    assert res.nfe == counter.calls
    per_step = (pred != "none") + (n_corr if corr != "none" else 0)
    assert res.nfe == 7 * per_step + 1  # + the final Tweedie step
    res2 = ss.sample(counter, sde, steps=7, shape=(5, 2), predictor=pred, corrector=corr, final="none",
                     n_corrector_steps=n_corr, return_result=True)
    assert res2.nfe == 7 * per_step


@pytest.mark.parametrize("pred,corr", PAIRS)
def test_each_sample_depends_only_on_its_seed(problem, pred, corr):
    gm, sde = problem
    model = gm.score_model(sde)
    seeds = list(range(100, 112))
    batch = ss.sample(model, sde, steps=12, seeds=seeds, predictor=pred, corrector=corr, dtype=torch.float64)
    alone = ss.sample(model, sde, steps=12, seeds=[seeds[7]], predictor=pred, corrector=corr, dtype=torch.float64)
    assert batch.shape == (12, 2)
    torch.testing.assert_close(alone[0], batch[7], rtol=1e-10, atol=1e-10)
    # and a different neighbourhood does not change it either
    other = ss.sample(model, sde, steps=12, seeds=[1, 2, seeds[7]], predictor=pred, corrector=corr,
                      dtype=torch.float64)
    torch.testing.assert_close(other[2], batch[7], rtol=1e-10, atol=1e-10)


def test_generator_reproducible_and_x_T(problem):
    gm, sde = problem
    model = gm.score_model(sde)
    a = ss.sample(model, sde, steps=10, batch_size=8, generator=torch.Generator().manual_seed(3))
    b = ss.sample(model, sde, steps=10, batch_size=8, generator=torch.Generator().manual_seed(3))
    c = ss.sample(model, sde, steps=10, batch_size=8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    r = ss.sample(model, sde, steps=10, x_T=x_T, return_trajectory=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(r.trajectory[0], x_T)
    assert r.trajectory.shape == (12, 8, 2)  # x_T, 10 steps, denoised
    assert torch.equal(r.trajectory[-1], r.samples)
    assert r.grid.shape == (11,) and r.grid[0] == sde.T and abs(float(r.grid[-1]) - sde.default_eps) < 1e-15


def test_model_metadata_and_float64(problem):
    gm, sde = problem
    model = gm.score_model(sde)  # carries sde and sample_shape
    x = ss.sample(model, steps=5, batch_size=3, dtype=torch.float64)
    assert x.shape == (3, 2) and x.dtype == torch.float64
    with pytest.raises(ValueError, match="sample_shape"):
        ss.sample(model, steps=5, shape=(3, 5))
    with pytest.raises(ValueError, match="shape= is required"):
        ss.sample(lambda x, t: -x, sde, steps=5)


def test_callback_sees_every_step(problem):
    gm, sde = problem
    seen = []
    ss.sample(gm.score_model(sde), steps=6, batch_size=2,
              callback=lambda step, t, x, x_mean: seen.append((step, float(t[0]))))
    assert [s for s, _ in seen] == list(range(6))
    assert all(a > b for (_, a), (_, b) in zip(seen, seen[1:], strict=False))


def test_custom_grid_and_grid_names(problem):
    gm, sde = problem
    r = ss.sample(gm.score_model(sde), grid=[1.0, 0.5, 0.1, 0.01], batch_size=2, return_result=True)
    assert r.nfe == 3 * 2 + 1 and float(r.grid[-1]) == 0.01
    for name in ss.grids():
        r = ss.sample(gm.score_model(sde), grid=name, steps=4, batch_size=2, return_result=True)
        assert r.grid.shape == (5,) and (r.grid[1:] < r.grid[:-1]).all()


def test_unknown_names_suggest_closest(problem):
    gm, sde = problem
    model = gm.score_model(sde)
    with pytest.raises(UnknownNameError, match=r"solver 'pcc'.*Did you mean 'pc'.*Registered solvers: .*pc"):
        ss.sample(model, solver="pcc", steps=2, batch_size=1)
    with pytest.raises(UnknownNameError, match=r"predictor .reverse_difusion. \(argument predictor=\).*diffusion"):
        ss.sample(model, steps=2, batch_size=1, predictor="reverse_difusion")
    with pytest.raises(UnknownNameError, match=r"corrector 'langevn'.*'langevin'"):
        ss.sample(model, steps=2, batch_size=1, corrector="langevn")
    with pytest.raises(UnknownNameError, match="grid"):
        ss.sample(model, steps=2, batch_size=1, grid="karas")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['snrr'\].*snr"):
        ss.sample(model, steps=2, batch_size=1, snrr=0.1)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_bad_steps(problem, steps):
    gm, sde = problem
    with pytest.raises(ValueError, match="steps"):
        ss.sample(gm.score_model(sde), steps=steps, batch_size=1)


@pytest.mark.parametrize("eps", [0.0, -1e-3, 1.0, 2.0, float("nan")])
def test_bad_eps(problem, eps):
    gm, sde = problem
    with pytest.raises(ValueError, match="eps"):
        ss.sample(gm.score_model(sde), steps=3, batch_size=1, eps=eps)


def test_bad_grids(problem):
    gm, sde = problem
    for grid, msg in [([0.5, 0.9, 0.1], "decreasing"), ([1.0], "at least 2"), ([1.0, 0.0], r"\(0, T"),
                      ([1.0, float("nan")], "NaN")]:
        with pytest.raises(ValueError, match=msg):
            ss.sample(gm.score_model(sde), grid=grid, batch_size=1)


def test_wrong_shape_from_score():
    sde = ss.VPSDE()
    with pytest.raises(ValueError, match=r"returned shape \(4, 3\) for an input of shape \(4, 2\)"):
        ss.sample(lambda x, t: torch.zeros(x.shape[0], 3), sde, steps=3, shape=(4, 2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_score_names_step_and_t(bad):
    sde = ss.VPSDE()

    def score(x, t):
        out = -x.clone()
        if t[0] < 0.5:
            out[1] = bad
        return out

    with pytest.raises(ss.NonFiniteScoreError, match=r"step (\d+) \(t=0\.4\d*\) for 1 of 4 samples") as e:
        ss.sample(score, sde, steps=10, shape=(4, 2))
    assert "step 5 " in str(e.value)  # t_6 = 0.4006 is first reached by the corrector of step 5
    # deferred checking (as on accelerators) reports the same first step
    with pytest.raises(ss.NonFiniteScoreError, match="step 5 "):
        ss.sample(score, sde, steps=10, shape=(4, 2), check_every=64)


def test_bad_model_and_sde():
    with pytest.raises(TypeError, match="callable"):
        ss.sample(3, ss.VPSDE(), steps=2, shape=(1, 2))
    with pytest.raises(ValueError, match="sde is required"):
        ss.sample(lambda x, t: -x, steps=2, shape=(1, 2))
    with pytest.raises(TypeError, match="sde must be"):
        ss.sample(lambda x, t: -x, "vp", steps=2, shape=(1, 2))
    with pytest.raises(ValueError, match="snr"):
        ss.sample(lambda x, t: -x, ss.VPSDE(), steps=2, shape=(1, 2), snr=-1.0)
    with pytest.raises(ValueError, match="seeds has 3 entries"):
        ss.sample(lambda x, t: -x, ss.VPSDE(), steps=2, shape=(2, 2), seeds=[1, 2, 3])


def test_parameterisation_conversions_agree(any_sde):
    """eps, x0, v and denoiser wrappers of the exact mixture all give back its exact score."""
    gm = ss.analytic.anisotropic(4, 3, seed=0)
    sde = any_sde
    g = torch.Generator().manual_seed(0)
    x = gm.sample(32, g, sde=sde, t=0.4, dtype=torch.float64)
    t = torch.full((32,), 0.4, dtype=torch.float64)
    score = gm.score(x, t, sde)
    a, s = ss.SDE.bcast(sde.alpha(t), x), ss.SDE.bcast(sde.marginal_std(t), x)
    x0 = (x + s**2 * score) / a
    eps = -s * score
    v = a * eps - s * x0
    nets = {
        ss.from_eps: lambda x_, t_: eps,
        ss.from_x0: lambda x_, t_: x0,
        ss.from_v: lambda x_, t_: v,
        # k-diffusion convention: D(x/α, σ/α) with the noise level sigma = σ/α
        ss.from_denoiser: lambda xs, sig: (torch.testing.assert_close(sig, sde.sigma(t)), x0)[1],
    }
    for wrap, net in nets.items():
        torch.testing.assert_close(wrap(net, sde)(x, t), score, rtol=1e-9, atol=1e-9)


def test_solvers_listing():
    listing = ss.solvers()
    assert "pc" in listing and all(isinstance(v, str) and v for v in listing.values())
    assert set(ss.predictors()) >= {"euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none"}
    assert set(ss.correctors()) >= {"langevin", "annealed_langevin", "none"}


def test_old_words_still_work_with_a_deprecation_warning(problem):
    """denoise= and a solver's last_step= map onto final=; a budgeted solver's steps= alone means grid
    intervals, as for every solver, and says so."""
    gm, sde = problem
    model = gm.score_model(sde)
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    with pytest.warns(DeprecationWarning, match="final='none'"):
        a = ss.sample(model, sde, steps=5, x_T=x_T, denoise=False, generator=torch.Generator().manual_seed(1))
    b = ss.sample(model, sde, steps=5, x_T=x_T, final="none", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.warns(DeprecationWarning, match="final='zero'"):
        c = ss.sample(model, sde, "ipndm", nfe=6, x_T=x_T, last_step="zero")
    assert torch.equal(c, ss.sample(model, sde, "ipndm", nfe=6, x_T=x_T, final="zero"))
    with pytest.warns(DeprecationWarning, match="now nfe=6"):
        r = ss.sample(model, sde, "ipndm", steps=6, x_T=x_T, final="zero", return_result=True)
    assert r.grid.numel() - 1 == 6 and r.nfe == 7  # 6 intervals + the final step


def test_auto_reads_steps_as_nfe_and_warns_at_the_callers_line(problem):
    gm, sde = problem
    model = gm.score_model(sde)
    kw = dict(solver="auto", shape=(4, 2), calibrate=False, return_result=True, dtype=torch.float64,
              x_T=torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    with pytest.warns(DeprecationWarning, match="read as nfe=6") as rec:
        old = ss.sample(model, sde, steps=6, **kw)
    assert rec[0].filename == __file__  # the warning names the caller's line, not scoresolve's
    new = ss.sample(model, sde, nfe=6, **kw)
    assert old.nfe == new.nfe == 6 and torch.equal(old.samples, new.samples)
    with pytest.raises(TypeError, match="for solver 'auto'"):
        ss.sample(model, sde, solver="auto", nfe=6, shape=(4, 2), order=3)
