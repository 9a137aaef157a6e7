"""The package's structure: no import circle, counting the packages an import runs and the imports inside functions,
and no scoresolve module imported inside a function except one that needs an optional dependency
(``benchmarks/import_graph.py``); ``solver="auto"`` reaches its first evaluation in a third of the calls and file
jumps it took before the redesign (``benchmarks/setup_calls.py``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _benchmark(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _graph() -> dict:
    return _benchmark("import_graph").analyse()


def test_no_import_circles_and_no_function_local_imports():
    r = _graph()
    assert r["circles"] == [] and r["hidden_circles"] == [], r
    local = r["local"]
    assert local == [], f"imports of scoresolve modules inside functions (move them to the top): {local}"
    assert all(line.split(" -> ")[1].startswith("scoresolve.adapters.") for line in r["optional_local"])


@pytest.mark.parametrize("sde", ["vp", "ve", "subvp", "flow"])
def test_auto_reaches_its_first_evaluation_in_a_third_of_the_calls_and_jumps(sde):
    """Before the redesign (b81eb38) ``solver="auto"`` at 10 evaluations (VP) made 83 calls and 39 file jumps before
    its first model evaluation; the bar is a third of each, on every SDE."""
    bench = _benchmark("setup_calls")
    calls, jumps, files = bench.count(bench.trace("auto", 10, sde))
    assert calls <= 83 // 3 and jumps <= 39 // 3, (sde, calls, jumps, files)
