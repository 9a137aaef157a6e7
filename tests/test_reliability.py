"""The ten reliability findings of issue 23, one test (or a few) each, and the fault tests.

Each test failed on the code before the fix; the guarantees they check are written in
docs/distributed.md, docs/loading.md and docs/training.md.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file as st_load
from safetensors.torch import save_file

import scoresolve as ss
from scoresolve import distributed as ssd
from scoresolve.digest import content_digest
from scoresolve.io import CheckpointError, load, save
from scoresolve.io import checkpoint as ckpt_mod
from scoresolve.solvers.base import NonFiniteScoreError
from scoresolve.train.nets import MLP
from scoresolve.train.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


def _net(seed: int) -> MLP:
    torch.manual_seed(seed)
    return MLP(sample_shape=(2,), hidden=16, depth=1, embed_dim=8)


def _wrapped(net: torch.nn.Module, sde: ss.SDE) -> ss.ScoreModel:
    """An adapter-style model: the network hidden in a closure (as from_diffusers builds them)."""
    return ss.ScoreModel(lambda x, t: net(x, t), sde, sample_shape=(2,))


def _flip_byte(path: Path, offset_from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x10
    path.write_bytes(bytes(data))


# --- 1. a shard folder never mixes models -----------------------------------------------------------
def test_a_different_model_never_resumes_into_another_models_shard_folder(tmp_path: Path) -> None:
    sde = ss.VPSDE()
    kw = dict(n=4, shard_size=2, solver="ode_euler", steps=3, progress=False, merge=False)
    ssd.sample_distributed(_wrapped(_net(0), sde), sde, out_dir=tmp_path / "a", **kw)
    (tmp_path / "a" / "shard_000001.safetensors").unlink()  # a killed run: one shard left to do
    other = _wrapped(_net(1), sde)  # same class, same wrapper, other weights
    assert ssd.model_fingerprint(other) != ssd.model_fingerprint(_wrapped(_net(0), sde))
    with pytest.raises(ssd.ShardConfigError, match="model"):
        ssd.sample_distributed(other, sde, out_dir=tmp_path / "a", **kw)
    # the same weights resume
    res = ssd.sample_distributed(_wrapped(_net(0), sde), sde, out_dir=tmp_path / "a", **kw)
    assert res.shards_skipped == [0] and res.shards_done == [1]


def test_a_weightless_callable_resumes_only_with_a_model_id(tmp_path: Path) -> None:
    sde = ss.VPSDE()
    kw = dict(n=2, shard_size=1, solver="ode_euler", steps=2, progress=False, merge=False, shape=(2,))
    fn = lambda x, t: -x  # noqa: E731
    assert ssd.model_fingerprint(fn).endswith("no-weights")
    ssd.sample_distributed(fn, sde, out_dir=tmp_path / "b", **kw)
    with pytest.raises(ssd.ShardConfigError, match="model_id="):
        ssd.sample_distributed(fn, sde, out_dir=tmp_path / "b", **kw)
    ssd.sample_distributed(fn, sde, out_dir=tmp_path / "c", model_id="minus-x", **kw)
    res = ssd.sample_distributed(fn, sde, out_dir=tmp_path / "c", model_id="minus-x", **kw)
    assert res.shards_skipped == [0, 1]


# --- 2. no NaN from a finite score; the error names the culprit -----------------------------------
def test_zero_score_gives_finite_samples_from_pc() -> None:
    for sde in (ss.VPSDE(), ss.VESDE(), ss.SubVPSDE()):
        x = ss.sample(lambda x, t: torch.zeros_like(x), sde, "pc", steps=5, shape=(4, 64),
                      generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(x).all(), type(sde).__name__


def test_non_finite_error_names_model_or_solver() -> None:
    sde = ss.VESDE()
    with pytest.raises(NonFiniteScoreError, match="score model returned NaN") as e:
        ss.sample(lambda x, t: torch.full_like(x, math.nan), sde, "ode_euler", steps=3, shape=(2, 2))
    assert e.value.culprit == "model"
    # a finite but huge score: the solver's update overflows float32, the model is not to blame
    with pytest.raises(NonFiniteScoreError, match="solver's arithmetic") as e:
        ss.sample(lambda x, t: torch.full_like(x, 3e38), sde, "ode_euler", steps=3, shape=(2, 2))
    assert e.value.culprit == "solver"


# --- 3. training refuses to resume under other settings -------------------------------------------
@pytest.mark.parametrize("change", ["sde", "beta_max", "hidden", "lr"])
def test_resume_refuses_changed_hyper_parameters(tmp_path: Path, change: str) -> None:
    data = torch.randn(64, 2)
    kw = dict(batch_size=8, warmup=1)
    tr = Trainer(_net(0), ss.VPSDE(), data, **kw)
    tr.train(2, checkpoint=tmp_path / "c.pt")
    sde = {"sde": ss.VESDE(), "beta_max": ss.VPSDE(beta_max=10.0)}.get(change, ss.VPSDE())
    net = MLP(sample_shape=(2,), hidden=24, depth=1, embed_dim=8) if change == "hidden" else _net(0)
    tr2 = Trainer(net, sde, data, **{**kw, **({"lr": 1e-3} if change == "lr" else {})})
    key = {"sde": "sde", "beta_max": "beta_max", "hidden": "arch_kwargs", "lr": "lr"}[change]
    with pytest.raises(CheckpointError, match=f"refusing to resume.*{key}"):
        tr2.load_checkpoint(tmp_path / "c.pt")


# --- 4. SDE identity without boilerplate ----------------------------------------------------------
class _MySDE(ss.VESDE):
    def __init__(self, sigma_max: float, power: int = 1) -> None:
        super().__init__(0.01, sigma_max)
        self.power = power


def test_sde_subclass_parameters_are_captured() -> None:
    a, b = _MySDE(25.0), _MySDE(10.0)
    assert a != b and hash(a) != hash(b)
    assert a == _MySDE(25) and hash(a) == hash(_MySDE(25.0))
    assert a.config() == {"type": "_MySDE", "sigma_max": 25.0, "power": 1}
    assert ckpt_mod.sde_from_config(a.config()) == a  # the checkpoint follows
    assert ss.VPSDE() != ss.SubVPSDE()  # same parameters, other process
    # the calibration cache's mismatch check follows too
    from scoresolve.calibrate import CalibratedGrid, CalibrationMismatchError

    cg = CalibratedGrid(times=[1.0, 0.5, 1e-5], steps=2, eps=1e-5, sde=a.config(), solver={}, shape=[2], signature=[])
    with pytest.raises(CalibrationMismatchError, match="sde"):
        cg.check(signature=None, sde=b, solver=None, steps=2, eps=1e-5, shape=[2])


# --- 5. seeds= makes a sample independent of its batch --------------------------------------------
@pytest.mark.parametrize("solver", ["gotta_go_fast", "ode"])
def test_adaptive_solvers_are_batch_independent_with_seeds(solver: str) -> None:
    sde = ss.VPSDE()
    model = ss.analytic.grid2d().score_model(sde)
    batch = ss.sample(model, sde, solver, seeds=[0, 1, 2, 3])
    alone = torch.cat([ss.sample(model, sde, solver, seeds=[i]) for i in range(4)])
    assert (batch - alone).abs().max() <= 1e-5  # before: 2.9 (gotta_go_fast), 7.7e-5 (ode)


def test_explicit_batch_norm_with_seeds_is_refused() -> None:
    sde = ss.VPSDE()
    with pytest.raises(ValueError, match="per_sample"):
        ss.sample(lambda x, t: -x, sde, "gotta_go_fast", shape=(2, 2), seeds=[0, 1], norm="batch_rms")


def test_cli_batch_size_does_not_change_samples(tmp_path: Path) -> None:
    from scoresolve.cli import main

    outs = []
    for bs in (4, 1):
        npz = tmp_path / f"bs{bs}.npz"
        assert main(["sample", "--model", "analytic:grid2d", "--solver", "gotta_go_fast", "--n", "4",
                     "--batch-size", str(bs), "--npz", str(npz), "--quiet"]) == 0
        outs.append(np.load(npz)["samples"])
    assert np.abs(outs[0] - outs[1]).max() <= 1e-5


# --- 6. integrity of weights and shards ------------------------------------------------------------
def _saved(tmp_path: Path) -> Path:
    return save(ss.ScoreModel(_net(0), ss.VPSDE(), sample_shape=(2,)), tmp_path / "m.safetensors")


def test_a_flipped_byte_in_a_weights_file_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    p = _saved(tmp_path)
    load(p)  # intact
    rng = np.random.default_rng(0)
    size = p.stat().st_size
    header = 8 + int.from_bytes(p.read_bytes()[:8], "little")
    for off in rng.integers(1, size - header, size=10):  # bytes of tensor data
        q = tmp_path / f"flip{off}.safetensors"
        q.write_bytes(p.read_bytes())
        _flip_byte(q, int(off))
        with pytest.raises(CheckpointError, match=r"tensor '.*' fails its integrity check"):
            load(q)


def test_a_flipped_byte_in_a_shard_is_refused_at_merge(tmp_path: Path) -> None:
    sde = ss.VPSDE()
    model = ss.analytic.grid2d().score_model(sde)
    ssd.sample_distributed(model, sde, n=4, shard_size=2, out_dir=tmp_path, solver="ode_euler", steps=2,
                           progress=False)
    shard = tmp_path / "shard_000001.safetensors"
    _flip_byte(shard, 3)  # the last sample's bytes
    with pytest.raises(CheckpointError, match="shard 1 .* fails its integrity check"):
        ssd.merge_shards(tmp_path)
    # a forged shard (content rewritten, metadata copied) is refused too
    tensors = st_load(str(shard))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "shard_000000.safetensors"), "pt") as f:
        meta = f.metadata()
    save_file({"samples": tensors["samples"] * 0, "seeds": torch.arange(2)}, str(tmp_path / "shard_000000.safetensors"),
              metadata=meta)
    with pytest.raises(CheckpointError, match="shard 0"):
        ssd.merge_shards(tmp_path)
    # resuming redoes the damaged shards instead of trusting them
    res = ssd.sample_distributed(model, sde, n=4, shard_size=2, out_dir=tmp_path, solver="ode_euler", steps=2,
                                 progress=False)
    assert sorted(res.shards_done) == [0, 1] and res.samples is not None


# --- 7. tampered configs are refused before allocation ----------------------------------------------
@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.update(format_version="abc"), "format_version"),
        (lambda c: c["arch_kwargs"].update(hidden=10**9), "wrong shapes|refusing"),
        (lambda c: c["sde"].update(N=0), "N must be an integer"),
        (lambda c: c.update(data_range=["a", "b"]), "data_range"),
        (lambda c: c.update(sample_shape=[0]), "sample_shape"),
    ],
)
def test_tampered_configs_are_refused(tmp_path: Path, edit, match: str) -> None:
    p = _saved(tmp_path)
    from safetensors import safe_open

    with safe_open(str(p), "pt") as f:
        meta = f.metadata()
    cfg = json.loads(meta["scoresolve"])
    edit(cfg)
    q = tmp_path / "t.safetensors"
    save_file(st_load(str(p)), str(q), metadata={**meta, "scoresolve": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match=match):
        load(q)


def test_training_checkpoint_with_negative_step_is_refused(tmp_path: Path) -> None:
    tr = Trainer(_net(0), ss.VPSDE(), torch.randn(16, 2), batch_size=4, warmup=1)
    tr.train(1, checkpoint=tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    state["step"] = -5
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="step"):
        Trainer(_net(0), ss.VPSDE(), torch.randn(16, 2), batch_size=4, warmup=1).load_checkpoint(tmp_path / "c.pt")


# --- 8. input validation --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ss.VPSDE(N=0), "N must be"),
        (lambda: ss.VPSDE(N=2.5), "N must be"),
        (lambda: ss.VESDE(sigma_max=math.inf), "sigma_max"),
        (lambda: ss.VPSDE(beta_max=math.inf), "beta_max"),
        (lambda: ss.sample(lambda x, t: -x, ss.VPSDE(), "ode_euler", steps=5, grid=[1.0, 0.5, 1e-3], shape=(2, 2)),
         "steps=5 was given with an explicit grid"),
        (lambda: ss.sample(lambda x, t: -x, ss.VPSDE(), "ode_euler", steps=2, shape=(2, 2), seeds=[1.5, 2.5]),
         "seeds must be integers"),
        (lambda: ss.sample(ss.ScoreModel(lambda x, t: -x, ss.VPSDE(), sample_shape=(2,)), solver="ode_euler",
                           steps=2, batch_size=2.5), "batch_size"),
    ],
)
def test_bad_arguments_name_the_argument(make, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_score_shape_is_checked_on_every_call() -> None:
    calls = []

    def score(x, t):
        calls.append(1)
        return -x if len(calls) < 3 else -x[:, :1]

    with pytest.raises(ValueError, match=r"returned shape \(2, 1\).*evaluation 3"):
        ss.sample(score, ss.VPSDE(), "ode_euler", steps=5, shape=(2, 2))


# --- 9. the command lines answer bad arguments with one line and exit code 2 ------------------------
def _exit_line(capsys, fn, argv) -> str:
    with pytest.raises(SystemExit) as e:
        fn(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--data", "nosuch"], "unknown data"),
        (["--lr", "-1"], "--lr"),
        (["--batch-size", "0"], "--batch-size"),
        (["--steps", "-1"], "--steps"),
        (["--device", "nodevice", "--steps", "1"], "--device"),
    ],
)
def test_train_cli_bad_arguments(tmp_path: Path, capsys, argv, match: str) -> None:
    from scoresolve.train.__main__ import main

    line = _exit_line(capsys, main, [*argv, "--out", str(tmp_path / "run"), "--no-progress"])
    assert match in line
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_train_cli_refuses_resume_with_other_settings(tmp_path: Path, capsys) -> None:
    from scoresolve.train.__main__ import main

    base = ["--data", "ring", "--steps", "2", "--warmup", "1", "--batch-size", "8", "--hidden", "16",
            "--out", str(tmp_path / "run"), "--no-progress"]
    main(base)
    capsys.readouterr()
    for extra, what in ((["--sde", "ve"], "sde"), (["--beta-max", "10"], "beta_max"), (["--lr", "1e-3"], "lr")):
        line = _exit_line(capsys, main, [*base, "--steps", "3", *extra])
        assert "refusing to resume" in line and what in line
    # a malicious pickle as the checkpoint: one line too
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "run" / "checkpoint.pt").write_bytes(pickle.dumps(Evil()))
    assert "refusing to load" in _exit_line(capsys, main, [*base, "--steps", "3"])


def test_scoresolve_cli_bad_device_and_data(tmp_path: Path, capsys) -> None:
    from scoresolve.cli import main

    assert "--device" in _exit_line(capsys, main, ["sample", "--model", "analytic:grid2d", "--device", "nodevice",
                                                   "--n", "2", "--npz", str(tmp_path / "x.npz")])
    np.savez(tmp_path / "o.npz", samples=np.array([object()] * 4, dtype=object))
    torch.save({"samples": torch.zeros(4, 2)}, tmp_path / "s.pt")
    for bad in ("o.npz", "s.pt"):
        line = _exit_line(capsys, main, ["likelihood", "--model", "analytic:grid2d", "--data", str(tmp_path / bad)])
        assert "--data" in line


# --- 10. temporaries are cleaned up after a crash ----------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_are_removed_at_the_next_save_and_load(tmp_path: Path) -> None:
    pid = _dead_pid()
    dest = tmp_path / "m.safetensors"
    stale = tmp_path / f".m.safetensors.{ckpt_mod._HOST}-{pid}.abc.tmp"
    stale.write_bytes(b"half a file")
    save(ss.ScoreModel(_net(0), ss.VPSDE(), sample_shape=(2,)), dest)
    assert not stale.exists()
    stale.write_bytes(b"half a file")
    load(dest)
    assert not stale.exists()
    # training checkpoints: the same at the next save
    ck = tmp_path / "c.pt"
    stale_ck = tmp_path / f".c.pt.{ckpt_mod._HOST}-{pid}.abc.tmp"
    stale_ck.write_bytes(b"x")
    Trainer(_net(0), ss.VPSDE(), torch.randn(8, 2), batch_size=4, warmup=1).save_checkpoint(ck)
    assert not stale_ck.exists()
    assert sorted(q.name for q in tmp_path.iterdir()) == ["c.pt", "m.safetensors"]


_KILL_WORKER = """
import sys, torch
torch.set_num_threads(1)
import scoresolve as ss
from scoresolve.io import save, save_pretrained
from scoresolve.train.nets import MLP
from scoresolve.train.trainer import Trainer
kind, dest = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
net = MLP(sample_shape=(2,), hidden=256, depth=4, embed_dim=16)
model = ss.ScoreModel(net, ss.VPSDE(), sample_shape=(2,))
tr = Trainer(net, ss.VPSDE(), torch.randn(8, 2), batch_size=4, warmup=1)
print("ready", flush=True)
while True:
    if kind == "save":
        save(model, dest)
    elif kind == "pretrained":
        save_pretrained(model, dest)
    else:
        tr.save_checkpoint(dest)
