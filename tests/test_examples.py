"""Every ``examples/*.py`` runs on the CPU, without network, in under a minute.

All examples run in one subprocess (torch is imported once; each script runs as ``__main__`` through
:func:`runpy.run_path` in a fresh temporary working directory, with the Hub forced offline), and
each gets its own test result. A new example is picked up automatically.
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
PER_EXAMPLE_S = 60.0

DRIVER = textwrap.dedent(
    """
    import json, os, runpy, sys, tempfile, time, traceback
    import torch
    torch.set_num_threads(1)
    results = {}
    for path in sys.argv[2:]:
        cwd = os.getcwd()
        argv = sys.argv
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            os.chdir(d)
            sys.argv = [path]
            try:
                runpy.run_path(path, run_name="__main__")
                err = None
            except SystemExit as e:
                err = None if e.code in (0, None) else f"SystemExit({e.code!r})"
            except BaseException:
                err = traceback.format_exc()[-4000:]
            finally:
                os.chdir(cwd)
                sys.argv = argv
        results[path] = {"seconds": time.perf_counter() - t0, "error": err}
        with open(sys.argv[1], "w") as f:
            json.dump(results, f)
    """
)


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
            env=env, cwd=d, capture_output=True, text=True, timeout=PER_EXAMPLE_S * len(EXAMPLES) + 60,
        )
    except subprocess.TimeoutExpired:
        pass  # the examples that finished are in the file; the one running is reported as timed out
    return json.loads(out.read_text()) if out.exists() else {}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path, example_results):
    r = example_results.get(str(path))
    assert r is not None, f"{path.name} did not finish (timed out or crashed the interpreter)"
    assert r["error"] is None, f"{path.name} failed:\n{r['error']}"
    assert r["seconds"] < PER_EXAMPLE_S, f"{path.name} took {r['seconds']:.0f} s (limit {PER_EXAMPLE_S:.0f} s)"


def test_there_are_examples():
    assert EXAMPLES, "examples/ holds no scripts"
