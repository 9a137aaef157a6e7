"""The help formatter shared by the ``scoresolve`` command line and ``python -m scoresolve.train``."""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter"]


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help once, and only when the help does not already say what the
    default is and there is one to show (not ``None`` / ``False``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text.lower()
            or action.default in (None, False, argparse.SUPPRESS)
            or not action.option_strings
        ):
            return text
        return text + " (default: %(default)s)"
