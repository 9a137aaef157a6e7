"""Checkpoint saving/loading: round trips (file, directory, offline Hub cache) and every bad input."""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import scoresolve as ss
from scoresolve import _util as util_mod
from scoresolve.io import CheckpointError, load, read_config, save, save_pretrained
from scoresolve.io import checkpoint as ckpt_mod
from scoresolve.train.nets import MLP, UNet

torch.set_num_threads(1)


def _model(seed: int = 0, hidden: int = 32) -> ss.ScoreModel:
    torch.manual_seed(seed)
    net = MLP(sample_shape=(2,), hidden=hidden, depth=2, embed_dim=16)
    for p in net.parameters():  # non-trivial weights everywhere
        p.data.normal_(0, 0.3)
    return ss.ScoreModel(net, ss.VPSDE(beta_min=0.2, beta_max=15.0), sample_shape=(2,), parameterization="eps",
                         data_range=(-2.0, 2.0))


def _probe(model: ss.ScoreModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, *model.sample_shape, generator=g)
    t = torch.rand(16, generator=g) * 0.99 + 0.01
    with torch.no_grad():
        return model(x, t)


def _same(a: ss.ScoreModel, b: ss.ScoreModel) -> None:
    assert torch.equal(_probe(a), _probe(b))
    assert a.sde == b.sde and a.sample_shape == b.sample_shape
    assert a.parameterization == b.parameterization and tuple(a.data_range) == tuple(b.data_range)


def test_file_round_trip_is_exact(tmp_path: Path) -> None:
    m = _model()
    p = save(m, tmp_path / "m.safetensors", extra={"steps": 7})
    m2 = load(p)
    _same(m, m2)
    cfg = read_config(p)
    assert cfg["architecture"] == "mlp" and cfg["sde"] == m.sde.config() and cfg["extra"] == {"steps": 7}
    assert m2.metadata["config"]["arch_kwargs"]["hidden"] == 32


def test_unet_round_trip_and_pretrained_dir(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = UNet(base_channels=8, channel_mults=(1, 2), attn_resolutions=(4,))
    for p in net.parameters():
        p.data.normal_(0, 0.1)
    m = ss.ScoreModel(net, ss.VESDE(sigma_min=0.01, sigma_max=20.0), sample_shape=(1, 8, 8), parameterization="score")
    d = save_pretrained(m, tmp_path / "repo")
    assert (d / "model.safetensors").is_file()
    assert json.loads((d / "config.json").read_text())["architecture"] == "unet"
    m2 = load(d)
    assert isinstance(m2.fn, UNet)
    _same_u = torch.equal(_probe(m), _probe(m2))
    assert _same_u and m2.sde == m.sde
    # save() to a non-.safetensors path is save_pretrained
    d2 = save(m, tmp_path / "repo2")
    assert torch.equal(_probe(load(d2)), _probe(m))


def test_half_precision_storage(tmp_path: Path) -> None:
    m = _model()
    p = save(m, tmp_path / "h.safetensors", dtype=torch.float16)
    m2 = load(p)
    assert next(m2.fn.parameters()).dtype == torch.float32
    a, b = _probe(m), _probe(m2)
    assert not torch.equal(a, b) and torch.allclose(a, b, rtol=0.02, atol=0.02 * a.abs().max().item())
    # parameters are stored in float16, buffers (the time embedding's frequencies) as they are
    with safe_open(str(p), "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
    buffers = {k for k, _ in m.fn.named_buffers()}
    assert buffers and all(dtypes[k] == torch.float32 for k in buffers if dtypes[k].is_floating_point)
    assert all(dtypes[k] == torch.float16 for k, _ in m.fn.named_parameters())
    assert all(torch.equal(b, dict(m2.fn.named_buffers())[k]) for k, b in m.fn.named_buffers())


def test_ema_weights_selected_when_present(tmp_path: Path) -> None:
    m_raw, m_ema = _model(0), _model(1)
    cfg = read_config(save(m_raw, tmp_path / "ref.safetensors"))
    both = {f"model.{k}": v for k, v in m_raw.fn.state_dict().items()}
    both |= {f"ema.{k}": v for k, v in m_ema.fn.state_dict().items()}
    save_file(both, str(tmp_path / "both.safetensors"), metadata={"scoresolve": json.dumps(cfg)})
    assert torch.equal(_probe(load(tmp_path / "both.safetensors")), _probe(m_ema))
    assert torch.equal(_probe(load(tmp_path / "both.safetensors", use_ema=False)), _probe(m_raw))
    # a trainer-style torch checkpoint {config, model, ema, ...} loads with weights_only=True
    torch.save({"config": json.dumps(cfg), "model": m_raw.fn.state_dict(), "ema": m_ema.fn.state_dict(), "step": 3},
               tmp_path / "c.pt")
    assert torch.equal(_probe(load(tmp_path / "c.pt")), _probe(m_ema))
    assert torch.equal(_probe(load(tmp_path / "c.pt", use_ema=False)), _probe(m_raw))
    # a bare state dict needs config=
    torch.save(m_raw.fn.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="config="):
        load(tmp_path / "sd.pt")
    assert torch.equal(_probe(load(tmp_path / "sd.pt", config=cfg)), _probe(m_raw))


def _hub_cache(root: Path, repo: str, files: Path, sha: str = "a" * 40) -> None:
    org, name = repo.split("/")
    base = root / f"models--{org}--{name}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(sha)
    snap = base / "snapshots" / sha
    snap.mkdir(parents=True)
    for f in files.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_offline_hub_cache_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    m = _model()
    save_pretrained(m, tmp_path / "export")
    cache = tmp_path / "hub"
    _hub_cache(cache, "someorg/tiny-2d", tmp_path / "export")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m2 = load("someorg/tiny-2d")
    _same(m, m2)
    # explicit local_files_only / cache_dir work without the environment too
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_HUB_CACHE")
    _same(m, load("someorg/tiny-2d", local_files_only=True, cache_dir=cache))


def test_offline_hub_missing_says_how_to_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               no_network: None) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"not in .*offline.*hf download someorg/absent"):
        load("someorg/absent")


