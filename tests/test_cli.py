"""The ``scoresolve`` command line, end to end (subprocesses) and in process for the cheaper checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scoresolve.cli import main, write_png_grid
from scoresolve.registry import SOLVERS

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    path = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-m", "scoresolve", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# --- end to end --------------------------------------------------------------------------------


def test_sample_end_to_end_writes_npz_and_png(tmp_path):
    p = run_cli("sample", "--model", "analytic", "--solver", "pc", "--steps", "5", "--n", "6", "--batch-size", "4",
                "--seed", "3", "--out", str(tmp_path / "s"), "--threads", "1", "--quiet")
    assert p.returncode == 0, p.stderr
    z = np.load(tmp_path / "s.npz")
    assert z["samples"].shape == (6, 1, 8, 8) and np.isfinite(z["samples"]).all()
    assert z["seeds"].tolist() == [3, 4, 5, 6, 7, 8]
    cfg = json.loads(str(z["config"]))
    assert cfg["solver"] == "pc" and cfg["nfe_per_batch"] == 5 * 2 + 1  # predictor + corrector, + denoise
    # 6 images of 8x8 scaled 4x in a 3x2 grid with 2-pixel grey gutters
    assert _png_size(tmp_path / "s.png") == (3 * 34 + 2, 2 * 34 + 2)

    # every sample depends only on its seed: another batch size gives the same samples (the noise is
    # identical; float32 matrix products may round differently with the batch size, hence 1e-5)
    main(["sample", "--model", "analytic", "--solver", "pc", "--steps", "5", "--n", "6", "--batch-size", "6",
          "--seed", "3", "--npz", str(tmp_path / "t.npz"), "--quiet"])
    np.testing.assert_allclose(np.load(tmp_path / "t.npz")["samples"], z["samples"], rtol=0, atol=1e-5)
    # a different first seed gives different samples
    main(["sample", "--model", "analytic", "--solver", "pc", "--steps", "5", "--n", "6", "--seed", "4",
          "--npz", str(tmp_path / "u.npz"), "--quiet"])
    u = np.load(tmp_path / "u.npz")["samples"]
    np.testing.assert_allclose(u[:5], z["samples"][1:], rtol=0, atol=1e-5)  # seeds 4..8 are shared
    assert np.abs(u[5] - z["samples"][0]).max() > 0.1


def test_existing_output_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "s.npz").write_bytes(b"keep")
    with pytest.raises(SystemExit) as e:
        main(["sample", "--model", "analytic", "--n", "2", "--steps", "2", "--out", str(tmp_path / "s"), "--quiet"])
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "s.npz").read_bytes() == b"keep"


def test_solvers_lists_every_registered_solver_with_declarations():
    p = run_cli("solvers", "--json")
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert set(rows) == set(SOLVERS.names())
    assert rows["pc"]["nfe_per_step"] == 2 and rows["pc"]["stochastic"] is True and rows["pc"]["order"] == 0.5
    for r in rows.values():
        assert r["adaptive"] or isinstance(r["nfe_per_step"], int)


def test_bench_forwards_to_the_benchmark_script(tmp_path):
    p = run_cli("bench", "--solvers", "pcc", "--no-such-option-of-ours", "--out", str(tmp_path))
    # scoresolve forwards unknown options; the script's own parser rejects them
    assert p.returncode == 2 and "unrecognized arguments: --no-such-option-of-ours" in p.stderr


def test_unknown_command_and_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["sample", "--no-such-option", "1"])
    assert e.value.code == 2 and "unrecognized arguments: --no-such-option" in capsys.readouterr().err


# --- in process --------------------------------------------------------------------------------


def test_help_explains_every_option(capsys):
    for cmd in ("sample", "likelihood", "solvers", "bench"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"]) if cmd != "bench" else main([cmd, "-h"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        # every option line of argparse's help carries an explanation
        from scoresolve.cli import build_parser

        sub = build_parser()._subparsers._group_actions[0].choices[cmd]  # type: ignore[union-attr]
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{cmd} {action.option_strings} has no help text"
                assert action.option_strings[-1] in out


def test_solvers_table(capsys):
    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    for name in SOLVERS.names():
        assert name in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "--model", "analytic", "--solver", "pcc", "--n", "2"], "Did you mean 'pc'"),
        (["sample", "--model", "analytic:nope", "--n", "2"], "unknown analytic model"),
        (["sample", "--model", "./no/such/file.safetensors", "--n", "2"], "Built-in choices"),
        (["sample", "--model", "analytic", "--n", "0"], "--n must be >= 1"),
        (["sample", "--model", "analytic", "--n", "2", "-o", "snr"], "key=value"),
        (["bench", "--name", "no_such_benchmark"], "unknown benchmark"),
    ],
)
def test_bad_input_messages(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_bench_list(capsys):
    assert main(["bench", "--list"]) == 0
    assert "nfe_vs_fid" in capsys.readouterr().out.split()


def test_likelihood_on_the_analytic_mixture(capsys):
    try:
        import scoresolve.likelihood  # noqa: F401
    except ImportError:
        pytest.skip("scoresolve.likelihood not in this version")
    assert main(["likelihood", "--model", "analytic:grid2d", "--n", "16", "--trace", "exact", "--rtol", "1e-4",
                 "--atol", "1e-4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 16
    # the PF-ODE likelihood of a 2-D mixture, against the exact NLL: a few hundredths of a nat apart
    assert abs(out["nll_mean"] - out["exact_nll_mean"]) < 0.1


def test_png_grid_rgb_and_errors(tmp_path):
    import torch

    x = torch.rand(5, 3, 4, 6) * 2 - 1
    p = write_png_grid(x, tmp_path / "g.png", nrow=5, pad=0)
    assert _png_size(p) == (30, 4)
    from scoresolve.cli import CLIError

    with pytest.raises(CLIError, match="image samples"):
        write_png_grid(torch.zeros(4, 2), tmp_path / "bad.png")


def test_sample_nfe_is_the_evaluation_budget(tmp_path):
    """--nfe is sample()'s nfe=: exactly the budget for a few-step solver, and planned for any fixed-grid one
    (pc: 3 predictor-corrector steps and the final Tweedie step are 7 evaluations)."""
    p = run_cli("sample", "--model", "analytic", "--solver", "dpmpp_2m", "--nfe", "6", "--n", "3",
                "--out", str(tmp_path / "g.png"), "--threads", "1", "--quiet")
    assert p.returncode == 0, p.stderr
    assert json.loads(str(np.load(tmp_path / "g.npz")["config"]))["nfe_per_batch"] == 6
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p = run_cli("sample", "--model", "analytic", "--solver", "pc", "--nfe", "7", "--n", "2",
                "--out", str(tmp_path / "h"), "--quiet")
    assert p.returncode == 0, p.stderr
    assert json.loads(str(np.load(tmp_path / "h.npz")["config"]))["nfe_per_batch"] == 7
    p = run_cli("sample", "--model", "analytic", "--solver", "dpmpp_2m", "--nfe", "6", "--steps", "3",
                "--out", str(tmp_path / "i"))
    assert p.returncode == 2 and "either --nfe or --steps" in p.stderr
