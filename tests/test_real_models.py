"""The 28×28 MNIST pieces: the bundled model and classifier, the MNIST idx reader, the Pulfer DDPM reader,
and the machinery of ``benchmarks/real_models.py`` on a tiny configuration."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import struct
import sys
from pathlib import Path

import pytest
import torch

import scoresolve as ss

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "real_models.py"


# --- the bundled MNIST model and classifier ----------------------------------------------------------------


def test_bundled_mnist_model_loads_with_its_sde_and_shape():
    from scoresolve.io import BUNDLED, load

    assert BUNDLED["mnist"].stat().st_size <= 8_000_000
    model = load("mnist")
    assert model.sample_shape == (1, 28, 28)
    assert isinstance(model.sde, ss.VPSDE) and (model.sde.beta_min, model.sde.beta_max) == (0.1, 20.0)
    assert model.parameterization == "eps" and tuple(model.data_range) == (-1.0, 1.0)


def test_bundled_mnist_samples_look_like_digits():
    from scoresolve.io import load
    from scoresolve.metrics.classifier import load_classifier

    model = load("mnist")
    x = ss.sample(model, solver="dpmpp_2m", nfe=10, batch_size=32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p = load_classifier(name="mnist")(x.clamp(-1, 1)).softmax(1)
    conf, label = p.max(1)
    # chance is 0.1 and one class; held-out MNIST images score 0.98 on average; pure-noise images ~0.5
    assert float(conf.mean()) > 0.6
    assert len(set(label.tolist())) >= 5
    # MNIST is mostly background: about 80 % of a real image's pixels are below -0.5; noise images ~25 %
    background = (x < -0.5).float().mean((1, 2, 3))
    assert float(background.median()) > 0.6


def test_mnist_classifier_is_small_accurate_and_carries_held_out_moments():
    from scoresolve.metrics.classifier import CLASSIFIERS, classifier_metadata, reference_moments

    assert CLASSIFIERS["mnist"].weights.stat().st_size < 1_000_000
    assert float(classifier_metadata(name="mnist")["test_accuracy"]) >= 0.97  # on the 2,000 held-out images
    mean, cov, n = reference_moments("mnist")
    assert mean.shape == (64,) and cov.shape == (64, 64) and n == 2000
    assert torch.allclose(cov, cov.T) and torch.linalg.eigvalsh(cov).min() > -1e-9
    with pytest.raises(ValueError, match="unknown classifier"):
        reference_moments("cifar")


# --- MNIST files ------------------------------------------------------------------------------------------


def _idx(path: Path, a: torch.Tensor, compress: bool = True, truncate: int = 0) -> Path:
    raw = b"\x00\x00\x08" + bytes([a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.numpy().tobytes()
    raw = raw[: len(raw) - truncate]
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def test_mnist_reader_splits_scales_and_checks(tmp_path):
    from scoresolve.train.data import mnist, read_idx

    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (8010, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (8010,), generator=g, dtype=torch.uint8)
    f = _idx(tmp_path / "my-t10k-images-idx3-ubyte.gz", imgs)
    _idx(tmp_path / "my-t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(ValueError, match="sha256"):  # published names are checked against the published digests
        mnist(f, "test")
    x, y = mnist(f, "test", labels=True, check=False)
    assert x.shape == (10, 1, 28, 28) and x.dtype == torch.float32 and y.tolist() == labels[8000:].long().tolist()
    assert torch.allclose(x, imgs[8000:, None].float() * (2 / 255) - 1, atol=1e-6)
    assert mnist(tmp_path, "train", check=False).shape == (8000, 1, 28, 28)  # the folder works too
    assert torch.equal(read_idx(_idx(tmp_path / "plain", labels, compress=False)), labels)
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(_idx(tmp_path / "short", labels, truncate=3))
    with pytest.raises(ValueError, match="split must be"):
        mnist(f, "validation", check=False)
    with pytest.raises(FileNotFoundError, match="labels"):
        mnist(_idx(tmp_path / "other-images-idx3-ubyte", imgs[:5], compress=False), labels=True, check=False)


# --- the Pulfer DDPM reader -------------------------------------------------------------------------------


def test_pulfer_reader_rebuilds_the_network_and_refuses_other_files(tmp_path):
    from scoresolve.adapters.pulfer import PulferUNet, load_pulfer_ddpm
    from scoresolve.io import CheckpointError

    torch.manual_seed(0)
    net = PulferUNet()
    state = {f"network.{k}": v for k, v in net.state_dict().items()}
    torch.save(state, tmp_path / "ddpm.pt")
    model = load_pulfer_ddpm(tmp_path / "ddpm.pt")
    x = torch.randn(3, 1, 28, 28)
    tm = model.metadata["time_map"]
    t = tm.t_of_timestep(torch.tensor([0, 500, 999])).float()
    eps = net(x, torch.tensor([0, 500, 999]))
    assert torch.allclose(model(x, t), -eps / model.sde.marginal_std(t)[:, None, None, None], rtol=1e-4, atol=1e-5)
    clipped = load_pulfer_ddpm(tmp_path / "ddpm.pt", clip_x0=True)
    x0 = clipped.raw(x, t)  # the clamped Tweedie estimate the clipped model is built on
    assert x0.abs().max() <= 1 and torch.equal(x0, model.x0(x, t).clamp(-1, 1))
    state["network.b2.0.conv1.weight"] = torch.zeros(21, 10, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="b2.0.conv1.weight"):
        load_pulfer_ddpm(tmp_path / "bad.pt")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a Pulfer DDPM"):
        load_pulfer_ddpm(tmp_path / "other.pt")


@pytest.mark.skipif(not os.environ.get("SCORESOLVE_PULFER_DDPM"), reason="set SCORESOLVE_PULFER_DDPM to the file")
def test_pulfer_file_loads():
    from scoresolve.adapters.pulfer import load_pulfer_ddpm

    model = load_pulfer_ddpm(os.environ["SCORESOLVE_PULFER_DDPM"], clip_x0=True)
    assert model.sample_shape == (1, 28, 28) and sum(p.numel() for p in model.metadata["network"].parameters()) > 5e5


# --- the benchmark ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("real_models_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_real_models_benchmark_tiny_run_pairs_caches_and_reports(bench, tmp_path):
    if sys.modules["nfe_vs_fid"].peer_available("k_diffusion:dpmpp_2m") is not None:
        pytest.skip("k-diffusion's sampling module is not importable here")
    argv = ["--model", "digits", "--n", "12", "--seeds", "1", "--nfe", "5", "--no-plot", "--out", str(tmp_path),
            "--solvers", "dpmpp_2m,ipndm[grid=log_snr],auto,pc,k_diffusion:dpmpp_2m"]
    res = bench.main(argv)
    rows = {r["solver"]: r for r in res["summary"]}
    assert set(rows) == {"dpmpp_2m", "ipndm[grid=log_snr]", "auto[calibrate=False]", "pc", "k_diffusion:dpmpp_2m"}
    teacher = res["teachers"]["digits"]["0"]
    assert not teacher["cached"] and teacher["teacher_nfe"] > 20
    from safetensors.torch import load_file

    x = load_file(teacher["file"])["samples"]
    unpaired = float((x - x.roll(1, 0)).pow(2).mean().sqrt())  # RMS distance of independent samples
    for name in ("dpmpp_2m", "ipndm[grid=log_snr]", "auto[calibrate=False]", "k_diffusion:dpmpp_2m"):
        r = rows[name]
        assert r["nfe"] == 5 and r["teacher_ratio"] > 0 and r["calibration_seconds"] == 0 and r["sampling_seconds"] > 0
    # started from the teacher's prior noise (ours and the peer): closer to its samples than independent draws
    assert rows["dpmpp_2m"]["rmse"] < 0.5 * unpaired and rows["k_diffusion:dpmpp_2m"]["rmse"] < 0.75 * unpaired
    assert rows["pc"].get("rmse") is None  # stochastic: no pairing
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["summary"] and "FD / teacher FD" in (tmp_path / "results.md").read_text()
    again = bench.main(argv)
    assert again["teachers"]["digits"]["0"]["cached"]
    assert again["teachers"]["digits"]["0"]["teacher_fd"] == teacher["teacher_fd"]


def test_real_models_benchmark_input_errors(bench, tmp_path, monkeypatch):
    monkeypatch.delenv(bench.PULFER_ENV, raising=False)
    with pytest.raises(bench.BenchError, match="unknown solver"):
        bench.main(["--model", "digits", "--solvers", "dpmpp2m", "--out", str(tmp_path)])
    with pytest.raises(bench.BenchError, match="cannot load --model"):
        bench.main(["--model", "nosuchmodel", "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="SCORESOLVE_PULFER_DDPM"):
        bench.load_real_model("pulfer")
