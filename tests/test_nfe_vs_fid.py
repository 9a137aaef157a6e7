"""The main benchmark, ``benchmarks/nfe_vs_fid.py``: outputs, reproducibility, bad input."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "nfe_vs_fid.py"


def _load():
    spec = importlib.util.spec_from_file_location("nfe_vs_fid_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared: more threads only add contention at this size
    yield _load()
    torch.set_num_threads(threads)


TINY = ["--model", "analytic", "--n", "200", "--nfe", "2,20", "--solvers", "pc,k_diffusion:euler", "--no-plot"]


def _metric_rows(rows):
    return sorted(
        (r["solver"], r.get("budget"), r.get("nfe"), r.get("fd"), r.get("mode_tv"), r.get("loglik"))
        for r in rows
        if "skipped" not in r
    )


def test_tiny_run_writes_outputs_and_is_reproducible(bench, tmp_path):
    a = bench.main([*TINY, "--out", str(tmp_path / "a")])
    b = bench.main([*TINY, "--out", str(tmp_path / "b")])
    # same seed -> the same figures, to the last bit (timings excluded)
    assert _metric_rows(a["rows"]) == _metric_rows(b["rows"])
    for name in ("results.json", "results.md"):
        assert (tmp_path / "a" / name).is_file()
    data = json.loads((tmp_path / "a" / "results.json").read_text())
    assert data["config"]["seed"] == 0 and data["config"]["machine"]["cpu_count"] >= 1
    assert data["config"]["versions"]["torch"]
    ran = [r for r in data["runs"] if "skipped" not in r]
    pc20 = next(r for r in ran if r["solver"] == "pc" and r["budget"] == 20)
    # pc: 2 NFE per step (predictor + corrector) + 1 final denoising step -> 9 steps = 19 NFE counted
    assert pc20["steps"] == 9 and pc20["nfe"] == 19
    # the budget of 2 is below pc's minimum (3 NFE): listed as skipped with the reason
    skipped = [r for r in data["runs"] if r["solver"] == "pc" and r.get("budget") == 2]
    assert skipped and "minimum" in skipped[0]["skipped"]
    ref = data["references"]["analytic"]
    assert ref["fd_floor"] > 0 and ref["floor_draws"] >= 50
    # the peer ran on the same exact score, or is listed with a reason
    peer = [r for r in data["runs"] if r["solver"] == "k_diffusion:euler"]
    assert peer and all(("skipped" in r) or (r["nfe"] == r["budget"]) for r in peer)
    md = (tmp_path / "a" / "results.md").read_text()
    assert "| pc |" in md and "FD / floor" in md


def test_a_different_seed_changes_the_figures(bench, tmp_path):
    a = bench.main([*TINY, "--nfe", "20", "--solvers", "pc", "--out", str(tmp_path / "a")])
    b = bench.main([*TINY, "--nfe", "20", "--solvers", "pc", "--seed", "1", "--out", str(tmp_path / "b")])
    assert _metric_rows(a["rows"]) != _metric_rows(b["rows"])


def test_quality_improves_with_nfe_on_a_deterministic_solver(bench, tmp_path):
    """Against the exact moments: a first-order ODE solver at 5 NFE must be clearly worse than at 100;
    at 100 NFE it should be within a few floors (floor = FD of exact samples of the same size)."""
    from scoresolve.registry import SOLVERS

    name = next((s for s in ("ode_euler", "ddim", "ode_heun") if s in SOLVERS), None)
    if name is None:
        pytest.skip("no deterministic fixed-grid solver registered yet")
    r = bench.main(["--model", "analytic", "--n", "500", "--nfe", "5,100", "--solvers", name, "--no-plot",
                    "--out", str(tmp_path)])
    rows = {x["budget"]: x for x in r["rows"] if "fd" in x}
    assert rows[5]["fd_ratio"] > rows[100]["fd_ratio"]
    assert rows[100]["fd_ratio"] < 3.0
    assert math.isfinite(rows[100]["loglik"])


def test_default_run_puts_ours_beside_the_peers_with_a_line_per_run_and_the_plot_path(bench, tmp_path, capsys):
    """The default preset (the README's first command), on the analytic model only and small: ours and the
    peers at 5, 10, 20 NFE, auto uncalibrated and saying so, one line per finished run, the plot's path."""
    r = bench.main(["--model", "analytic", "--n", "200", "--out", str(tmp_path)])
    cfg = r["config"]
    assert cfg["preset"] == "default" and cfg["nfe_budgets"] == [5, 10, 20]
    assert cfg["solvers"] == list(bench.DEFAULT_SOLVERS)
    ran = [x for x in r["rows"] if "skipped" not in x and not x.get("error")]
    want = {"auto[calibrate=False]", "dpmpp_2m", "unipc"}
    want |= {p for p in ("k_diffusion:dpmpp_2m", "diffusers:ddim") if bench.peer_available(p) is None}
    assert {(s, b) for s in want for b in (5, 10, 20)} <= {(x["solver"], x["budget"]) for x in ran}
    assert all("calibration" not in x for x in ran)  # nothing calibrates in the default run
    out = capsys.readouterr()
    text = out.out + out.err
    assert "uncalibrated grid (calibrate=False)" in text
    assert sum(line.startswith("analytic ") and "FD/floor" in line for line in text.splitlines()) == len(ran)
    if "plot_analytic" in r["files"]:
        assert f"plot (analytic): {r['files']['plot_analytic']}" in out.out


def test_full_and_quick_presets_exclude_each_other(bench, tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--full", "--quick", "--out", str(tmp_path)])
    assert bench.build_parser().parse_args(["--full"]).full


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--solvers", "no_such_solver"], "Registered solvers"),
        (["--solvers", "k_diffusion:nope"], "Peers"),
        (["--nfe", "ten"], "--nfe"),
        (["--model", "no/such-model-here"], "built-in models"),
    ],
)
def test_bad_input_is_a_clear_error(bench, tmp_path, args, message):
    argv = ["--model", "analytic", "--n", "100", "--nfe", "10", "--no-plot", "--out", str(tmp_path), *args]
    with pytest.raises(bench.BenchError, match=message):
        bench.main(argv)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_folder(bench, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(SystemExit, match="not a writable folder"):
        bench.main(["--model", "analytic", "--n", "100", "--nfe", "10", "--out", str(ro / "x")])


def test_out_path_that_is_a_file(bench, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SystemExit, match="not a writable folder"):
        bench.main(["--model", "analytic", "--n", "100", "--nfe", "10", "--out", str(f)])


def test_command_line_reports_errors_with_status_2(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--solvers", "pcc", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert p.returncode == 2
    assert "unknown solver 'pcc'" in p.stderr and "Did you mean 'pc'" in p.stderr


# --- the bundled digits classifier and the feature-space FID -------------------------------------


@pytest.fixture(scope="module")
def digits_fid():
    import torch

    torch.set_num_threads(1)
    from scoresolve.metrics.fid import DigitsFID

    return DigitsFID()


def test_bundled_classifier_is_small_and_accurate_on_held_out_digits():
    import torch

    from scoresolve.metrics.classifier import WEIGHTS, digits_with_labels, load_classifier

    assert WEIGHTS.stat().st_size < 300_000
    x, y = digits_with_labels("test")
    assert x.shape == (359, 1, 8, 8)
    with torch.no_grad():
        acc = float((load_classifier()(x).argmax(1) == y).float().mean())
    # 359 held-out images: 0.97 leaves ~3 standard errors below the 0.989 measured when training
    assert acc >= 0.97


def test_digits_fid_separates_real_from_corrupted_digits(digits_fid):
    import torch

    from scoresolve.metrics.classifier import digits_with_labels

    floor, se = digits_fid.floor(500, draws=50, seed=0)
    assert floor > 0 and se < 0.1 * floor
    train = digits_with_labels("train")[0]
    g = torch.Generator().manual_seed(1)
    real = train[torch.randint(0, train.shape[0], (500,), generator=g)]
    # one real draw of 500 sits near the floor (single draws spread ~ sqrt(50) * se around it)
    assert abs(digits_fid.fid(real) - floor) < 4 * se * 50**0.5
    noisy = (real + 0.5 * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    assert digits_fid.fid(noisy) > 2 * floor
    assert digits_fid.fid(torch.rand(500, 1, 8, 8, generator=g) * 2 - 1) > 10 * floor


def test_inception_fid_never_downloads(tmp_path, monkeypatch):
    import torch

    from scoresolve.metrics import fid

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        fid._inception_weights(None)
    with pytest.raises(FileNotFoundError, match="not a file"):
        fid._inception_weights(tmp_path / "missing.pth")


def test_trained_model_path_scores_with_classifier_fid(bench, tmp_path, monkeypatch, digits_fid):
    """The benchmark's trained-model path, with the exact mixture standing in for a trained network."""
    import scoresolve as ss

    monkeypatch.setattr(bench, "_load_model", lambda spec: ss.analytic.digits().score_model(ss.VPSDE()))
    r = bench.main(["--model", "stand-in", "--n-trained", "400", "--nfe", "3,20", "--solvers", "ode_euler", "--no-plot",
                    "--out", str(tmp_path)])
    rows = {x["budget"]: x for x in r["rows"] if "fid" in x}
    ref = r["references"]["stand-in"]
    assert ref["fid_floor"] > 0 and ref["n_reference"] == 359
    assert rows[3]["fid_ratio"] > rows[20]["fid_ratio"]
    assert rows[20]["fid_ratio"] < 2.0
