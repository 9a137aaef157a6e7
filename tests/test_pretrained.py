"""ScoreModel.from_pretrained / save_pretrained / push_to_hub in huggingface_hub's ModelHubMixin layout: round trip
of a trained model offline, a Hub id from a local cache with HF_HUB_OFFLINE=1 (no network), and the folder
replaced as a whole even when the saving process is killed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import scoresolve as ss

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained():
    return ss.io.load("digits")  # the trained network bundled with the package


def _same_outputs(a, b):
    x = torch.randn(4, *a.sample_shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 0.3)
    torch.testing.assert_close(a(x, t), b(x, t), rtol=0, atol=0)


def test_round_trip_folder_layout(trained, tmp_path):
    d = trained.save_pretrained(tmp_path / "repo")
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["sample_shape"] == list(trained.sample_shape)
    assert (d / "README.md").read_text().startswith("---\nlibrary_name: scoresolve")
    back = ss.ScoreModel.from_pretrained(d)
    assert back.sde == trained.sde and back.sample_shape == trained.sample_shape
    _same_outputs(trained, back)
    # saving again replaces the folder and leaves no temporaries beside it
    trained.save_pretrained(d)
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]


def test_old_single_file_and_free_function_still_load(trained, tmp_path):
    f = ss.io.save(trained, tmp_path / "old.safetensors")
    _same_outputs(trained, ss.ScoreModel.from_pretrained(f))
    ss.io.save_pretrained(trained, tmp_path / "free")
    _same_outputs(trained, ss.ScoreModel.from_pretrained(tmp_path / "free"))


def test_hub_id_from_local_cache_offline(trained, tmp_path, monkeypatch):
    """A fake Hugging Face cache (models--org--name/{refs/main, snapshots/<commit>/...}); with HF_HUB_OFFLINE=1
    nothing is requested from the network."""
    src = trained.save_pretrained(tmp_path / "src")
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = cache / "models--someorg--digits" / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copy(f, snap / f.name)
    (cache / "models--someorg--digits" / "refs").mkdir()
    (cache / "models--someorg--digits" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # "someorg/digits" is not a local path
    _same_outputs(trained, ss.ScoreModel.from_pretrained("someorg/digits"))
    with pytest.raises(ss.io.CheckpointError, match="offline"):
        ss.ScoreModel.from_pretrained("someorg/missing")


def test_push_to_hub_uploads_the_folder(trained, monkeypatch):
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=False, exist_ok=True):
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert trained.push_to_hub("me/digits").endswith("me/digits")
    assert calls["files"] == ["README.md", "config.json", "model.safetensors"]


_KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    import scoresolve as ss
    from scoresolve.io import hub
    model = ss.io.load("digits")
    stage = sys.argv[2]
    real = {"exchange": hub._exchange, "replace": os.replace}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if stage == "writing":  # while the new folder's files are written
        orig = hub._write_folder
        def write(m, d, **kw):
            orig(m, d, **kw)
            die()
        hub._write_folder = write
    elif stage == "between_renames":  # the two-rename path, killed after moving the old folder away
        hub._exchange = lambda a, b: False
        def rep(a, b):
            real["replace"](a, b)
            if ".old-" in str(b):
                die()
        hub.os.replace = rep
    hub.save_pretrained(model, sys.argv[1], extra={"version": "new"})
    """
)


@pytest.mark.parametrize("stage", ["writing", "between_renames"])
def test_killed_save_leaves_a_whole_folder(trained, tmp_path, stage):
    dest = tmp_path / "repo"
    trained.save_pretrained(dest, extra={"version": "old"})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(dest), stage], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert any(q.name.startswith(".repo.") for q in tmp_path.iterdir())  # the kill left temporaries
    back = ss.ScoreModel.from_pretrained(dest)  # recovers first
    version = back.metadata["config"]["extra"]["version"]
    assert version == ("old" if stage == "writing" else "new")
    _same_outputs(trained, back)
    assert [q.name for q in tmp_path.iterdir()] == ["repo"]  # leftovers cleaned
