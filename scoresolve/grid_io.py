r"""Sigma lists as data: a scoresolve grid written as the noise levels other samplers take, and read back.

The list is the EDM/k-diffusion noise level :math:`\sigma(t) = \sigma_t/\alpha_t = e^{-\lambda(t)}` at each grid
time, decreasing, with a final ``0.0`` when the run ends with a step to :math:`\sigma = 0`. That is the form
diffusers' ``set_timesteps(sigmas=...)`` / ``pipe(sigmas=...)``, k-diffusion's ``sample_*(model, x, sigmas)``
and ComfyUI-style custom-sigma inputs (``SIGMAS``, comma-separated text) accept unchanged. JSON files hold a
plain list; text files one comma-separated line. Floats are written with 17 significant digits (exact).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .sde import SDE
from .solvers.base import check_grid
from .solvers.grids import make_grid

__all__ = ["export", "import_"]


def _times(grid: Any, sde: SDE, steps: int | None, eps: float | None) -> Tensor:
    if hasattr(grid, "grid") and not isinstance(grid, (str, Tensor)):  # a SampleResult
        grid = grid.grid
    if isinstance(grid, str):
        if steps is None:
            raise ValueError(f"export: a named grid ({grid!r}) needs steps=")
        return make_grid(grid, sde, int(steps), sde.default_eps if eps is None else float(eps))
    if grid is None:
        raise ValueError("export: grid must be a registered grid name, a sequence of times or a SampleResult")
    return check_grid(grid, sde)


def export(
    grid: Any,
    sde: SDE,
    path: str | Path | None = None,
    *,
    steps: int | None = None,
    eps: float | None = None,
    final_zero: bool = True,
) -> list[float]:
    r"""A grid as a sigma list :math:`[\sigma(t_0), \dots, \sigma(t_n), 0]`, optionally written to ``path``.

    Args:
        grid: a registered grid name (with ``steps``, ``eps``), a decreasing sequence of times, or a
            :class:`~scoresolve.SampleResult` (its ``grid``: e.g. ``auto``'s calibrated grid).
        sde: the SDE whose times these are (sets :math:`\sigma(t)`).
        path: write ``*.json`` (a list) or any other suffix as text (one comma-separated line).
        final_zero: append ``0.0`` (the step to :math:`\sigma = 0` that the peers' lists end with).
    """
    t = _times(grid, sde, steps, eps)
    sig = [float(s) for s in sde.sigma(t.to(torch.float64))]
    if final_zero:
        sig.append(0.0)
    if path is not None:
        p = Path(path)
        text = json.dumps(sig) if p.suffix.lower() == ".json" else ", ".join(repr(s) for s in sig)
        p.write_text(text + "\n")
    return sig


def import_(source: str | Path | Sequence[float] | Tensor, sde: SDE | None = None) -> Tensor:
    r"""Read a sigma list (a ``.json``/text file, a JSON or comma/space-separated string, or a sequence).

    Returns the sigmas (float64, checked: finite, strictly decreasing, positive but for a final 0), or with
    ``sde`` the grid of times for ``ss.sample(grid=...)``: :math:`t = \sigma^{-1}` of the positive entries
    (a final 0 is the solver's step to zero, ``last_step``/``final``).
    """
    values: Any = source
    if isinstance(source, (str, Path)):
        text = str(source)
        p = Path(text)
        if len(text) < 4096 and p.suffix.lower() in (".json", ".txt", ".csv", "") and p.is_file():
            text = p.read_text()
        text = text.strip()
        if text.startswith("["):
            values = json.loads(text)
        else:
            parts = [s for s in re.split(r"[,\s]+", text) if s]
            try:
                values = [float(s) for s in parts]
            except ValueError as e:
                raise ValueError(f"import_: not a sigma list ({e}); expected numbers separated by commas") from None
    sig = torch.as_tensor(values, dtype=torch.float64).detach().cpu().reshape(-1)
    if sig.numel() < 2 or not torch.isfinite(sig).all():
        raise ValueError("import_: a sigma list needs at least 2 finite entries")
    if not (sig[1:] < sig[:-1]).all() or (sig[:-1] <= 0).any() or sig[-1] < 0:
        raise ValueError("import_: sigmas must be strictly decreasing and positive (a final 0 allowed)")
    if sde is None:
        return sig
    pos = sig[sig > 0]
    return check_grid(sde.t_from_sigma(pos).clamp(max=sde.T), sde, name="imported sigmas")
