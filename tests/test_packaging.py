"""Packaging: the digits ship with the package (no scikit-learn anywhere), the extras are what the docs say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_digits_load_without_scikit_learn():
    """In a fresh interpreter where importing sklearn fails: the data, their split and the bundled classifier's
    held-out accuracy (the images are scikit-learn's load_digits images, in the same order)."""
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import torch\n"
        "from scoresolve.data import load_digits\n"
        "from scoresolve.train.data import digits\n"
        "from scoresolve.metrics.classifier import digits_with_labels, load_classifier\n"
        "x, y = load_digits()\n"
        "assert x.shape == (1797, 8, 8) and x.dtype == torch.uint8 and int(x.max()) == 16\n"
        "assert torch.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]\n"
        "assert digits('train').shape == (1438, 1, 8, 8) and digits('test').shape == (359, 1, 8, 8)\n"
        "xt, yt = digits_with_labels('test')\n"
        "acc = (load_classifier()(xt).argmax(1) == yt).float().mean().item()\n"
        "assert acc > 0.95, acc\n"
        "print('ok', acc)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.startswith("ok"), p.stderr[-2000:]


def test_extras():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    assert "progress" not in extras  # tqdm comes with huggingface_hub
    for name, reqs in extras.items():
        assert not any(re.match(r"scikit-learn|sklearn", r) for r in reqs), name
    assert any(r.startswith("torch-fidelity") for r in extras["fid"])
    assert set(meta["urls"]) >= {"Homepage", "Source", "Issues"}
    assert any(c.startswith("License ::") for c in meta["classifiers"])
    assert any(c.startswith("Programming Language :: Python :: 3.1") for c in meta["classifiers"])
    for name in extras["all"][0].split("[")[1].rstrip("]").split(","):
        assert name in extras, f"all names a missing extra {name!r}"
    # no module of the package, tests, benchmarks or examples imports scikit-learn (the refit script of the
    # shipped mixture, scoresolve/data/fit_digits_mixture.py, is the one exception: it runs EM once, by hand)
    users = [
        str(f.relative_to(ROOT))
        for d in ("scoresolve", "tests", "benchmarks", "examples")
        for f in (ROOT / d).rglob("*.py")
        if re.search(r"^\s*(from|import) sklearn", f.read_text(encoding="utf-8"), flags=re.M)
    ]
    assert users == ["scoresolve/data/fit_digits_mixture.py"], users
