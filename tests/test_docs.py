"""The documentation site: builds in strict mode offline, lists every page, and the solver table is
in sync with the registry."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scoresolve.registry import SOLVERS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _nav_files() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text[text.index("\nnav:"):]
    return re.findall(r":\s*([\w/.-]+\.md)\s*$", nav, flags=re.M)


def test_nav_lists_every_page_and_only_existing_ones():
    nav = _nav_files()
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    missing = [p for p in nav if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml nav names pages that do not exist: {missing}"
    orphans = [p for p in pages if p not in nav]
    assert not orphans, f"pages not in the mkdocs.yml nav (add them): {orphans}"


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_tables_are_fresh():
    """docs/solvers.md's solver and alias tables are what the registry makes now (python docs/hooks.py rewrites
    them), and a table that no longer matches is caught."""
    hooks = _hooks()
    assert not hooks.stale_pages(), f"stale generated tables in {hooks.stale_pages()}; run: python docs/hooks.py"
    text = (DOCS / "solvers.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([a-z0-9_]+)` \|", text.split("<!-- end of solver table -->")[0], flags=re.M))
    assert listed == set(SOLVERS.names())
    stale = text.replace("| `ode_rk4` | 4 | 4 |", "| `ode_rk4` | 3 | 4 |")
    assert stale != text and hooks.render_generated(stale) == text


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers")),
    reason="the docs extra is not installed (pip install mkdocs mkdocs-material 'mkdocstrings[python]')",
)
def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    site = tmp_path / "site"
    assert (site / "index.html").is_file()
    assert (site / "api" / "index.html").is_file()
    assert "latex2mathml could not convert" not in p.stderr, p.stderr[-3000:]
    # rendered, not raw: no RST role and no TeX delimiter left in any page, and formulas are MathML
    roles = re.compile(r":(math|func|class|meth|mod|attr|data):`?")
    leftovers = {}
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        found = roles.findall(text) + re.findall(r'class="arithmatex"|\\\(|\.\. math::', text)
        if found:
            leftovers[str(page.relative_to(site))] = sorted(set(map(str, found)))
    assert not leftovers, f"unrendered roles / maths: {leftovers}"
    assert (site / "api" / "index.html").read_text(encoding="utf-8").count("<math ") > 100
    # offline: nothing is fetched when a page opens (no external script, stylesheet, font, image or frame)
    external = re.compile(
        r"""(?:<script[^>]*\ssrc|<link[^>]*\shref|<img[^>]*\ssrc|<iframe[^>]*\ssrc|url\()\s*=?\s*["']?(?:https?:)?//"""
    )
    fetched = {}
    for f in [*site.rglob("*.html"), *site.rglob("*.css")]:
        hits = external.findall(f.read_text(encoding="utf-8", errors="replace"))
        if hits:
            fetched[str(f.relative_to(site))] = hits[:3]
    assert not fetched, f"pages that fetch from the network: {fetched}"
    assert "api.github.com" not in "".join(p.read_text(errors="replace") for p in site.rglob("*.html"))
