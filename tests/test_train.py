"""Training: losses against closed forms, networks, the trainer (loss decreases, exact resume,
atomic checkpoints), the CLI, and a 2-D model that samples its toy mixture well."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import scoresolve as ss
from scoresolve.io import CheckpointError, load
from scoresolve.metrics import frechet_floor, frechet_to_moments, mode_weights
from scoresolve.train import data as tdata
from scoresolve.train.losses import ddpm_loss, ddpm_schedule, dsm_loss, sliced_score_matching_loss
from scoresolve.train.nets import MLP, UNet
from scoresolve.train.trainer import Trainer

torch.set_num_threads(1)

SDES = [ss.VPSDE(), ss.SubVPSDE(), ss.VESDE(sigma_min=0.01, sigma_max=5.0)]


# --- losses against closed forms ---------------------------------------------------------------
def _gauss_terms(sde: ss.SDE, c: float, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For data N(0, c² I): v_t = α²c² + σ², and the exact-score DSM integrand E||σ s + z||²/D = α²c²/v."""
    a, s = sde.alpha(t), sde.marginal_std(t)
    v = a**2 * c**2 + s**2
    return v, a**2 * c**2 / v


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_dsm_loss_of_exact_score_matches_closed_form(sde: ss.SDE, weighting: str) -> None:
    # Gaussian data N(0, c² I): the exact score is -x/v_t and E[λ(t)||s + z/σ||²]/D has a closed form.
    c, d, n, eps = 0.7, 4, 100_000, 1e-3
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, d, generator=g, dtype=torch.float64) * c

    def exact_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -x / _gauss_terms(sde, c, t)[0][:, None]

    t = eps + torch.rand(n, generator=g, dtype=torch.float64) * (sde.T - eps)
    loss = dsm_loss(exact_score, sde, x0, parameterization="score", weighting=weighting, t=t,
                    noise=torch.randn(n, d, generator=g, dtype=torch.float64))
    # the same expectation by quadrature over t (and its Monte Carlo standard error from the same t's)
    tq = torch.linspace(eps, sde.T, 20001, dtype=torch.float64)
    _, f = _gauss_terms(sde, c, tq)
    w = sde.diffusion(tq) ** 2 / sde.marginal_std(tq) ** 2 if weighting == "likelihood" else torch.ones_like(tq)
    expected = torch.trapezoid(f * w, tq) / (sde.T - eps)
    _, ft = _gauss_terms(sde, c, t)
    wt = sde.diffusion(t) ** 2 / sde.marginal_std(t) ** 2 if weighting == "likelihood" else 1.0
    # per-sample integrand: λ·χ²_d/d-like spread around ft·wt; bound its std by sqrt(3)·ft·wt (χ² var = 2/d·mean²)
    se = float(((ft * wt) ** 2 * (1 + 2 / d)).mean().sqrt()) / math.sqrt(n)
    assert abs(float(loss) - float(expected)) < 5 * se, (float(loss), float(expected), se)
    # the reduce="sum" version is D times larger on the same draws
    loss_sum = dsm_loss(exact_score, sde, x0, parameterization="score", weighting=weighting, t=t, reduce="sum",
                        noise=torch.randn(n, d, generator=torch.Generator().manual_seed(9), dtype=torch.float64))
    assert abs(float(loss_sum) / d - float(expected)) < 5 * se


