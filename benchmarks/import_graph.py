"""Import circles and function-local imports inside ``scoresolve/`` (static, from the source).

    python benchmarks/import_graph.py

Prints the strongly connected components of the module-level import graph (each one a circle) and
every ``import`` inside a function body that names a ``scoresolve`` module (optional third-party
dependencies imported lazily are listed apart and are allowed).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "scoresolve"


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _targets(node: ast.AST, mod: str, is_pkg: bool, modules: set[str]) -> list[str]:
    out = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = mod.split(".") if is_pkg else mod.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
    else:
        return out
    for n in names:
        while n and n not in modules:
            n = n.rpartition(".")[0]
        if n and n.startswith("scoresolve"):
            out.append(n)
    return out


def main() -> int:
    files = sorted(ROOT.rglob("*.py"))
    modules = {_module(f) for f in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    local: list[str] = []
    full: dict[str, set[str]] = {m: set() for m in modules}
    for f in files:
        mod = _module(f)
        tree = ast.parse(f.read_text())
        is_pkg = f.name == "__init__.py"
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for t in _targets(node, mod, is_pkg, modules):
                if t != mod and not mod.startswith(t + "."):
                    graph[mod].add(t)
                    full[mod].add(t)
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    tg = _targets(node, mod, is_pkg, modules)
                    if tg:
                        local.append(f"{mod}:{node.lineno} -> {tg[0]}")
                        full[mod].update(t for t in tg if t != mod and not mod.startswith(t + "."))
    static = _circles(graph)
    hidden = _circles(full)
    print(f"{len(static)} import circle(s) among module-level imports")
    for c in static:
        print("  " + " <-> ".join(c))
    print(f"{len(hidden)} import circle(s) once function-local imports count too")
    for c in hidden:
        print("  " + " <-> ".join(c))
    print(f"{len(local)} function-local import(s) of scoresolve modules")
    for line in local:
        print("  " + line)
    return 0


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    sccs: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sccs


if __name__ == "__main__":
    sys.exit(main())
