"""``scoresolve.distributed``: two real gloo processes on this machine, resume, refusal to mix runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import scoresolve as ss
from scoresolve import distributed as ssd

ROOT = Path(__file__).resolve().parent.parent
CFG = {"n": 10, "shard_size": 3, "solver": "pc", "steps": 4, "seed": 7}  # 4 shards, the last of one sample

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    torch.set_num_threads(1)
    import scoresolve as ss
    from scoresolve import distributed as ssd

    rank, world = ssd.init(backend="gloo", timeout_s=120)
    assert world == 2, world
    cfg = json.loads(sys.argv[1])
    sde = ss.VPSDE()
    model = ss.analytic.digits().score_model(sde)
    res = ssd.sample_distributed(model, sde, out_dir=sys.argv[2], model_id="analytic:digits", progress=False, **cfg)
    # feature moments: each rank holds every other row of one known matrix
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(9, 5, generator=g, dtype=torch.float64) * 3 + 1
    mean, cov, count = ssd.gather_moments(feats[rank::world])
    print(json.dumps({"rank": rank, "done": res.shards_done, "skipped": res.shards_skipped,
                      "merged": res.samples is not None, "mean": mean.tolist(), "cov": cov.tolist(),
                      "count": count}), flush=True)
    ssd.shutdown()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two(tmp_path: Path, out_dir: Path, cfg: dict) -> list[dict]:
    """Start two processes the way torchrun does (env:// rendezvous on 127.0.0.1) and wait for both."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        procs.append(subprocess.Popen(
            [sys.executable, str(script), json.dumps(cfg), str(out_dir)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err[-3000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return sorted(outs, key=lambda o: o["rank"])


def _single(out_dir: Path, **kw):
    sde = ss.VPSDE()
    model = ss.analytic.digits().score_model(sde)
    torch.set_num_threads(1)
    return ssd.sample_distributed(model, sde, out_dir=out_dir, model_id="analytic:digits", progress=False,
                                  **{**CFG, **kw})


class _Killed(Exception):
    pass


def test_two_gloo_processes_resume_a_killed_run_and_match_one_process_bit_for_bit(tmp_path):
    # reference: the whole run in this process
    ref = _single(tmp_path / "ref")
    assert ref.samples.shape == (10, 1, 8, 8) and ref.seeds.tolist() == list(range(7, 17))
    assert ref.shards_done == [0, 1, 2, 3]

    # a run "killed" after its first shard, with a half-written temporary file left behind
    run = tmp_path / "run"

    def kill(k):
        raise _Killed

    with pytest.raises(_Killed):
        _single(run, on_shard=kill)
    assert sorted(p.name for p in run.glob("shard_*")) == ["shard_000000.safetensors"]
    (run / ".shard_000002.safetensors.999.tmp").write_bytes(b"partial")
    first = (run / "shard_000000.safetensors").stat().st_mtime_ns

    # resume with two real processes: shard 0 is skipped, the rest is shared out (k mod 2)
    outs = _launch_two(tmp_path, run, CFG)
    assert outs[0]["skipped"] == [0] and outs[0]["done"] == [2] and outs[0]["merged"]
    assert outs[1]["skipped"] == [] and outs[1]["done"] == [1, 3] and not outs[1]["merged"]
    assert (run / "shard_000000.safetensors").stat().st_mtime_ns == first  # not redone

    merged, seeds = ssd.merge_shards(run, write=False)
    assert seeds.tolist() == list(range(7, 17))  # no duplicates, no gaps
    assert torch.equal(merged, ref.samples)  # bit for bit, whatever the number of processes

    # statistics gathered across the ranks equal the statistics of all rows
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(9, 5, generator=g, dtype=torch.float64) * 3 + 1
    for o in outs:
        assert o["count"] == 9
        torch.testing.assert_close(torch.tensor(o["mean"], dtype=torch.float64), feats.mean(0), rtol=0, atol=1e-12)
        torch.testing.assert_close(torch.tensor(o["cov"], dtype=torch.float64), torch.cov(feats.T), rtol=0,
                                   atol=1e-12)

    # running again does nothing new
    again = _single(run)
    assert again.shards_done == [] and again.shards_skipped == [0, 1, 2, 3]
    assert torch.equal(again.samples, ref.samples)


def test_samples_depend_only_on_their_seed_not_on_the_shard():
    sde = ss.VPSDE()
    model = ss.analytic.digits().score_model(sde)
    a = ss.sample(model, sde, solver="pc", steps=4, seeds=[7, 8, 9])
    b = ss.sample(model, sde, solver="pc", steps=4, seeds=[9, 8, 7])
    torch.testing.assert_close(a, b.flip(0), rtol=0, atol=1e-5)


def test_refuses_to_mix_a_folder_from_another_configuration(tmp_path):
    _single(tmp_path / "d", n=4, shard_size=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()}
    with pytest.raises(ssd.ShardConfigError, match=r"different configuration.*seed: folder has 7, this run 8"):
        _single(tmp_path / "d", n=4, shard_size=2, seed=8)
    with pytest.raises(ssd.ShardConfigError, match="steps"):
        _single(tmp_path / "d", n=4, shard_size=2, steps=5)
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()} == before  # nothing overwritten


def test_world_size_larger_than_n(monkeypatch, tmp_path):
    monkeypatch.setattr(ssd, "rank_and_world", lambda: (0, 4))
    with pytest.raises(ValueError, match=r"world size \(4 processes\) is larger than the number of samples n=3"):
        _single(tmp_path / "w", n=3)
    assert not (tmp_path / "w").exists()


def test_merge_detects_missing_shards(tmp_path):
    _single(tmp_path / "m", n=4, shard_size=2)
    (tmp_path / "m" / "shard_000001.safetensors").unlink()
    with pytest.raises(ssd.ShardConfigError, match=r"shards \[1\] are missing"):
        ssd.merge_shards(tmp_path / "m")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="shard_size"):
        _single(tmp_path / "b", shard_size=0)
    with pytest.raises(ValueError, match="n must be"):
        _single(tmp_path / "b", n=0)


def test_gather_moments_single_process_matches_torch_cov():
    x = torch.randn(50, 3, dtype=torch.float64) + 100.0  # a large offset: the shift keeps it accurate
    m, c, k = ssd.gather_moments(x)
    assert k == 50
    torch.testing.assert_close(m, x.mean(0))
    torch.testing.assert_close(c, torch.cov(x.T))