"""


def _kill_trials(tmp_path: Path, kind: str, name: str, trials: int) -> tuple[int, list[str]]:
    """Kill a process saving in a loop at random moments; return (bad final files, leftover temporaries)."""
    script = tmp_path / "worker.py"
    script.write_text(_KILL_WORKER)
    rng = np.random.default_rng(1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    dest = tmp_path / name
    bad = 0
    for _ in range(trials):
        p = subprocess.Popen([sys.executable, str(script), kind, str(dest)], stdout=subprocess.PIPE, env=env)
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        time.sleep(float(rng.uniform(0.0, 0.3)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        if dest.exists():
            try:
                if kind == "checkpoint":
                    Trainer(MLP(sample_shape=(2,), hidden=256, depth=4, embed_dim=16), ss.VPSDE(), torch.randn(8, 2),
                            batch_size=4, warmup=1).load_checkpoint(dest)
                else:
                    load(dest)
                if kind == "pretrained":
                    assert (dest / "config.json").is_file() and (dest / "model.safetensors").is_file()
            except Exception:  # noqa: BLE001 - counted: a file under the final name that is not whole
                bad += 1
    # the next save (here: a load, then a save from this process) leaves no temporary
    if kind == "checkpoint":
        Trainer(MLP(sample_shape=(2,), hidden=256, depth=4, embed_dim=16), ss.VPSDE(), torch.randn(8, 2),
                batch_size=4, warmup=1).save_checkpoint(dest)
    elif kind == "save":
        save(ss.ScoreModel(_net(0), ss.VPSDE(), sample_shape=(2,)), dest)
    else:
        ss.io.save_pretrained(ss.ScoreModel(_net(0), ss.VPSDE(), sample_shape=(2,)), dest)
    folder = dest if kind == "pretrained" else tmp_path
    left = [q.name for q in folder.iterdir() if q.name.endswith(".tmp")]
    return bad, left


@pytest.mark.slow
@pytest.mark.parametrize("kind, name", [("save", "m.safetensors"), ("checkpoint", "c.pt")])
def test_sigkill_during_save_20_trials(tmp_path: Path, kind: str, name: str) -> None:
    bad, left = _kill_trials(tmp_path, kind, name, trials=20)
    assert bad == 0 and left == []


@pytest.mark.slow
def test_sigkill_during_save_pretrained_20_trials(tmp_path: Path) -> None:
    bad, left = _kill_trials(tmp_path, "pretrained", "pretrained", trials=20)
    assert bad == 0 and left == []


@pytest.mark.slow
def test_sigkill_during_save_few_trials(tmp_path: Path) -> None:
    """A short version of the 20-trial test above (the default run covers the cleanup with a stale temporary)."""
    bad, left = _kill_trials(tmp_path, "save", "m.safetensors", trials=2)
    assert bad == 0 and left == []


def test_the_content_digest_sees_every_wrapper_of_a_model() -> None:
    """Two partials, each binding its own weights: the walk builds a container for each and must keep them apart
    (it once skipped the second when the first's container had been freed and its id reused)."""

    def model(first: torch.Tensor, second: torch.Tensor):  # noqa: ANN202
        a, b = functools.partial(torch.mul, first), functools.partial(torch.mul, second)
        return lambda x, t: a(x) + b(x)

    w = [torch.full((2,), float(i)) for i in range(3)]
    base, weights = content_digest(model(w[0], w[1]))
    assert weights and content_digest(model(w[0], w[1]))[0] == base
    assert content_digest(model(w[0], w[2]))[0] != base  # the second partial's weights count
    assert content_digest(model(w[2], w[1]))[0] != base
