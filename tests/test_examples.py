"""Every ``examples/*.py`` runs on the CPU, without network, with its default arguments, and produces
what it says it does.

All examples run in one subprocess (torch is imported once; each script runs as ``__main__`` through
:func:`runpy.run_path` in a fresh temporary working directory, with the Hub forced offline), and each
gets its own test result. A new example is picked up automatically. Wall time is *not* asserted (the
timeout only catches a hung run and is far above any loaded machine's time): the 60-s budget per example
is measured by ``benchmarks/examples_runtime.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))
#: a hang detector, not a time limit: 20 minutes per example
HANG_S = 1200.0

DRIVER = textwrap.dedent(
    """
    import contextlib, io, json, os, runpy, sys, tempfile, time, traceback
    import torch
    torch.set_num_threads(1)
    from scoresolve.io.image import read_png
    results = {}
    for path in sys.argv[2:]:
        cwd = os.getcwd()
        argv = sys.argv
        t0 = time.perf_counter()
        out = io.StringIO()
        with tempfile.TemporaryDirectory() as d:
            os.chdir(d)
            sys.argv = [path]
            try:
                with contextlib.redirect_stdout(out):
                    runpy.run_path(path, run_name="__main__")
                err = None
            except SystemExit as e:
                err = None if e.code in (0, None) else f"SystemExit({e.code!r})"
            except BaseException:
                err = traceback.format_exc()[-4000:]
            finally:
                os.chdir(cwd)
                sys.argv = argv
            files = {}
            for name in sorted(os.listdir(d)):
                p = os.path.join(d, name)
                files[name] = list(read_png(p).shape) if name.endswith(".png") else os.path.getsize(p)
        results[path] = {"seconds": time.perf_counter() - t0, "error": err, "stdout": out.getvalue(),
                         "files": files}
        with open(sys.argv[1], "w") as f:
            json.dump(results, f)
    """
)

#: what each example must produce: files (PNG: decoded shape) and lines of its output
EXPECT = {
    "sample_digits.py": {"files": {"digits_samples.png": [8 * 34 + 2, 8 * 34 + 2, 1]},
                         "stdout": ["64 samples, NFE 20", "wrote digits_samples.png"]},
    "inpaint_digits.py": {"files": {"inpaint_digits.png": [7 * 50 + 2, 6 * 50 + 2, 3]},
                          "stdout": ["SMC 1601 score evaluations per digit", "rows, top to bottom: truth;"]},
    "adapter_kdiffusion.py": {"files": {}, "stdout": ["NFE=", "Frechet distance to the exact mixture"]},
    "adapter_diffusers.py": {"files": {}, "stdout": ["sample_pipeline ->"]},
}


@pytest.fixture(scope="module")
def example_results(tmp_path_factory):
    if not EXAMPLES:
        return {}
    d = tmp_path_factory.mktemp("examples")
    (d / "driver.py").write_text(DRIVER)
    out = d / "results.json"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    try:
        subprocess.run(
            [sys.executable, str(d / "driver.py"), str(out), *map(str, EXAMPLES)],
            env=env, cwd=d, capture_output=True, text=True, timeout=HANG_S * len(EXAMPLES),
        )
    except subprocess.TimeoutExpired:
        pass  # the examples that finished are in the file; the one running is reported as hung
    return json.loads(out.read_text()) if out.exists() else {}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_and_produces_its_output(path, example_results):
    r = example_results.get(str(path))
    assert r is not None, f"{path.name} did not finish within {HANG_S:.0f} s (hung) or crashed the interpreter"
    assert r["error"] is None, f"{path.name} failed:\n{r['error']}"
    want = EXPECT.get(path.name)
    if want is None:
        pytest.fail(f"{path.name}: add what it produces to EXPECT in tests/test_examples.py")
    if "needs diffusers" in r["stdout"] or "not importable" in r["stdout"]:
        want = {"files": want["files"], "stdout": []}  # an optional peer is missing: the example says so
    for name, shape in want["files"].items():
        assert name in r["files"], f"{path.name} did not write {name} (wrote {sorted(r['files'])})"
        assert r["files"][name] == shape, f"{path.name}: {name} has shape {r['files'][name]}, expected {shape}"
    for line in want["stdout"]:
        assert line in r["stdout"], f"{path.name}: output lacks {line!r}:\n{r['stdout'][-2000:]}"


def test_there_are_examples():
    assert EXAMPLES, "examples/ holds no scripts"
