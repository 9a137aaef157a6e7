"""Randomness: standard normal noise reproducible from one generator or one seed per sample
(:class:`NoiseSource`), and Brownian increments consistent with increments already drawn (the Brownian
bridge, :func:`brownian_increment`)."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .sde import SDE

__all__ = ["NoiseSource", "brownian_increment"]


class NoiseSource:
    """Standard normal noise, reproducible from one generator or from one seed per sample.

    With ``seeds`` (one integer per sample) every row draws from its own generator, so a sample's
    value depends only on its seed: not on the batch size, its neighbours, or how many processes
    share the work. With a single ``generator`` (or none: the global RNG) the whole batch draws
    from one stream.
    """

    def __init__(
        self,
        generator: torch.Generator | None = None,
        seeds: Sequence[int] | Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if generator is not None and seeds is not None:
            raise ValueError("pass either generator= or seeds=, not both")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        self.generators: list[torch.Generator] | None = None
        if seeds is not None:
            seed_list = check_seeds(seeds)
            dev = torch.device(device) if device is not None else torch.device("cpu")
            self.generators = [torch.Generator(device=dev).manual_seed(s) for s in seed_list]
        #: number of per-sample seeds, or ``None`` for a shared generator
        self.batch_size: int | None = None if self.generators is None else len(self.generators)

    def randn(self, shape: Sequence[int], *, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Draw ``N(0, I)`` noise of ``shape`` (first dimension = batch)."""
        shape = tuple(shape)
        if self.generators is None:
            gen = self.generator
            if gen is not None and gen.device.type != torch.device(device).type:
                # a CPU generator for an accelerator: draw on the CPU, move once
                return torch.randn(shape, generator=gen, dtype=dtype).to(device)
            return torch.randn(shape, generator=gen, device=device, dtype=dtype)
        if shape[0] != len(self.generators):
            raise ValueError(f"seeds has {len(self.generators)} entries but the batch has {shape[0]} samples")
        rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in self.generators]
        return torch.stack(rows).to(device)

    def randn_like(self, x: Tensor) -> Tensor:
        return self.randn(x.shape, device=x.device, dtype=x.dtype)


def check_seeds(seeds: Any) -> list[int]:
    """``seeds`` as a list of Python ints, refusing fractions, bools and out-of-range values (never truncating)."""
    if isinstance(seeds, Tensor):
        if seeds.is_floating_point() or seeds.is_complex() or seeds.dtype == torch.bool or seeds.ndim != 1:
            raise TypeError(f"seeds must be a 1-D integer tensor, got dtype {seeds.dtype}, shape {tuple(seeds.shape)}")
        seeds = seeds.tolist()
    if isinstance(seeds, (str, bytes, dict)) or not hasattr(seeds, "__iter__"):
        raise TypeError(f"seeds must be a sequence of integers (one per sample), got {type(seeds).__name__}")
    out = []
    for s in seeds:
        if isinstance(s, (bool, float)) or not hasattr(s, "__index__"):
            raise TypeError(f"seeds must be integers, got {s!r} ({type(s).__name__})")
        v = operator.index(s)
        if not -(2**63) <= v < 2**64:
            raise ValueError(f"seeds must lie in [-2**63, 2**64), got {v}")
        out.append(v)
    if not out:
        raise ValueError("seeds is empty; give one integer per sample")
    return out


def _bcast(c: Tensor, x: Tensor) -> Tensor:
    """(B,) float64 coefficient -> broadcastable against x in x's dtype."""
    return SDE.bcast(c.to(x.dtype), x)


def brownian_increment(
    pieces: list[tuple[Tensor, Tensor]], h: Tensor, xi_bridge: Tensor, xi_fresh: Tensor
) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    r"""Brownian increment over ``[0, h]`` (per row) consistent with the increments already known.

    ``pieces`` are consecutive future intervals ``(length (B,), increment (B, *dims))`` starting at
    the current time. Pieces inside ``[0, h]`` are used whole, the one straddling ``h`` is split by the
    Brownian bridge (``xi_bridge``), and time beyond all pieces gets fresh noise (``xi_fresh``). At
    most one piece straddles ``h`` in each row, so each normal draw is used at most once per row.

    Returns the increment and the leftover pieces after ``h``.
    """
    rem = h.clone()
    total = torch.zeros_like(xi_fresh)
    left: list[tuple[Tensor, Tensor]] = []
    for length, w in pieces:
        take = torch.minimum(rem, length)
        pos = length > 0
        safe = torch.where(pos, length, torch.ones_like(length))
        frac = torch.where(pos, take / safe, torch.zeros_like(length))
        var = torch.where(pos, take * (length - take) / safe, torch.zeros_like(length)).clamp_min(0.0)
        w_take = _bcast(frac, w) * w + _bcast(var.sqrt(), w) * xi_bridge
        total = total + w_take
        left.append((length - take, w - w_take))
        rem = rem - take
    total = total + _bcast(rem.clamp_min(0.0).sqrt(), xi_fresh) * xi_fresh
    return total, left
