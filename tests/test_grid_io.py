"""Sigma lists as data: ``ss.grids.export`` / ``import_`` round trips, and the peers take the list unchanged."""

from __future__ import annotations

import json

import pytest
import torch

import scoresolve as ss


def test_export_import_round_trip_json_and_text(tmp_path):
    sde = ss.VPSDE()
    assert "karras" in ss.grids()  # still lists the grids
    sig = ss.grids.export("karras", sde, tmp_path / "g.json", steps=6)
    assert sig[-1] == 0.0 and len(sig) == 8 and json.loads((tmp_path / "g.json").read_text()) == sig
    ss.grids.export("karras", sde, tmp_path / "g.txt", steps=6)
    text = (tmp_path / "g.txt").read_text()
    assert "," in text and "[" not in text  # ComfyUI-style: one comma-separated line
    for src in (tmp_path / "g.json", tmp_path / "g.txt", text, sig):
        torch.testing.assert_close(ss.grids.import_(src), torch.tensor(sig, dtype=torch.float64), rtol=0, atol=0)
    times = ss.grids.import_(tmp_path / "g.json", sde=sde)
    torch.testing.assert_close(times, ss.solvers.grids.make_grid("karras", sde, 6, sde.default_eps), rtol=1e-12,
                               atol=1e-12)
    with pytest.raises(ValueError, match="decreasing"):
        ss.grids.import_("1.0, 2.0, 0.0")
    with pytest.raises(ValueError, match="steps="):
        ss.grids.export("karras", sde)


def test_a_calibrated_run_s_grid_drives_diffusers_and_our_scheduler(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from scoresolve.adapters.diffusers import ScoresolveScheduler

    sched = ScoresolveScheduler(solver="unipc")
    gm = ss.analytic.anisotropic(dim=4, n_components=3, seed=4)
    res = ss.sample(lambda x, t: gm.score(x, t, sched.sde), sched.sde, solver="unipc", nfe=6, shape=(4, 4),
                    final="zero", return_result=True)
    path = tmp_path / "sigmas.json"
    sig = ss.grids.export(res, sched.sde, path)
    sched.set_timesteps(sigmas=ss.grids.import_(path))
    torch.testing.assert_close(sched.sigmas, torch.tensor(sig, dtype=torch.float64))
    euler = diffusers.EulerDiscreteScheduler()
    euler.set_timesteps(sigmas=json.loads(path.read_text()))  # diffusers takes the list as it is
    torch.testing.assert_close(euler.sigmas.double(), torch.tensor(sig, dtype=torch.float64), rtol=1e-6, atol=0)
