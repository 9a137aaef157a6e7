r"""The per-sample, controller-driven adaptive loop: every sample has its own position, step size and
accept/reject decision (Hairer, Nørsett & Wanner, *Solving ODEs I*, II.4).

An adaptive method supplies ``attempt(rows, pos, h, last, y) -> Proposal``: one attempted step of size ``h``
from ``pos`` on the rows still running, returning the proposed state and its error ratio (``<= 1`` accepts,
normed by a :class:`~scoresolve.solvers.controllers.Controller`). The loop owns the rest: it gathers the
unfinished rows (finished samples cost nothing), lands the last step exactly on ``end``, asks the controller
to accept and resize each row's step (optionally holding the step after a rejection), keeps accepted rows,
counts evaluations and steps per sample, names the attempt in non-finite-score errors, and gives up after
``max_steps`` attempts. A sample's result depends only on its own start (and its own noise).

Used by ``ode_adaptive`` (embedded Runge–Kutta pairs, :mod:`scoresolve.solvers.ode_adaptive`),
``gotta_go_fast`` (:mod:`scoresolve.solvers.gotta_go_fast`) and the per-sample likelihood.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .base import CountedScore
from .controllers import Controller

__all__ = ["Proposal", "AdaptiveResult", "Attempt", "run_adaptive", "take_rows"]

State = tuple[Tensor, ...]


@dataclass
class Proposal:
    """What an attempt returns on its rows: the proposed state, its error ratio ``(n,)`` and, when the method
    computes the new position itself (through another variable), that position (default ``pos + h``)."""

    y: State
    error: Tensor
    at: Tensor | None = None


#: ``attempt(rows, pos, h, last, y) -> Proposal`` on the rows ``rows`` (batch indices) still running
Attempt = Callable[[Tensor, Tensor, Tensor, Tensor, State], Proposal]


@dataclass
class AdaptiveResult:
    """Output of :func:`run_adaptive`: the final state, batched model calls, and per-sample evaluations,
    accepted and rejected steps; ``info`` holds ``attempts`` (loop iterations) and ``row_evals``."""

    y: State
    calls: int
    nfe_per_sample: Tensor
    accepted: Tensor
    rejected: Tensor
    info: dict[str, Any] = field(default_factory=dict)


def take_rows(ys: State, rows: Tensor) -> State:
    """The rows ``rows`` of every component."""
    return tuple(y.index_select(0, rows) for y in ys)


def run_adaptive(
    attempt: Attempt,
    y: State,
    pos: Tensor,
    end: float,
    h: Tensor,
    *,
    controller: Controller,
    error_order: float,
    nfe_per_attempt: int,
    max_steps: int,
    hold_after_reject: bool = False,
    score: CountedScore | None = None,
    after: Callable[[int, Tensor, Tensor, State], None] | None = None,
    name: str = "adaptive solver",
) -> AdaptiveResult:
    """Run ``attempt`` per sample from ``pos`` (``(B,)`` float64) to ``end`` with signed first steps ``h``
    (``(B,)``, same direction as ``end - pos``). ``y`` (components ``(B, ...)``) is updated in place on
    accepted rows. ``after(it, rows, accept, y)`` is called after each attempt with the whole state."""
    B = pos.shape[0]
    dev = pos.device
    span = abs(end - float(pos[0]))
    pos, h = pos.clone(), h.clone()
    nfe = torch.zeros(B, dtype=torch.long, device=dev)
    acc = torch.zeros(B, dtype=torch.long, device=dev)
    rej = torch.zeros(B, dtype=torch.long, device=dev)
    held = torch.zeros(B, dtype=torch.bool, device=dev)  # the row's last attempt was rejected
    active = torch.ones(B, dtype=torch.bool, device=dev)
    it = 0
    while bool(active.any()):
        if it >= max_steps:
            stuck = float(pos[active][0])
            raise RuntimeError(
                f"{name}: no convergence after max_steps={max_steps} attempted steps (a sample stuck at "
                f"{stuck:.6g}); loosen rtol/atol or raise max_steps"
            )
        if score is not None:
            score.step = it
        rows = active.nonzero().squeeze(1)
        pr, hr = pos[rows], h[rows]
        remaining = end - pr
        last = hr.abs() >= remaining.abs() * (1 - 1e-12)  # the last step lands exactly on `end`
        hr = torch.where(last, remaining, hr)
        tiny = hr.abs() < 1e-14 * span
        if bool(tiny.any()):
            raise RuntimeError(
                f"{name}: the step size underflowed at {float(pr[tiny][0]):.6g} (attempt {it}); the score may be "
                "non-finite or stiff there, or rtol/atol too tight"
            )
        prop = attempt(rows, pr, hr, last, take_rows(y, rows))
        accept, h_next = controller.propose(prop.error, hr, error_order, hold=held[rows] if hold_after_reject else None)
        nfe[rows] += nfe_per_attempt
        a_rows = rows[accept]
        if a_rows.numel():
            at = torch.where(last, torch.full_like(pr, end), pr + hr) if prop.at is None else prop.at
            pos[a_rows] = at[accept]
            for c, cn in zip(y, prop.y, strict=True):
                c[a_rows] = cn[accept]
            acc[a_rows] += 1
            active[a_rows[last[accept]]] = False
        rej[rows[~accept]] += 1
        held[rows] = ~accept
        h[rows] = h_next
        if after is not None:
            after(it, rows, accept, y)
        it += 1
    return AdaptiveResult(y, it * nfe_per_attempt, nfe, acc, rej, {"attempts": it, "row_evals": int(nfe.sum())})
