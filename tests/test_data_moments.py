"""ScoreModel(data_moments=(mean, cov)): the model's own moments as the Gaussian fit of the analytical first
step of the budgeted solvers with gaussian_prior="estimate" (solver="auto" by default), with or without
calibration; explicit priors win; bad moments are named; calibration fingerprints tell them apart."""

from __future__ import annotations

import functools

import pytest
import torch

import scoresolve as ss
from scoresolve.calibrate import CalibratedGrid, CalibrationMismatchError, calibrate_grid
from scoresolve.recipes import auto_recipe
from scoresolve.solvers.ipndm import IPNDM

SHAPE = (1, 8, 8)


@functools.cache
def _digits():
    gm = ss.analytic.digits()
    sde = ss.VPSDE()
    base = gm.score_model(sde)
    return gm, sde, base, ss.ScoreModel(base, sde, SHAPE, data_moments=gm.moments())


def _x_T(n: int = 16, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(0))


def _run(model, solver, steps, x_T, **kw):
    sde = _digits()[1] if x_T.shape[1:] == SHAPE else kw.pop("sde")
    return ss.sample(model, sde, solver=solver, nfe=steps, x_T=x_T, return_result=True, **kw)


@pytest.mark.parametrize(
    ("solver", "steps", "options"),
    [
        ("ipndm", 5, {"gaussian_prior": "estimate", "final": "tweedie", "variable": False}),
        ("ipndm", 4, {"gaussian_prior": "estimate"}),
        ("dpmpp_2m", 5, {"gaussian_prior": "estimate", "final": "zero"}),
        ("auto", 5, {"calibrate": False}),
        ("auto", 20, {"calibrate": False}),
    ],
)
def test_model_moments_equal_the_explicit_prior(solver, steps, options):
    """With calibrate=False, the model's data_moments give the same samples (same x_T) as passing its
    moments as gaussian_prior=(mean, cov), and spend exactly `steps` evaluations."""
    gm, _, base, model = _digits()
    x_T = _x_T()
    a = _run(model, solver, steps, x_T, **options)
    explicit = {**options, "gaussian_prior": gm.moments()}
    b = _run(base, solver, steps, x_T, **explicit)
    assert a.nfe == b.nfe == steps
    to_zero = solver == "auto" or options.get("final", "none") != "none"
    assert a.grid.numel() - 1 == b.grid.numel() - 1 == steps + (0 if to_zero else 1)  # the first interval is free
    torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=1e-6)
    assert a.info["gaussian_prior"] == "model"
    # and the Gaussian step was taken: without it (same budget) the samples differ
    c = _run(base, solver, steps, x_T, **{**options, "gaussian_prior": None})
    assert (a.samples - c.samples).abs().max() > 1e-2


def test_auto_between_7_and_15_ignores_the_moments():
    """auto runs UniPC without a Gaussian step at 7-15 evaluations: the moments change nothing there."""
    _, _, base, model = _digits()
    x_T = _x_T()
    a = _run(model, "auto", 10, x_T, calibrate=False)
    b = _run(base, "auto", 10, x_T, calibrate=False)
    assert a.nfe == 10 and torch.equal(a.samples, b.samples) and "gaussian_prior" not in a.info


def test_model_without_moments_keeps_the_old_behaviour():
    """No data_moments: auto with calibrate=False takes no Gaussian step (as gaussian_prior=None), and
    gaussian_prior='estimate' without calibration still asks for it."""
    gm, sde, base, _ = _digits()
    plain = ss.ScoreModel(base, sde, SHAPE)
    assert plain.data_moments is None and plain.data_fit is None
    x_T = _x_T()
    for model in (plain, base):
        a = _run(model, "auto", 5, x_T, calibrate=False)
        b = _run(model, "auto", 5, x_T, calibrate=False, gaussian_prior=None)
        assert a.nfe == 5 and a.grid.numel() == 5 and torch.equal(a.samples, b.samples)
        with pytest.raises(ValueError, match="calibrate=True"):
            _run(model, "ipndm", 4, x_T, gaussian_prior="estimate")


