"""The package's import structure (``benchmarks/import_graph.py``): no import circle, counting the packages an
import runs and the imports inside functions, and no scoresolve module imported inside a function except one
that needs an optional dependency."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _graph() -> dict:
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "benchmarks" / "import_graph.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.analyse()


def test_no_import_circles_and_no_function_local_imports():
    r = _graph()
    assert r["circles"] == [] and r["hidden_circles"] == [], r
    local = r["local"]
    assert local == [], f"imports of scoresolve modules inside functions (move them to the top): {local}"
    assert all(line.split(" -> ")[1].startswith("scoresolve.adapters.") for line in r["optional_local"])
