"""The README's pictures are reproducible from their seeds (benchmarks/readme_pictures.py): the samples
grid regenerates to the committed pixels; the plotted figures are those of the main job's default run
(checked in CI against the run of the README's first command, and here on the committed data)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "readme_pictures.py"


@pytest.fixture(scope="module")
def pictures():
    spec = importlib.util.spec_from_file_location("readme_pictures_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_the_readme_shows_the_committed_pictures():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("readme_samples.png", "readme_nfe_vs_fd_analytic.png"):
        assert f"docs/{name}" in readme and (ROOT / "docs" / name).is_file()


def test_samples_grid_regenerates_from_its_seed(pictures):
    assert pictures.check_samples() == []


def test_committed_figures_cover_ours_and_the_peers_at_5_10_20(pictures):
    figs = json.loads(pictures.FIGURES_JSON.read_text(encoding="utf-8"))["figures"]
    for model in ("analytic", "bundled"):
        runs = {(f["solver"], f["budget"]) for f in figs if f["model"] == model}
        for b in (5, 10, 20):
            assert ("dpmpp_2m", b) in runs and any(s.startswith("diffusers:") and bb == b for s, bb in runs)
    # the comparison flags a changed figure, a missing run and a changed NFE
    changed = [dict(f) for f in figs]
    changed[0]["value"] *= 1.01
    changed[1]["nfe"] += 1
    errs = pictures.compare_figures(changed[:-1], figs)
    assert len(errs) == 3 and any("missing run" in e for e in errs)
    assert pictures.compare_figures(figs, figs) == []
