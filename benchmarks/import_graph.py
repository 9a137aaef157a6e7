"""Import circles and function-local imports inside ``scoresolve/`` (static, from the source).

    python benchmarks/import_graph.py

Prints the strongly connected components of the module-level import graph (each one a circle) and
every ``import`` inside a function body that names a ``scoresolve`` module. Importing ``a.b.c`` runs the
packages ``a`` and ``a.b`` first, so those count as imported too. A ``scoresolve`` module that needs an optional
third-party package at import time (not one of the core dependencies) may be imported lazily: such imports
are listed apart, are allowed, and do not count towards the circles.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "scoresolve"
#: the core dependencies (pyproject's ``dependencies``); any other third-party package is optional
CORE = {"torch", "torchdiffeq", "torchsde", "numpy", "safetensors", "huggingface_hub", "scoresolve"}


def _with_packages(targets: list[str], mod: str) -> list[str]:
    """The targets plus the packages above them that ``mod`` is not inside (their ``__init__`` runs first)."""
    out = []
    for t in targets:
        parts = t.split(".")
        for k in range(2, len(parts) + 1):
            p = ".".join(parts[:k])
            if p not in out and not (mod == p or mod.startswith(p + ".")):
                out.append(p)
    return out


def _needs_optional(tree: ast.Module) -> bool:
    """Whether the module imports, at module level, a third-party package outside :data:`CORE`."""
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        for n in names:
            top = n.split(".")[0]
            if top not in CORE and top not in sys.stdlib_module_names and top != "__future__":
                return True
    return False


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


def analyse() -> dict[str, list]:
    """``circles`` (module level), ``hidden_circles`` (function-local imports counted), ``local`` and
    ``optional_local`` (function-local imports, as ``module:line -> target``)."""
    files = sorted(ROOT.rglob("*.py"))
    modules = {_module(f) for f in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    local: list[str] = []
    optional_local: list[str] = []
    full: dict[str, set[str]] = {m: set() for m in modules}
    trees = {f: ast.parse(f.read_text()) for f in files}
    optional = {_module(f) for f, tree in trees.items() if _needs_optional(tree)}
    for f, tree in trees.items():
        mod = _module(f)
        is_pkg = f.name == "__init__.py"
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for t in _with_packages(_targets(node, mod, is_pkg, modules), mod):
                if t != mod and not mod.startswith(t + "."):
                    graph[mod].add(t)
                    full[mod].add(t)
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    tg = _targets(node, mod, is_pkg, modules)
                    if tg and tg[0] in optional:
                        optional_local.append(f"{mod}:{node.lineno} -> {tg[0]}")
                    elif tg:
                        local.append(f"{mod}:{node.lineno} -> {tg[0]}")
                        full[mod].update(t for t in _with_packages(tg, mod) if t != mod and not mod.startswith(t + "."))
    return {"circles": _circles(graph), "hidden_circles": _circles(full), "local": local,
            "optional_local": optional_local}


def main() -> int:
    r = analyse()
    static, hidden, local, optional_local = r["circles"], r["hidden_circles"], r["local"], r["optional_local"]
    print(f"{len(static)} import circle(s) among module-level imports")
    for c in static:
        print("  " + " <-> ".join(c))
    print(f"{len(hidden)} import circle(s) once function-local imports count too")
    for c in hidden:
        print("  " + " <-> ".join(c))
    print(f"{len(local)} function-local import(s) of scoresolve modules")
    for line in local:
        print("  " + line)
    print(f"{len(optional_local)} function-local import(s) of modules that need an optional dependency (allowed)")
    for line in optional_local:
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