def test_not_found_name() -> None:
    with pytest.raises(FileNotFoundError, match="not a bundled model"):
        load("no_such_model_anywhere")


def test_truncated_and_corrupted_files(tmp_path: Path) -> None:
    p = save(_model(), tmp_path / "m.safetensors")
    raw = p.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load(tmp_path / "trunc.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load(tmp_path / "garbage.safetensors")
    cfg = read_config(p)
    torch.save({"config": json.dumps(cfg), "model": _model().fn.state_dict()}, tmp_path / "c.pt")
    raw = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c_trunc.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load(tmp_path / "c_trunc.pt")


_SIDE_EFFECT: list[str] = []


def _mark() -> str:
    _SIDE_EFFECT.append("ran")
    return "pwned"


class _Evil:
    def __reduce__(self):
        return (_mark, ())


def test_pickle_with_arbitrary_globals_is_refused(tmp_path: Path) -> None:
    cfg = read_config(save(_model(), tmp_path / "m.safetensors"))
    torch.save({"config": json.dumps(cfg), "model": _model().fn.state_dict(), "extra": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing to load.*never falls back"):
        load(tmp_path / "evil.pt")
    assert _SIDE_EFFECT == []


def test_config_weights_mismatch_names_keys_and_shapes(tmp_path: Path) -> None:
    m = _model()
    cfg = read_config(save(m, tmp_path / "m.safetensors"))
    sd = dict(m.fn.state_dict())
    # wrong shapes: the config says hidden=32, the weights come from hidden=48
    big = _model(hidden=48).fn.state_dict()
    save_file(dict(big), str(tmp_path / "shape.safetensors"), metadata={"scoresolve": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match=r"wrong shapes: .*inp\.weight: checkpoint \(48, 2\) vs model \(32, 2\)"):
        load(tmp_path / "shape.safetensors")
    missing = {k: v for k, v in sd.items() if k != "out.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata={"scoresolve": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match=r"missing keys: out\.bias"):
        load(tmp_path / "missing.safetensors")
    extra = {**sd, "bogus.weight": torch.zeros(3)}
    save_file(extra, str(tmp_path / "extra.safetensors"), metadata={"scoresolve": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: bogus\.weight"):
        load(tmp_path / "extra.safetensors")


def test_unknown_architecture_and_bad_config(tmp_path: Path) -> None:
    m = _model()
    cfg = read_config(save(m, tmp_path / "m.safetensors"))
    bad = {**cfg, "architecture": "transformer9000"}
    save_file(dict(m.fn.state_dict()), str(tmp_path / "a.safetensors"), metadata={"scoresolve": json.dumps(bad)})
    with pytest.raises(CheckpointError, match="unknown architecture 'transformer9000'.*mlp, unet"):
        load(tmp_path / "a.safetensors")
    bad_sde = {**cfg, "sde": {"type": "WeirdSDE"}}
    save_file(dict(m.fn.state_dict()), str(tmp_path / "s.safetensors"), metadata={"scoresolve": json.dumps(bad_sde)})
    with pytest.raises(CheckpointError, match="unknown SDE type 'WeirdSDE'"):
        load(tmp_path / "s.safetensors")
    save_file(dict(m.fn.state_dict()), str(tmp_path / "none.safetensors"))
    with pytest.raises(CheckpointError, match="no scoresolve config"):
        load(tmp_path / "none.safetensors")


def test_failing_write_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = _model(0)
    p = save(good, tmp_path / "m.safetensors")
    before = p.read_bytes()

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(CheckpointError, match="No space left.*previous file.*unchanged"):
        save(_model(1), p)
    monkeypatch.undo()
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind
    assert torch.equal(_probe(load(p)), _probe(good))


def test_unwritable_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = save(_model(0), tmp_path / "m.safetensors")
    before = p.read_bytes()

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(util_mod.tempfile, "mkstemp", denied)  # the one atomic writer, scoresolve._util
    with pytest.raises(CheckpointError, match="not writable"):
        save(_model(1), p)
    monkeypatch.undo()
    assert p.read_bytes() == before
    with pytest.raises(CheckpointError, match="does not exist"):
        save(_model(1), tmp_path / "nope" / "m.safetensors")
    if os.name == "posix" and os.geteuid() != 0:  # root ignores directory permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(CheckpointError, match="not writable"):
                save(_model(1), ro / "m.safetensors")
        finally:
            ro.chmod(0o700)


def test_a_folder_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for write in (save_pretrained, ckpt_mod.save_pretrained):  # the Hub folder and the plain one
        with pytest.raises(CheckpointError, match=f"cannot create the folder {blocker}"):
            write(_model(0), blocker / "repo")
    with pytest.raises(CheckpointError, match="cannot create the folder"):  # the atomic writer's mkdir= too
        with util_mod.atomic_write(blocker / "sub" / "m.json", error=CheckpointError, mkdir=True):
            pass


def test_save_needs_an_architecture_config(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="arch_name"):
        save(ss.ScoreModel(torch.nn.Linear(2, 2), ss.VPSDE()), tmp_path / "x.safetensors")


def test_io_imports_no_network_code() -> None:
    # re-import scoresolve.io in a clean module table: no Hub client, no training code gets imported
    def ours(name: str) -> bool:
        top = name.split(".")[0]
        return top in ("huggingface_hub", "requests", "httpx") or name.startswith(("scoresolve.io", "scoresolve.train"))

    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if ours(k)}
    saved_attrs = {a: getattr(ss, a) for a in ("io", "train") if a in vars(ss)}
    try:
        importlib.import_module("scoresolve.io")
        bad = [k for k in sys.modules if ours(k) and not k.startswith("scoresolve.io")]
        assert not bad, bad
    finally:
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
        for a in ("io", "train"):
            vars(ss).pop(a, None)
        vars(ss).update(saved_attrs)


@pytest.mark.skipif(not ckpt_mod.BUNDLED["digits"].is_file(), reason="bundled digits model not built yet")
def test_bundled_digits_model_samples() -> None:
    m = load("digits")
    assert m.sample_shape == (1, 8, 8) and m.sde is not None
    x = ss.sample(m, m.sde, solver="pc", steps=20, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