def test_explicit_prior_wins_and_none_stays_off():
    gm, sde, base, model = _digits()
    mean, cov = gm.moments()
    x_T = _x_T()
    other = (-mean, 0.05)  # another Gaussian fit: negated mean, isotropic variance
    for solver, opts in (("ipndm", {}), ("auto", {"calibrate": False})):
        a = _run(model, solver, 5, x_T, gaussian_prior=other, **opts)
        b = _run(base, solver, 5, x_T, gaussian_prior=other, **opts)
        own = _run(model, solver, 5, x_T, gaussian_prior=gm.moments(), **opts)
        assert torch.equal(a.samples, b.samples) and (a.samples - own.samples).abs().max() > 1e-2
        assert "gaussian_prior" not in a.info  # the solver's own fit, not the model's
        c = _run(model, solver, 5, x_T, gaussian_prior=None, **opts)
        d = _run(base, solver, 5, x_T, gaussian_prior=None, **opts)
        assert torch.equal(c.samples, d.samples)
    # gaussian_prior="estimate" takes the model's moments (the same solver object serves both models)
    s = IPNDM()
    assert _run(model, s, 4, x_T, gaussian_prior="estimate").info["gaussian_prior"] == "model"
    with pytest.raises(ValueError, match="calibrate=True"):
        _run(base, s, 4, x_T, gaussian_prior="estimate")
    # auto without calibration: the model's moments give the Gaussian first interval (5 intervals for 5
    # evaluations), gaussian_prior=None turns it off (4 intervals and the jump to 0)
    assert _run(model, "auto", 5, x_T, calibrate=False).grid.numel() - 1 == 5
    assert _run(model, "auto", 5, x_T, calibrate=False, gaussian_prior=None).grid.numel() - 1 == 4


def test_data_moments_forms_and_validation():
    gm, sde, base, model = _digits()
    mean, cov = gm.moments()
    assert model.data_fit.dim == 64 and model.data_moments[0].dtype == torch.float64
    assert "data_moments" in repr(model)
    # full, diagonal and scalar covariances; mean of the sample shape; scalar mean and variance
    for m, c in ((mean.reshape(SHAPE), cov), (mean, torch.diagonal(cov)), (mean, 0.3), (0.0, 0.3)):
        assert ss.ScoreModel(base, sde, SHAPE, data_moments=(m, c)).data_fit.dim == 64
    bad = [
        ((torch.zeros(64), torch.zeros(64, 63)), ValueError, "cov must be"),
        ((torch.zeros(64), torch.zeros(2, 64, 64)), ValueError, "cov must be"),
        ((torch.zeros(63), torch.eye(64)), ValueError, "mean has 63"),
        ((torch.full((64,), float("nan")), torch.eye(64)), ValueError, "finite"),
        ((torch.zeros(64), torch.eye(64) * float("inf")), ValueError, "finite"),
        ((torch.zeros(64), -torch.eye(64)), ValueError, "positive semi-definite"),
        ((torch.zeros(16), torch.eye(16)), ValueError, "sample_shape"),
        ((torch.zeros(64), torch.ones(16)), ValueError, "mean has 64"),
        (torch.zeros(64), TypeError, "pair"),
        ((torch.zeros(64),), TypeError, "pair"),
        (("a", 1.0), TypeError, "data_moments"),
    ]
    for value, exc, msg in bad:
        with pytest.raises(exc, match="data_moments") as info:
            ss.ScoreModel(base, sde, SHAPE, data_moments=value)
        assert msg in str(info.value), (value, info.value)
    # validated on assignment too
    m2 = ss.ScoreModel(base, sde, SHAPE)
    with pytest.raises(ValueError, match="data_moments"):
        m2.data_moments = (torch.zeros(64), -torch.eye(64))
    m2.data_moments = (0.0, 1.0)
    assert m2.data_fit.dim == 64
    # without a sample_shape the dimension is checked against the samples
    free = ss.ScoreModel(base, sde, data_moments=(torch.zeros(16), 1.0))
    with pytest.raises(ValueError, match="data_moments is for dimension 16"):
        ss.sample(free, sde, solver="ipndm", nfe=3, shape=(4, *SHAPE), gaussian_prior="estimate")


