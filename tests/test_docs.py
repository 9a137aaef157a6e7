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


def test_solver_table_lists_every_registered_solver():
    text = (DOCS / "solvers.md").read_text(encoding="utf-8").split("<!-- end of solver table -->")[0]
    listed = set(re.findall(r"^\| `([a-z0-9_]+)` \|", text, flags=re.M))
    missing = sorted(set(SOLVERS.names()) - listed)
    stale = sorted(listed - set(SOLVERS.names()))
    assert not missing and not stale, (
        f"docs/solvers.md is out of date (missing {missing}, no longer registered {stale}); "
        "regenerate the table with: scoresolve solvers --markdown"
    )


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


def test_alias_table_in_sync():
    from scoresolve.aliases import markdown

    assert markdown() in (DOCS / "solvers.md").read_text(encoding="utf-8"), (
        "docs/solvers.md's alias table is out of date; paste scoresolve.aliases.markdown() under its marker"
    )
