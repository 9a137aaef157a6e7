"""The progress helper (scoresolve.progress) on every long operation, and the one PNG writer
(scoresolve.io.image)."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import pytest
import torch

import scoresolve as ss
from scoresolve import progress as prog
from scoresolve.io import image

ROOT = Path(__file__).resolve().parent.parent


# --- progress -------------------------------------------------------------------------------------
def test_enabled_follows_the_argument_then_the_environment(monkeypatch):
    monkeypatch.setenv(prog.ENV, "0")
    assert not prog.enabled(None) and prog.enabled(True) and not prog.enabled(False)
    monkeypatch.setenv(prog.ENV, "1")
    assert prog.enabled(None)
    monkeypatch.delenv(prog.ENV)
    assert prog.enabled(None)  # shown by default, terminal or not
    with pytest.raises(TypeError, match="progress must be True, False or None"):
        prog.enabled("yes")


def _mixture():
    sde = ss.VPSDE()
    return ss.analytic.digits().score_model(sde), sde


def test_sample_shows_a_bar_by_default_off_a_terminal_and_ends_with_its_cost(monkeypatch, capsys):
    monkeypatch.delenv(prog.ENV, raising=False)  # pytest's stderr is not a terminal: shown anyway
    score, sde = _mixture()
    res = ss.sample(score, sde, solver="dpmpp_2m", nfe=6, shape=(4, 1, 8, 8), return_result=True)
    err = capsys.readouterr().err
    assert "scoresolve dpmpp_2m" in err and "6/6" in err
    assert re.search(rf"{res.nfe} evaluations, \d+\.\d s", err), err[-500:]
    ss.sample(score, sde, solver="dpmpp_2m", nfe=6, shape=(4, 1, 8, 8), progress=False)
    assert capsys.readouterr().err == ""


def test_likelihood_calibration_and_inpainting_report_their_cost(capsys):
    score, sde = _mixture()
    x = ss.analytic.digits().sample(3, torch.Generator().manual_seed(0))
    res = ss.likelihood(score, sde, x, method="adams", steps=8, progress=True)
    err = capsys.readouterr().err
    assert "likelihood of 3 samples (adams)" in err and f"{res.nfe} evaluations" in err

    from scoresolve.calibrate import calibrate_grid

    cg = calibrate_grid(score, sde, "dpmpp_2m", 4, shape=(1, 8, 8), n_samples=16, teacher_steps=20, max_evals=6,
                        progress=True)
    err = capsys.readouterr().err
    assert "calibrating the" in err and f"{cg.nfe:,} evaluations" in err

    from scoresolve.conditional import inpaint

    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :4] = True
    out = inpaint(score, sde, x, mask, steps=5, particles=4, generator=torch.Generator().manual_seed(0),
                  return_result=True, progress=True)
    err = capsys.readouterr().err
    assert "conditional sampling (SMC, 4 particles x 3)" in err and f"{out.nfe} evaluations" in err
    inpaint(score, sde, x, mask, steps=5, particles=4, progress=False)
    assert capsys.readouterr().err == ""


def test_training_prints_loss_lines_when_not_on_a_terminal(capsys):
    from scoresolve.train import Trainer
    from scoresolve.train.nets import MLP

    data = torch.randn(256, 2)
    tr = Trainer(MLP(sample_shape=(2,), hidden=16, depth=1), ss.VPSDE(), data, batch_size=32, seed=0,
                 device="cpu")
    tr.train(40, progress=True)
    err = capsys.readouterr().err
    assert "train: step 40/40, loss" in err  # a line every 5 % of the run, for log files
    assert re.search(r"40 steps, .*\d+\.\d s", err), err[-400:]


# --- images ---------------------------------------------------------------------------------------
def test_grid_has_grey_gutters_and_maps_the_range_to_black_white():
    x = torch.stack([torch.full((1, 2, 2), -1.0), torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 3.0)])
    g = image.image_grid(x, nrow=3, pad=1)
    assert g.shape == (4, 10, 1) and g.dtype == torch.uint8
    assert int(g[0, 0, 0]) == image.GUTTER and int(g[1, 3, 0]) == image.GUTTER  # border and between tiles
    assert int(g[1, 1, 0]) == 0 and int(g[1, 4, 0]) == 255 and int(g[1, 7, 0]) == 255  # low black, clipped
    with pytest.raises(ValueError, match="image samples"):
        image.image_grid(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="data_range"):
        image.image_grid(x, data_range=(1, 1))


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip_with_either_encoder(tmp_path, channels, monkeypatch):
    img = torch.randint(0, 256, (7, 5, channels), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    p = image.write_png(tmp_path / "sub" / "a.png", img, scale=2)
    want = img.repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(image.read_png(p), want)
    # the zlib fallback (what runs without Pillow): filter type 0 on every row, read back exactly
    monkeypatch.setattr(image, "_encode_pillow", lambda a: None)
    q = image.write_png(tmp_path / "b.png", img)
    raw = q.read_bytes()
    idat = raw.index(b"IDAT")
    n = int.from_bytes(raw[idat - 4: idat], "big")
    rows = torch.frombuffer(bytearray(zlib.decompress(raw[idat + 4: idat + 4 + n])), dtype=torch.uint8)
    assert (rows.reshape(7, 5 * channels + 1)[:, 0] == 0).all()
    assert torch.equal(image._unfilter(zlib.decompress(raw[idat + 4: idat + 4 + n]), 7, 5, channels), img)
    with pytest.raises(ValueError, match="uint8"):
        image.write_png(tmp_path / "c.png", img.float())


def test_unfilter_decodes_every_png_filter():
    # rows encoded with filters 1-4 by hand (the encoders Pillow may choose), decoded back
    rng = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (5, 4, 3), generator=rng, dtype=torch.int32)
    c, stride = 3, 12
    prev = torch.zeros(stride, dtype=torch.int32)
    raw = b""
    for y, f in enumerate([1, 2, 3, 4, 0]):
        line = img[y].reshape(-1)
        left = torch.cat([torch.zeros(c, dtype=torch.int32), line[:-c]])
        ul = torch.cat([torch.zeros(c, dtype=torch.int32), prev[:-c]])
        if f == 1:
            pred = left
        elif f == 2:
            pred = prev
        elif f == 3:
            pred = (left + prev) // 2
        elif f == 4:
            pa, pb, pc = (prev - ul).abs(), (left - ul).abs(), (left + prev - 2 * ul).abs()
            pred = torch.where((pa <= pb) & (pa <= pc), left, torch.where(pb <= pc, prev, ul))
        else:
            pred = torch.zeros_like(line)
        raw += bytes([f]) + bytes(((line - pred) % 256).to(torch.uint8).tolist())
        prev = line
    assert torch.equal(image._unfilter(raw, 5, 4, 3), img.to(torch.uint8))


def test_no_png_encoder_outside_the_image_module():
    # one writer: no other file of the package or the examples builds PNG chunks itself
    files = [*(ROOT / "scoresolve").rglob("*.py"), *(ROOT / "examples").glob("*.py")]
    for f in files:
        if f.name == "image.py" and f.parent.name == "io":
            continue
        text = f.read_text(encoding="utf-8")
        assert "IHDR" not in text and "zlib.compress" not in text, f"{f.relative_to(ROOT)} encodes PNGs itself"
        assert "savefig" not in text, f"{f.relative_to(ROOT)} writes images through matplotlib"
