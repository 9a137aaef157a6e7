"""Module docstrings stay short: what the method is, its math, order, cost and paper in at most 15 lines; measured
figures, history and long usage notes belong in docs/ with the command that measures them."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 15

def _docstring_lines() -> dict[str, int]:
    out = {}
    for path in sorted((ROOT / "scoresolve").rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if doc:
            out[path.relative_to(ROOT).as_posix()] = doc.count("\n") + 1
    return out


def test_module_docstrings_are_at_most_15_lines():
    lines = _docstring_lines()
    too_long = {p: n for p, n in lines.items() if n > MAX_LINES}
    assert not too_long, f"module docstrings over {MAX_LINES} lines (move figures and notes to docs/): {too_long}"

