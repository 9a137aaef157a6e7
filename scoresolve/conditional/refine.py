r"""Metropolis-adjusted Langevin moves on the unobserved block at one noise level (the particle filter's finish).

Target at time ``t``: :math:`\pi(x) \propto p_t(x)\,\prod_c N(v_c;\ a_c x_c,\ b_c^2)` over the ``free``
coordinates, the others held fixed (the pinned observation); the Gaussian factors are the forward transitions from
:math:`x_{t,c}` to a noisy coordinate's entry on the observation path. Proposal :math:`x' = x + \tfrac h2
\nabla\log\pi(x) + \sqrt h\,z` on the free block (MALA, Roberts & Tweedie 1996). The acceptance needs
:math:`\log p_t(x') - \log p_t(x)`, which a score model gives only as a path integral: the trapezoid rule
:math:`\tfrac12 (s(x) + s(x'))\cdot(x' - x)` (exact for a Gaussian :math:`p_t`, error :math:`O(\lVert x'-x\rVert^3)`
otherwise). The step ``h`` is per row, adapted toward acceptance 0.6 (Robbins-Monro on :math:`\log h`) during the
first half of the moves and frozen after, so the second half is a fixed Metropolis kernel (it leaves :math:`\pi`
invariant up to the trapezoid rule's error). Cost: one score evaluation per row and move.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..noise import NoiseSource
from ..sde import SDE
from ._common import rand

__all__ = ["mala_refine", "path_anchor"]

_TARGET_ACCEPT = 0.6


def mala_refine(
    score: Callable[[Tensor], Tensor],
    x: Tensor,
    s: Tensor,
    free: Tensor,
    moves: int,
    step: float,
    noise: NoiseSource,
    generator: torch.Generator | None,
    anchor: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``moves`` MALA moves of each row of ``x`` ``(n, d)`` (score ``s`` at ``x``) on the coordinates ``free``;
    ``step``: the initial ``h``; ``anchor = (a, v, prec)``: the Gaussian factors. Returns the final states, their
    scores and each row's acceptance rate over the frozen half."""
    n = x.shape[0]
    f64 = torch.float64
    zero = torch.zeros((), device=x.device, dtype=x.dtype)
    a, v, prec = anchor if anchor is not None else (zero, zero, zero)

    def extra(xx: Tensor) -> tuple[Tensor, Tensor]:  # log of the Gaussian factors and their gradient
        r = a * xx - v
        return (-0.5 * prec * r.pow(2)).to(f64).sum(1), -prec * a * r

    log_h = torch.full((n, 1), float(step), device=x.device, dtype=f64).log()
    accepted = torch.zeros(n, device=x.device, dtype=f64)
    warm = moves // 2
    le, ge = extra(x)
    grad = torch.where(free, s + ge, zero)
    for j in range(moves):
        h = log_h.exp().to(x.dtype)
        z = noise.randn(x.shape, device=x.device, dtype=x.dtype)
        xp = torch.where(free, x + 0.5 * h * grad + h.sqrt() * z, x)
        sp = score(xp)
        lep, gep = extra(xp)
        gradp = torch.where(free, sp + gep, zero)
        d = (xp - x).to(f64)
        log_ratio = 0.5 * (torch.where(free, s + sp, zero).to(f64) * d).sum(1) + lep - le
        back = torch.where(free, x - xp - 0.5 * h * gradp, zero).to(f64)
        log_ratio = log_ratio - back.pow(2).sum(1) / (2 * h[:, 0].to(f64)) + 0.5 * z.to(f64).pow(2).mul(free).sum(1)
        acc_p = torch.exp(torch.clamp(torch.nan_to_num(log_ratio, nan=-torch.inf), max=0.0))
        take = rand((n,), generator, x.device, f64) < acc_p
        x = torch.where(take[:, None], xp, x)
        s = torch.where(take[:, None], sp, s)
        grad = torch.where(take[:, None], gradp, grad)
        le = torch.where(take, lep, le)
        if j < warm:
            log_h = log_h + (acc_p[:, None] - _TARGET_ACCEPT) / math.sqrt(1.0 + j / 4)  # Robbins-Monro
        else:
            accepted += take.to(f64)
    return x, s, accepted / max(moves - warm, 1)


def path_anchor(sde: SDE, times: Tensor, y_path: Tensor, m_path: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    r"""The Gaussian factors ``(a, v, prec)`` ``(n, d)`` tying the last state's free coordinates to the observation
    path: a coordinate that enters the path at ``t_j`` above the last time (a noisy one) adds the forward transition
    :math:`N(v;\ a\,x_{t_N},\ b^2)` from ``t_N`` to ``t_j`` (``v``: its pinned value). ``None`` when there is none."""
    entry = m_path.sum(0) - 1  # masks are monotone (pinned from the entry up); -1: never on the path
    noisy = (entry >= 0) & (entry < times.numel() - 1)  # entered above the last time
    if not bool(noisy.any()):
        return None
    t64 = times.to(torch.float64).to(y_path.device)
    a, b = sde.transition(t64[entry.clamp(min=0)], t64[-1:].expand_as(entry))
    v = torch.gather(y_path, 0, entry.clamp(min=0)[None]).squeeze(0)
    dt = y_path.dtype
    zero = torch.zeros((), device=y_path.device, dtype=dt)
    prec = torch.where(noisy, 1.0 / b.clamp(min=1e-30).to(dt).pow(2), zero)
    return torch.where(noisy, a.to(dt), zero), torch.where(noisy, v, zero), prec