def test_dsm_loss_is_parameterization_independent() -> None:
    # an eps-network that predicts -σ·(exact score) gives the same loss as the exact score itself
    sde, c = ss.VPSDE(), 0.5
    x0 = torch.randn(512, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * c

    def score(x, t):
        return -x / _gauss_terms(sde, c, t)[0][:, None]

    def eps_net(x, t):
        return -sde.marginal_std(t)[:, None] * score(x, t)

    a = dsm_loss(score, sde, x0, parameterization="score", generator=torch.Generator().manual_seed(3))
    b = dsm_loss(eps_net, sde, x0, parameterization="eps", generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, b, rtol=1e-10)
    with pytest.raises(ValueError, match="weighting"):
        dsm_loss(score, sde, x0, weighting="sigma")


def test_ddpm_schedule_and_loss() -> None:
    sde = ss.VPSDE()
    abar, t = ddpm_schedule(sde, 1000)
    assert torch.allclose(sde.alpha(t) ** 2, abar, rtol=1e-9)  # same noise level as the discrete chain
    assert float(t[0]) < 1e-3 < float(t[1]) and abs(float(t[-1]) - 1.0) < 0.01
    # exact eps of N(0, c²I): ε̂ = σ x / v; loss per step = ᾱ c²/(ᾱ c² + 1 - ᾱ)
    c, d, n = 0.7, 4, 200_000
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, d, generator=g, dtype=torch.float64) * c

    def eps_net(x, tt):
        v, _ = _gauss_terms(sde, c, tt)
        return sde.marginal_std(tt)[:, None] * x / v[:, None]

    loss = float(ddpm_loss(eps_net, sde, x0, generator=g))
    expected = float((abar * c**2 / (abar * c**2 + 1 - abar)).mean())
    assert abs(loss - expected) < 0.01, (loss, expected)  # MC s.e. ≈ 0.0015


def test_sliced_score_matching_closed_form() -> None:
    # for N(0, c²I) and the exact score: σ²(tr ∇s + ½||s||²) has mean -σ² D / (2 v_t) (Rademacher: tr exact)
    sde, c, d, n = ss.VPSDE(), 0.7, 3, 100_000
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, d, generator=g, dtype=torch.float64) * c

    def score(x, t):
        return -x / _gauss_terms(sde, c, t)[0][:, None]

    loss = float(sliced_score_matching_loss(score, sde, x0, generator=g, eps=1e-3).detach())
    tq = torch.linspace(1e-3, 1, 20001, dtype=torch.float64)
    v, _ = _gauss_terms(sde, c, tq)
    expected = float(torch.trapezoid(-sde.marginal_std(tq) ** 2 * d / (2 * v), tq) / (1 - 1e-3))
    assert abs(loss - expected) < 0.02 * abs(expected), (loss, expected)


# --- networks ----------------------------------------------------------------------------------
def test_networks_shapes_and_errors() -> None:
    u = UNet(base_channels=8, channel_mults=(1, 2), attn_resolutions=(4,))
    x = torch.randn(3, 1, 8, 8)
    assert u(x, torch.rand(3)).shape == x.shape and u(x, torch.tensor(0.5)).shape == x.shape
    m = ss.from_eps(u, ss.VPSDE(), sample_shape=(1, 8, 8))
    assert m(x, torch.rand(3)).shape == x.shape
    with pytest.raises(ValueError, match="image_size"):
        UNet(image_size=7, channel_mults=(1, 2))
    with pytest.raises(ValueError, match=r"expects x of shape"):
        u(torch.randn(2, 1, 4, 4), torch.rand(2))
    mlp = MLP((2,), hidden=16, depth=1, embedding="sinusoidal", time_transform="log")
    assert mlp(torch.randn(5, 2), torch.rand(5) + 0.1).shape == (5, 2)
    assert UNet(base_channels=48).config["base_channels"] == 48  # GroupNorm groups adapt to 48/96 channels


# --- data --------------------------------------------------------------------------------------
def test_digits_split_and_png(tmp_path: Path) -> None:
    tr, te, al = tdata.digits("train"), tdata.digits("test"), tdata.digits("all")
    assert tr.shape[1:] == (1, 8, 8) and tr.shape[0] + te.shape[0] == al.shape[0] == 1797
    assert te.shape[0] == 359 and float(al.min()) == -1.0 and float(al.max()) == 1.0
    same = (te.reshape(len(te), 1, -1) == tr.reshape(1, len(tr), -1)).all(-1).any(-1)
    overlap = int(same.sum())
    assert overlap < 5  # a handful of identical images exist in the data set itself
    img = tdata.image_grid(te[:10], nrow=5)
    assert img.shape == (2 * 9 + 1, 5 * 9 + 1, 1) and img.dtype == torch.uint8
    p = tdata.write_png(tmp_path / "g.png", img, scale=2)  # scoresolve.io.image's writer (Pillow or zlib)
    from scoresolve.io.image import read_png

    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert torch.equal(read_png(p), img.repeat_interleave(2, 0).repeat_interleave(2, 1))


