"""Build-time conversions for the documentation site (not part of the package).

1. ``RSTDocstrings`` (a griffe extension, listed under mkdocstrings' ``extensions``): the package's docstrings
   use reStructuredText roles and directives inside Google-style sections. Before mkdocstrings renders them,
   ``:math:`x``` becomes ``$x$``, a ``.. math::`` block becomes a ``$$`` block, ``:func:`name``` (``:class:``,
   ``:meth:``, ``:mod:``, ``:attr:``, ``:data:``, ``:exc:``) becomes a cross-reference that links when the object is
   documented and is plain code otherwise, and RST "simple tables" (``====`` borders) become Markdown tables.
2. ``on_page_content`` (a MkDocs hook): every formula (pymdownx.arithmatex's ``\\(..\\)`` / ``\\[..\\]`` output) is
   rendered to MathML at build time with ``latex2mathml``, which browsers display natively: the site loads no
   script and no stylesheet from anywhere, so it renders offline.
3. ``on_page_markdown`` (a MkDocs hook): the tables between ``<!-- NAME: generated ... -->`` and
   ``<!-- end of NAME -->`` markers (the solver and alias tables of ``docs/solvers.md``) are made from the
   registry at build time. ``python docs/hooks.py`` rewrites them in the source files, ``--check`` only
   says whether they are stale (``tests/test_docs.py`` fails when they are).
"""

from __future__ import annotations

import html
import importlib
import logging
import re
import sys
from pathlib import Path
from typing import Any

try:
    import griffe
except ImportError:  # pragma: no cover - only the MkDocs hook is used
    griffe = None

log = logging.getLogger("mkdocs.hooks.scoresolve")

DOCS = Path(__file__).resolve().parent
#: generated tables: marker name -> the function that makes the Markdown (importing scoresolve on first use)
GENERATED: dict[str, tuple[str, str]] = {
    "solver table": ("scoresolve.cli", "solver_markdown"),
    "alias table": ("scoresolve.aliases", "markdown"),
}
_GENERATED_BLOCK = re.compile(
    r"(<!-- (?P<name>[a-z ]+): generated [^>]*-->\n)(?P<body>.*?)(<!-- end of (?P=name) -->)", re.S
)


def render_generated(text: str) -> str:
    """``text`` with every generated table between its markers made afresh."""

    def fill(m: re.Match[str]) -> str:
        if m.group("name") not in GENERATED:
            return m.group(0)
        module, fn = GENERATED[m.group("name")]
        return m.group(1) + getattr(importlib.import_module(module), fn)() + m.group(4)

    return _GENERATED_BLOCK.sub(fill, text)


def stale_pages() -> list[Path]:
    """The pages under ``docs/`` whose generated tables differ from what the registry makes now."""
    return [p for p in sorted(DOCS.rglob("*.md")) if render_generated(t := p.read_text(encoding="utf-8")) != t]


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return render_generated(markdown)

_ROLE = re.compile(r":(func|class|meth|mod|attr|data|exc|obj):`~?([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]*)`")
_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)$")
_BORDER = re.compile(r"^[ \t]*=+(?:[ \t]+=+)+[ \t]*$")


def _xref(m: re.Match[str]) -> str:
    target = m.group(2).strip()
    if " <" in target and target.endswith(">"):  # :func:`title <target>`
        title, target = target[:-1].split(" <", 1)
    else:
        title = target.split(".")[-1] if m.group(0).split("`", 1)[1].startswith("~") else target
    shown = f"{title}()" if m.group(1) in ("func", "meth") and not title.endswith(")") else title
    ident = html.escape(target.lstrip("."), quote=True)
    return f'<autoref identifier="{ident}" optional><code>{html.escape(shown)}</code></autoref>'


def _math_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent = len(m["indent"])
        body = [m["first"].strip()] if m["first"].strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            if lines[i].strip():
                body.append(lines[i].strip())
            elif body and i + 1 < len(lines) and len(lines[i + 1]) - len(lines[i + 1].lstrip()) <= indent:
                break
            i += 1
        pad = m["indent"]
        out += ["", pad + "$$", *(pad + b for b in body), pad + "$$", ""]
    return out


def _tables(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not _BORDER.match(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        border = lines[i]
        spans = [(mm.start(), mm.end()) for mm in re.finditer(r"=+", border)]
        rows, borders, j = [], 1, i + 1
        while j < len(lines) and borders < 3:
            if _BORDER.match(lines[j]):
                borders += 1
            elif lines[j].strip():
                cells = [lines[j][a : (spans[k + 1][0] if k + 1 < len(spans) else None)].strip()
                         for k, (a, _) in enumerate(spans)]
                rows.append(cells)
            j += 1
        if borders < 3 or not rows:  # not a simple table
            out.append(lines[i])
            i += 1
            continue
        pad = border[: len(border) - len(border.lstrip())]
        out += [""]
        for r, cells in enumerate(rows):
            out.append(pad + "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
            if r == 0:
                out.append(pad + "|" + "---|" * len(cells))
        out += [""]
        i = j
    return out


def rst_to_markdown(text: str) -> str:
    """The conversions of item 1 of the module docstring."""
    lines = _tables(_math_blocks(text.splitlines()))
    text = "\n".join(lines)
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
    return _ROLE.sub(_xref, text)


if griffe is not None:

    class RSTDocstrings(griffe.Extension):
        """Rewrite each docstring from RST roles/directives to Markdown before it is parsed (module docstring)."""

        def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
            if obj.docstring is not None:
                obj.docstring.value = rst_to_markdown(obj.docstring.value)


# --- MkDocs hook: formulas to MathML ------------------------------------------------------------------------------
_ARITH = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*(?:\\\((?P<inline>.*?)\\\)|\\\[(?P<display>.*?)\\\])\s*</(?P=tag)>',
    flags=re.S,
)


def _mathml(m: re.Match[str]) -> str:
    from latex2mathml.converter import convert

    display = m["display"] is not None
    tex = html.unescape(m["display"] if display else m["inline"]).strip()
    try:
        return convert(tex, display="block" if display else "inline")
    except Exception as e:  # noqa: BLE001 - show the TeX rather than fail the build
        log.warning("latex2mathml could not convert %r: %s", tex[:80], e)
        return f"<code>{html.escape(tex)}</code>"


def on_page_content(html_text: str, **kwargs: Any) -> str:
    return _ARITH.sub(_mathml, html_text)


if __name__ == "__main__":
    stale = stale_pages()
    if "--check" in sys.argv[1:]:
        print("\n".join(f"stale: {p.relative_to(DOCS.parent)}" for p in stale) or "generated tables up to date")
        sys.exit(1 if stale else 0)
    for p in stale:
        p.write_text(render_generated(p.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"rewrote {p.relative_to(DOCS.parent)}")
