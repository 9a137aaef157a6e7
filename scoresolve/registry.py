"""A small name → object registry with helpful errors.

Every pluggable family (solvers, predictors, correctors, time grids) is one :class:`Registry`.
Extending scoresolve means registering a new entry, never editing an ``if`` chain::

    from scoresolve.registry import PREDICTORS

    @PREDICTORS.register("my_predictor", description="one line shown by ss.predictors()")
    class MyPredictor(Predictor):
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from ._util import closest

T = TypeVar("T")

__all__ = ["Registry", "UnknownNameError", "SOLVERS", "PREDICTORS", "CORRECTORS", "GRIDS"]


class UnknownNameError(ValueError):
    """Raised when a registry lookup fails; the message lists the names and the closest match."""


def _first_doc_line(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    para = " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())
    end = para.find(". ")
    return para if end < 0 else para[: end + 1]


class Registry(dict[str, T], Generic[T]):
    """Maps snake_case names to objects of one kind (``kind`` is used in error messages).

    A ``dict``: ``registry[name]`` looks an entry up (an unknown name raises :class:`UnknownNameError` with the
    closest match); iteration and :meth:`names` are sorted.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, description: str | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted.

        Registering a name twice is an error (silently replacing an entry would change what
        existing code runs).
        """
        if not name or name != name.strip() or name.lower() != name:
            raise ValueError(f"{self.kind} names are lower-case snake_case, got {name!r}")

        def deco(o: T) -> T:
            if name in self and self[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self[name] = o
            self._descriptions[name] = description or _first_doc_line(o)
            return o

        return deco if obj is None else deco(obj)

    def get(self, name: str | T, *, argument: str | None = None) -> T:  # type: ignore[override]
        """Look ``name`` up, naming ``argument`` in the error. Objects that are not strings are returned unchanged.

        Raises:
            UnknownNameError: naming the argument, the registered names and the closest match.
        """
        if not isinstance(name, str):
            return name
        if name in self:
            return self[name]
        return self.__missing__(name, argument)

    def __missing__(self, name: str, argument: str | None = None) -> T:
        arg = f" (argument {argument}=)" if argument else ""
        hint = closest(name, list(self))
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}{arg}.{hint} Registered {self.kind}s: " + ", ".join(self.names())
        )

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for code that registers entries for a while, such as tests)."""
        del self[name]
        del self._descriptions[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(dict.__iter__(self))

    def describe(self) -> dict[str, str]:
        """``{name: one-line description}`` for every entry, sorted by name."""
        return {n: self._descriptions[n] for n in self.names()}

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


SOLVERS: Registry[Any] = Registry("solver")
PREDICTORS: Registry[Any] = Registry("predictor")
CORRECTORS: Registry[Any] = Registry("corrector")
GRIDS: Registry[Any] = Registry("grid")
