"""Progress bars for long operations (sampling, calibration, likelihood, conditional sampling, training).

One helper on ``tqdm.auto`` (a widget in notebooks, text elsewhere), shown by default, also when stderr is not a
terminal (then refreshed at most every :data:`LOG_INTERVAL` seconds); ``progress=False`` silences it,
``progress=True`` forces it, ``progress=None`` shows it unless ``SCORESOLVE_PROGRESS`` is ``0``/``false``/``off``.
The bar's last line says what the operation cost (docs/getting_started.md, "Progress")::

    with Progress(total=steps, desc="scoresolve pc", progress=progress) as bar:
        for i in range(steps):
            ...
            bar.update(1)
        bar.close(evaluations=nfe)     # "... 100%|####| 10/10 [00:01, 11 evaluations, 1.2 s]"
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Progress", "enabled", "interactive", "ticking", "ENV", "LOG_INTERVAL"]

#: environment variable that turns the default bars off (``0``, ``false``, ``no``, ``off``)
ENV = "SCORESOLVE_PROGRESS"
#: seconds between refreshes when stderr is not a terminal (log files)
LOG_INTERVAL = 10.0


def enabled(progress: bool | None) -> bool:
    """Whether a bar is shown for ``progress`` (``None``: yes, unless ``SCORESOLVE_PROGRESS`` says no)."""
    if progress is None:
        return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {progress!r}")
    return progress


def interactive() -> bool:
    """``True`` when stderr is a terminal or the code runs in a notebook kernel (bars redraw in place)."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """A ``tqdm.auto`` bar, or nothing when silenced: every method is a no-op then.

    Args:
        total: expected number of updates (``None``: a counter without a percentage).
        desc: what runs, shown before the bar.
        progress: ``True`` / ``False`` / ``None`` (see the module docstring).
        unit: what one update counts (``"step"``, ``"eval"``, ``"sample"``, ...).
        initial: updates already done (a resumed run).
        leave: keep the closing line on screen (default ``True``).
    """

    def __init__(self, total: int | None, desc: str, *, progress: bool | None = None, unit: str = "step",
                 initial: int = 0, leave: bool = True) -> None:
        self.start = time.perf_counter()
        self.interactive = False
        self._bar: Any = None
        if not enabled(progress):
            return
        self.interactive = interactive()
        try:
            from tqdm.auto import tqdm
        except ImportError:
            if progress:
                raise ImportError("progress=True needs tqdm: pip install tqdm (or pass progress=False)") from None
            return
        self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=sys.stderr,
                         dynamic_ncols=True, mininterval=0.1 if self.interactive else LOG_INTERVAL)

    @property
    def active(self) -> bool:
        """Whether a bar is shown."""
        return self._bar is not None

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n``; ``postfix`` (e.g. ``loss=0.1``) is shown after the bar."""
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)

    def write(self, line: str) -> None:
        """A line above the bar (e.g. a loss line in a log file), only when the bar is shown."""
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)

    def close(self, **cost: Any) -> None:
        """End the bar; its last line shows ``cost`` (``evaluations=1234`` → "1234 evaluations") and the
        seconds since the start. Idempotent."""
        if self._bar is None:
            return
        bits = [f"{v:,}" if isinstance(v, int) else str(v) for v in cost.values()]
        bits = [f"{b} {k.replace('_', ' ')}" for b, k in zip(bits, cost, strict=True)]
        bits.append(f"{time.perf_counter() - self.start:.1f} s")
        self._bar.set_postfix_str(", ".join(bits), refresh=False)
        self._bar.close()
        self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def ticking(fn: Callable[..., Any], bar: Progress) -> Callable[..., Any]:
    """``fn`` that advances ``bar`` by one at every call (e.g. a score counted in evaluations)."""
    if not bar.active:
        return fn

    def call(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        bar.update(1)
        return out

    return call