@functools.cache
def _small():
    gm = ss.analytic.anisotropic(dim=4, n_components=3, seed=2)
    sde = ss.VPSDE()
    base = gm.score_model(sde)
    return gm, sde, base, ss.ScoreModel(base, sde, (4,), data_moments=gm.moments())


def _auto5(model, sde, path, kw):
    """The grid solver='auto' calibrates at 5 evaluations (with a smaller search)."""
    r = auto_recipe(5, gaussian=True)
    return calibrate_grid(model, sde, r.instance, 5, final=r.final, gaussian_prior="estimate", cache=path,
                          **{**r.calibration, **kw})


def test_calibration_uses_and_records_the_model_moments(tmp_path):
    """auto at 5 evaluations, calibrated (a small search, through its cache file): the grid is calibrated
    with the model's moments (nothing estimated, recorded with kind 'model'), sampling gives the same
    samples as the explicit prior, and a grid calibrated with estimated moments is not reused for the
    model's moments, nor the other way (the existing mismatch error, naming the solver)."""
    gm, sde, base, model = _small()
    kw = dict(n_samples=32, max_evals=20, teacher_steps=60)
    path = tmp_path / "model.json"
    cg = _auto5(model, sde, path, kw)
    rec = CalibratedGrid.load(path).extra["gaussian_prior"]
    assert rec == {"kind": "model", "digest": model.data_fit.digest, "dim": 4}
    assert cg.solver["gaussian_prior"] == model.data_fit.digest and cg.gaussian_fit() is None
    x_T = _x_T(8, (4,))
    a = _run(model, "auto", 5, x_T, sde=sde, calibrate=str(path))
    b = _run(base, "auto", 5, x_T, sde=sde, calibrate=str(path), gaussian_prior=gm.moments())
    assert a.info["calibration"]["cached"] and b.info["calibration"]["cached"]
    assert a.nfe == b.nfe == 5 and torch.allclose(a.grid, cg.grid) and a.info["gaussian_prior"] == "model"
    torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=1e-6)
    with pytest.raises(CalibrationMismatchError, match="solver"):
        _run(base, "auto", 5, x_T, sde=sde, calibrate=str(path))  # estimate: refuses the model-moments grid
    path2 = tmp_path / "estimated.json"
    _auto5(base, sde, path2, kw)
    assert CalibratedGrid.load(path2).solver["gaussian_prior"] == "estimate"
    with pytest.raises(CalibrationMismatchError, match="solver"):
        _run(model, "auto", 5, x_T, sde=sde, calibrate=str(path2))
    with pytest.raises(CalibrationMismatchError, match="solver"):
        _auto5(model, sde, path2, kw)


def test_auto_default_calibration_in_memory():
    """solver='auto' as a user calls it (calibrate=True, in-memory cache): the model's moments and the
    same moments given explicitly share one calibration (same fingerprint) and give the same samples; the
    estimate for a model without moments is calibrated separately (another fingerprint)."""
    gm = ss.analytic.anisotropic(dim=4, n_components=3, seed=5)  # not calibrated by another test
    sde = ss.VPSDE()
    base = gm.score_model(sde)
    model = ss.ScoreModel(base, sde, (4,), data_moments=gm.moments())
    x_T = _x_T(8, (4,))
    a = _run(model, "auto", 5, x_T, sde=sde)
    b = _run(base, "auto", 5, x_T, sde=sde, gaussian_prior=gm.moments())
    assert a.nfe == b.nfe == 5 and a.info["gaussian_prior"] == "model" and b.info["calibration"]["cached"]
    torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=1e-6)
    assert not a.info["calibration"]["cached"] and a.info["calibration"]["nfe"] > 100
    c = _run(base, "auto", 5, x_T, sde=sde)
    assert not c.info["calibration"]["cached"] and c.info["auto"]["gaussian_prior"] == "estimate"
    assert (c.samples - a.samples).abs().max() > 1e-4  # estimated moments: another fit, another grid