# --- trainer -----------------------------------------------------------------------------------
def _ring_data(n: int = 2000) -> torch.Tensor:
    return tdata.toy2d("ring", n, seed=0)[0]


def _tiny_trainer(x: torch.Tensor, **kw) -> Trainer:
    torch.manual_seed(0)
    net = MLP((2,), hidden=32, depth=2, embed_dim=16)
    opts = dict(batch_size=64, lr=2e-3, warmup=10, ema_decay=0.99, log_every=10)
    opts.update(kw)
    return Trainer(net, ss.VPSDE(), x, **opts)


def _state_equal(a: Trainer, b: Trainer) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    same = all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    same &= all(torch.equal(sa["ema"][k], sb["ema"][k]) for k in sa["ema"])
    oa, ob = sa["optimizer"]["state"], sb["optimizer"]["state"]
    same &= all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])
    return same and a.step == b.step and a.losses == b.losses and torch.equal(a.gen.get_state(), b.gen.get_state())


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    x = _ring_data()
    full = _tiny_trainer(x)
    full.train(60)
    ck = tmp_path / "ck.pt"
    part = _tiny_trainer(x)
    part.train(60, checkpoint=ck, stop_at=27)  # "interrupted" at step 27, checkpoint written
    torch.manual_seed(12345)  # a fresh process would have other global RNG state
    resumed = _tiny_trainer(x)
    resumed.load_checkpoint(ck)
    assert resumed.step == 27
    resumed.train(60)
    assert _state_equal(full, resumed)
    # and the checkpoint is a model file too: io.load picks its EMA weights
    m = load(ck)
    assert m.metadata["weights"] == "ema"
    t = torch.full((5,), 0.3)
    xx = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(m(xx, t), part.score_model()(xx, t))


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    x = _ring_data(200)
    a = _tiny_trainer(x)
    a.train(5, checkpoint=tmp_path / "c.pt")
    b = _tiny_trainer(x, lr=1e-2)
    with pytest.raises(CheckpointError, match="other settings.*lr"):
        b.load_checkpoint(tmp_path / "c.pt")


def test_checkpoint_write_failure_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = _ring_data(200)
    a = _tiny_trainer(x)
    ck = tmp_path / "c.pt"
    a.train(5, checkpoint=ck)
    before = ck.read_bytes()
    import scoresolve.train.trainer as trmod

    def broken_save(obj, f):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trmod.torch, "save", broken_save)
    with pytest.raises(CheckpointError, match="No space left"):
        a.train(10, checkpoint=ck)
    monkeypatch.undo()
    assert ck.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    b = _tiny_trainer(x)
    b.load_checkpoint(ck)
    assert b.step == 5


def test_trainer_accepts_a_dataset_and_validates_options() -> None:
    x = _ring_data(100)

    class Pairs(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int):
            return x[i], 0

    a = _tiny_trainer(Pairs())
    b = _tiny_trainer(x)
    a.train(5)
    b.train(5)
    assert _state_equal(a, b)  # a Dataset of (x, label) pairs is read exactly like the tensor
    with pytest.raises(TypeError, match="unknown option 'learning_rate'"):
        _tiny_trainer(x, learning_rate=1e-3)
    with pytest.raises(ValueError, match="loss must be one of"):
        _tiny_trainer(x, loss="l2")
    # the other losses run through the trainer too
    for loss, par in (("ddpm", "eps"), ("ssm", "score"), ("dsm", "denoiser")):
        t = _tiny_trainer(x, loss=loss, parameterization=par, batch_size=16)
        t.train(3)
        assert t.step == 3


def _ring_quality(model: ss.ScoreModel, mix, n: int, steps: int) -> tuple[float, float, torch.Tensor]:
    s = ss.sample(model, model.sde, "pc", steps, corrector="none", batch_size=n,
                  generator=torch.Generator().manual_seed(1))
    mean, cov = mix.moments()
    fd = frechet_to_moments(s, mean, cov)
    floor, _ = frechet_floor(lambda k, g: mix.sample(k, g), mean, cov, n, draws=50)
    return fd, floor, mode_weights(mix.labels(s), mix.n_components)


