"""Shared helpers for the scripts in ``benchmarks/``: output folder, machine description, JSON and
Markdown writing, and an optional matplotlib plot.

Every benchmark writes ``<out>/results.json`` (all runs, the configuration, versions and the machine),
``<out>/results.md`` (a Markdown table) and, where matplotlib is installed, a PNG plot. The default
folder is ``bench_out/<name>/`` (git-ignored).

Import from a benchmark script with::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import ...
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "prepare_out_dir",
    "machine_info",
    "versions",
    "write_json",
    "markdown_table",
    "write_text",
    "plot_metric_vs_nfe",
    "fmt",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


class BenchError(ValueError):
    """Bad input to a benchmark (printed as ``error: ...`` with exit status 2)."""


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run a benchmark's ``main(argv)``: a :class:`BenchError` prints one line on stderr and gives status 2."""
    try:
        main(argv)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def prepare_out_dir(out: str | os.PathLike[str] | None, name: str) -> Path:
    """Create (if needed) and check the output folder; default ``bench_out/<name>/`` in the working dir.

    Raises:
        SystemExit: with a clear message when the folder cannot be created or written.
    """
    path = Path(out) if out is not None else Path("bench_out") / name
    try:
        path.mkdir(parents=True, exist_ok=True)
        # a real write test: mkdir succeeds on read-only mounts that already hold the folder
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True):
            pass
    except OSError as e:
        raise SystemExit(f"error: --out {str(path)!r} is not a writable folder ({e.strerror or e})") from None
    if not path.is_dir():
        raise SystemExit(f"error: --out {str(path)!r} is not a folder")
    return path


def versions() -> dict[str, str | None]:
    """Versions of Python, torch, scoresolve and the optional packages a benchmark may use."""
    import importlib.metadata as md

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("scoresolve", "torch", "numpy", "torchdiffeq", "torchsde", "k-diffusion", "diffusers", "matplotlib"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def machine_info(device: str | None = None) -> dict[str, Any]:
    """The machine the figures come from: OS, CPU, core count, torch threads, accelerator."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device or "cpu",
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (NaN → null); returns the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` atomically; returns the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_table_results(out: Path, rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]],
                        argv: Sequence[str] | None) -> str:
    """Print the rows' Markdown table and write ``out/results.json`` (rows, machine, versions, argv) and
    ``out/table.md``; returns the table."""
    table = markdown_table(rows, columns)
    print(table)
    write_json(out / "results.json", {"rows": list(rows), "machine": machine_info(), "versions": versions(),
                                      "argv": sys.argv[1:] if argv is None else list(argv)})
    write_text(out / "table.md", table + "\n")
    return table


def fmt(v: Any, digits: int = 3) -> str:
    """Format a table cell: floats to ``digits`` significant digits, ``None`` as an em dash."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 10**6 or abs(v) < 10 ** -(digits)):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}" if abs(v) < 10**digits else f"{v:.0f}"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with ``columns`` given as ``(key, header)`` pairs."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)).replace("|", "\\|") for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body]) + "\n"


#: distinct colours for our series (colour-blind-safe Okabe-Ito first, then tab10's remaining hues)
OURS_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#8c564b",
                "#7f7f7f", "#bcbd22")
#: muted colours of the peers' libraries (prefix before ":"), dashed
PEER_COLOURS = {"k_diffusion": "#8a9bb0", "diffusers": "#c0a080"}
MARKERS = "osD^v<>pPXh*d"


def plot_metric_vs_nfe(
    path: str | os.PathLike[str],
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    ylabel: str,
    title: str = "",
    hline: float | None = None,
    hline_label: str = "floor",
    highlight: Sequence[str] = ("auto",),
) -> Path | None:
    """Plot ``{label: [(nfe, value), ...]}`` on log–log axes into a PNG.

    Our series (labels without ``lib:``) are drawn solid in distinct colours, each with its own
    (colour, marker) pair; those named in ``highlight`` thicker and on top. The
    peers' (``k_diffusion:...``, ``diffusers:...``) are dashed in their library's muted colour with
    distinct markers. The legend sits outside the axes, grouped: scoresolve, then each peer library.

    Returns the path, or ``None`` (with a message on stderr) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.ticker import NullLocator
    except ImportError:
        print("note: matplotlib is not installed (pip install 'scoresolve[bench]'); skipping the plot", file=sys.stderr)
        return None
    groups: dict[str, list[str]] = {}
    for label in sorted(series):
        groups.setdefault(label.partition(":")[0] if ":" in label else "scoresolve", []).append(label)
    order = ["scoresolve"] + sorted(g for g in groups if g != "scoresolve")
    fig, ax = plt.subplots(figsize=(9.5, 5.5))
    handles: list[Any] = []
    for group in order:
        labels = groups.get(group, [])
        if not labels:
            continue
        handles.append(Line2D([], [], ls="none", label=group if group == "scoresolve" else f"{group} (peer)"))
        for i, label in enumerate(labels):
            pts = sorted((x, y) for x, y in series[label] if y is not None and math.isfinite(y) and y > 0)
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            marker = MARKERS[i % len(MARKERS)]
            if group == "scoresolve":
                hot = label in highlight
                (line,) = ax.plot(xs, ys, "-", marker=marker, color=OURS_COLOURS[i % len(OURS_COLOURS)],
                                  lw=2.8 if hot else 1.5, ms=7 if hot else 5, zorder=4 if hot else 3, label=label)
            else:
                (line,) = ax.plot(xs, ys, "--", marker=marker, color=PEER_COLOURS.get(group, "#999999"), lw=1.0,
                                  ms=4.5, mfc="white", alpha=0.9, zorder=2, label=label.partition(":")[2])
            handles.append(line)
    if hline is not None and hline > 0:
        handles.append(ax.axhline(hline, color="k", lw=0.9, ls=":", label=hline_label, zorder=1))
    ax.set_xscale("log")
    ax.set_yscale("log")
    xs_all = sorted({x for pts in series.values() for x, _ in pts})
    if 0 < len(xs_all) <= 8:  # few budgets: label them as plain numbers
        ax.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("NFE (score evaluations counted)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    legend = ax.legend(handles=handles, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                       ncol=1 if len(handles) <= 30 else 2)
    for text, h in zip(legend.get_texts(), handles, strict=True):
        if isinstance(h, Line2D) and h.get_linestyle() == "None" and h.get_marker() in ("None", None, ""):
            text.set_fontweight("bold")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