def test_checkpoint_round_trip_keeps_the_moments(tmp_path):
    """io.save/load (file and save_pretrained directory) store data_moments as float64 tensors beside the
    weights (which go under 'model.', so the network loads without moment support too); a model without
    moments writes the old layout; a file that lists moments it lacks is refused."""
    from safetensors.torch import load_file as st_load

    from scoresolve.io import CheckpointError, load, read_config, save
    from scoresolve.train.nets import MLP

    torch.manual_seed(0)
    net = MLP(sample_shape=(2,), hidden=16, depth=2, embed_dim=8)
    mean, cov = torch.tensor([0.5, -1.0]), torch.tensor([[1.0, 0.3], [0.3, 0.5]])
    model = ss.ScoreModel(net, ss.VPSDE(), sample_shape=(2,), parameterization="eps", data_moments=(mean, cov))
    x, t = torch.randn(4, 2), torch.full((4,), 0.5)
    for path in (tmp_path / "m.safetensors", tmp_path / "pretrained"):
        save(model, path)
        back = load(path)
        assert back.data_fit.digest == model.data_fit.digest
        torch.testing.assert_close(back.data_moments[1], cov.double())
        torch.testing.assert_close(back(x, t), model(x, t))
    state = st_load(str(tmp_path / "m.safetensors"))
    assert state["data_moments.mean"].dtype == torch.float64 and all(
        k.startswith(("model.", "data_moments.")) for k in state)
    assert read_config(tmp_path / "m.safetensors")["data_moments"] == ["data_moments.mean", "data_moments.cov"]
    # the save() override, validated against the sample shape
    save(model, tmp_path / "o.safetensors", data_moments=(0.0, 2.0))
    assert torch.equal(load(tmp_path / "o.safetensors").data_fit.c, torch.full((2,), 2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="data_moments"):
        save(model, tmp_path / "bad.safetensors", data_moments=(torch.zeros(3), 1.0))
    # no moments: old layout (plain weight keys, no config entry), loads without moments
    plain = ss.ScoreModel(net, ss.VPSDE(), sample_shape=(2,), parameterization="eps")
    save(plain, tmp_path / "p.safetensors")
    assert "data_moments" not in read_config(tmp_path / "p.safetensors")
    assert not any(k.startswith("model.") for k in st_load(str(tmp_path / "p.safetensors")))
    assert load(tmp_path / "p.safetensors").data_moments is None
    # a config that lists moments the file does not hold
    with pytest.raises(CheckpointError, match="data_moments"):
        load(tmp_path / "p.safetensors", config={**read_config(tmp_path / "p.safetensors"),
                                                  "data_moments": ["data_moments.mean", "data_moments.cov"]})


def test_sharded_run_fingerprint_sees_the_moments():
    # a resumed sharded run must not mix samples drawn with and without the model's moments
    from scoresolve.distributed import model_fingerprint

    gm = ss.analytic.gaussian(torch.zeros(3), torch.eye(3))
    sde = ss.VPSDE()
    fn = gm.score_model(sde)
    plain = ss.ScoreModel(fn, sde, (3,))
    with_m = ss.ScoreModel(fn, sde, (3,), data_moments=gm.moments())
    other = ss.ScoreModel(fn, sde, (3,), data_moments=(torch.zeros(3), 2 * torch.eye(3)))
    fps = {model_fingerprint(m) for m in (plain, with_m, other)}
    assert len(fps) == 3
    assert model_fingerprint(with_m) == model_fingerprint(ss.ScoreModel(fn, sde, (3,), data_moments=gm.moments()))