def test_2d_model_learns_the_ring_quick() -> None:
    # ~15 s: 500 steps of a small MLP on the 8-mode ring (VP, ε, DSM), 1000 samples by reverse diffusion.
    x, mix = tdata.toy2d("ring", 20000, seed=0)
    torch.manual_seed(0)
    tr = Trainer(MLP((2,), hidden=64, depth=3), ss.VPSDE(), x, batch_size=256, lr=3e-3, warmup=50,
                 ema_decay=0.99, log_every=50)
    tr.train(500)
    assert tr.losses[-1] < 0.6 * tr.losses[0]  # loss decreases (window means of 50 steps)
    fd, floor, w = _ring_quality(tr.score_model(), mix, 1000, 100)
    # tolerances: an untrained/collapsed model scores FD ~ 1-4 (ring of radius 2); exact samples ~4e-3;
    # mode weights of 1000 exact samples have s.d. ≈ 0.010 per mode
    assert fd < 10 * floor, (fd, floor)
    assert float((w - 1 / 8).abs().max()) < 0.05, w


@pytest.mark.slow
def test_2d_model_acceptance_two_minutes() -> None:
    # the acceptance run: ≤ 2 min of CPU training, then 2000 samples with 500 reverse-diffusion steps
    x, mix = tdata.toy2d("ring", 20000, seed=0)
    torch.manual_seed(0)
    tr = Trainer(MLP((2,), hidden=128, depth=3), ss.VPSDE(), x, batch_size=256, lr=2e-3, warmup=100,
                 ema_decay=0.999, log_every=100)
    tr.train(2500)
    assert tr.losses[-1] < 0.5 * tr.losses[0]
    fd, floor, w = _ring_quality(tr.score_model(), mix, 2000, 500)
    # FD within 2× the exact-sample floor (≈ 2e-3 at n = 2000); every mode weight within 0.03 of 1/8
    # (s.d. of an exact sample's weight ≈ 0.0074: 4 s.d.); total variation ≤ 0.05
    assert fd < 2 * floor, (fd, floor)
    assert float((w - 1 / 8).abs().max()) < 0.03, w
    assert 0.5 * float((w - 1 / 8).abs().sum()) < 0.05, w


# --- CLI ---------------------------------------------------------------------------------------
def test_cli_trains_saves_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scoresolve.train.__main__ import main

    out = tmp_path / "run"
    argv = ["--data", "ring", "--sde", "subvp", "--steps", "20", "--batch-size", "32", "--warmup", "5",
            "--hidden", "16", "--depth", "1", "--out", str(out), "--checkpoint-every", "10", "--no-progress"]
    main(argv)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 20
    m = load(out)
    assert isinstance(m.sde, ss.SubVPSDE) and m.sample_shape == (2,) and m.metadata["config"]["extra"]["step"] == 20
    argv[argv.index("--steps") + 1] = "30"
    main(argv)
    printed = capsys.readouterr().out
    assert "resuming from" in printed and json.loads(printed.strip().splitlines()[-1])["step"] == 30


def test_periodic_sample_grids(tmp_path: Path) -> None:
    from scoresolve.train.trainer import save_sample_grid

    imgs = torch.rand(32, 1, 8, 8) * 2 - 1
    torch.manual_seed(0)
    tr = Trainer(UNet(base_channels=8, channel_mults=(1, 2)), ss.VPSDE(), imgs, batch_size=8, warmup=2,
                 data_range=(-1.0, 1.0))
    state = tr.gen.get_state()
    tr.train(4, sample_every=2, sample_fn=lambda t: save_sample_grid(t, tmp_path / f"s{t.step}.png", n=4, steps=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s2.png", "s4.png"]
    assert (tmp_path / "s4.png").read_bytes()[:4] == b"\x89PNG"
    # sampling used its own generator: the training stream advanced exactly as without grids
    tr2 = Trainer(UNet(base_channels=8, channel_mults=(1, 2)), ss.VPSDE(), imgs, batch_size=8, warmup=2)
    tr2.gen.set_state(state)
    for _ in range(4):
        torch.randint(32, (8,), generator=tr2.gen)
        torch.rand(8, generator=tr2.gen, dtype=torch.float64)
        torch.randn(8, 1, 8, 8, generator=tr2.gen)
    assert torch.equal(tr2.gen.get_state(), tr.gen.get_state())
