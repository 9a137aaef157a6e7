r"""Step-size controllers: accept or reject a step and size the next, apart from the solver (as diffrax splits them).

Error ratio per sample :math:`b` over its :math:`D` entries (Hairer, Nørsett & Wanner, *Solving ODEs I*,
eq. II.4.11; Jolicoeur-Martineau et al. 2021, arXiv:2105.14080, eq. 5), accepted when :math:`\le 1`:

.. math::  r_b = \sqrt{\frac1D \sum_j \Big(\frac{e_{bj}}{\mathrm{atol} + \mathrm{rtol}\,
           \max(|y_{0,bj}|, |y_{1,bj}|)}\Big)^2},\qquad
           h' = h \cdot \mathrm{clip}\big(\mathrm{safety}\cdot r^{-1/(q+1)},\ \mathrm{min\_factor},\
           \mathrm{max\_factor}\big),

:math:`q` the order of the error estimate. ``scale=`` replaces :math:`\max(|y_0|, |y_1|)` (Gotta Go Fast: the
noise std :math:`\sigma_t`); ``hold=`` caps the factor at 1 right after a rejection (Hairer et al., II.4).
Norms: ``"per_sample"`` (:math:`r_b`, no coupling), ``"batch_rms"`` (:math:`\sqrt{\mathrm{mean}_b r_b^2}`, one
step for the batch, as torchdiffeq) and ``"batch_max"`` (:math:`\max_b r_b`); the batch norms couple samples
(costs: docs/stochastic_samplers.md, docs/ode.md). The loop is :mod:`scoresolve.solvers.adaptive`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .._util import check_float, one_of

__all__ = ["error_norm", "Controller", "NORMS"]

NORMS: tuple[str, ...] = ("per_sample", "batch_rms", "batch_max")


def _work_dtype(x: Tensor) -> torch.dtype:
    # half-precision errors are squared and summed: do that in at least float32
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def error_norm(err: Tensor, y0: Tensor, y1: Tensor, rtol: float, atol: float, scale: Tensor | None = None) -> Tensor:
    r"""Per-sample RMS of ``err / (atol + rtol * max(|y0|, |y1|))`` over all non-batch dimensions.

    Args:
        err: the error estimate, shape ``(B, *dims)``.
        y0, y1: the state before and after the step (same shape), for the relative part.
        rtol, atol: relative and absolute tolerance (> 0).
        scale: optional non-negative tensor broadcastable to ``err`` (e.g. a per-sample ``(B, 1, ...)``
            noise level) that replaces ``max(|y0|, |y1|)`` in the relative part:
            ``err / (atol + rtol * scale)``.

    Returns:
        ``(B,)`` tensor, ``<= 1`` where the step meets the tolerance.
    """
    if err.shape != y0.shape or err.shape != y1.shape:
        raise ValueError(
            f"err, y0 and y1 must have the same shape, got {tuple(err.shape)}, {tuple(y0.shape)}, {tuple(y1.shape)}"
        )
    if err.ndim < 1:
        raise ValueError("err must have a batch dimension: shape (B, *dims)")
    dt = _work_dtype(err)
    if scale is None:
        scale = atol + rtol * torch.maximum(y0.abs(), y1.abs()).to(dt)
    else:
        if not isinstance(scale, Tensor):
            raise TypeError(f"scale must be a tensor broadcastable to err's shape, got {type(scale).__name__}")
        try:
            torch.broadcast_shapes(scale.shape, err.shape)
        except RuntimeError:
            raise ValueError(
                f"scale must be broadcastable to err's shape {tuple(err.shape)}, got {tuple(scale.shape)}"
            ) from None
        scale = atol + rtol * scale.to(device=err.device, dtype=dt)
    r = (err.to(dt) / scale).reshape(err.shape[0], -1)
    if r.shape[1] == 0:
        return torch.zeros(err.shape[0], device=err.device, dtype=dt)
    return r.pow(2).mean(dim=1).sqrt()


class Controller:
    r"""Accept/reject a step and propose the next step size from an error estimate
    (an integral, "I", controller; Hairer et al., *Solving ODEs I*, Sec. II.4).

    Args:
        rtol: relative tolerance (> 0), applied to :math:`\max(|y_0|, |y_1|)`.
        atol: absolute tolerance (> 0).
        norm: ``"per_sample"`` (one step size per sample), ``"batch_rms"`` (one for the batch,
            RMS of the per-sample ratios) or ``"batch_max"`` (one for the batch, worst sample).
            The batch norms couple the samples of a batch through the shared step size.
        safety: factor < 1 applied to the optimal step (0.9).
        min_factor, max_factor: bounds on the ratio of consecutive step sizes (0.2, 10).

    Example::

        ctl = Controller(rtol=0.05, atol=0.01, norm="batch_rms")
        ratio = ctl.ratio(err, x, x_new)              # (B,)
        accept, h = ctl.propose(ratio, h, error_order=1)
    """

    norms: ClassVar[tuple[str, ...]] = NORMS

    def __init__(
        self,
        rtol: float,
        atol: float,
        norm: str = "per_sample",
        safety: float = 0.9,
        min_factor: float = 0.2,
        max_factor: float = 10.0,
    ) -> None:
        self.rtol = check_float(rtol, "rtol")
        self.atol = check_float(atol, "atol")
        self.norm = one_of(norm, NORMS, "norm")
        self.safety = check_float(safety, "safety")
        self.min_factor = check_float(min_factor, "min_factor")
        self.max_factor = check_float(max_factor, "max_factor")
        if self.min_factor > 1.0:
            raise ValueError(f"min_factor must be <= 1, got {min_factor!r}")
        if self.max_factor < 1.0:
            raise ValueError(f"max_factor must be >= 1, got {max_factor!r}")

    @property
    def per_sample(self) -> bool:
        """Whether each sample gets its own step size."""
        return self.norm == "per_sample"

    def ratio(self, err: Tensor, y0: Tensor, y1: Tensor, scale: Tensor | None = None) -> Tensor:
        """The error ratio per sample ``(B,)``: :func:`error_norm` for ``"per_sample"``, else its batch
        RMS (``"batch_rms"``) or maximum (``"batch_max"``) broadcast to ``(B,)``.

        ``scale`` (optional) replaces ``max(|y0|, |y1|)`` in the relative tolerance (see
        :func:`error_norm`). A non-finite per-sample ratio stays non-finite (and is rejected by
        :meth:`propose`).
        """
        r = error_norm(err, y0, y1, self.rtol, self.atol, scale=scale)
        if self.norm == "batch_rms":
            return r.pow(2).mean().sqrt().expand_as(r)
        if self.norm == "batch_max":
            return r.max().expand_as(r)
        return r

    def propose(
        self, ratio: Tensor, h: Tensor | float, error_order: float, hold: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""Accept where ``ratio <= 1`` and propose
        :math:`h' = h\,\mathrm{clip}(\mathrm{safety}\cdot \mathrm{ratio}^{-1/(q+1)}, \mathrm{min},
        \mathrm{max})`.

        ``h`` may be negative (reverse time): its sign is kept. A ratio of 0 gives ``max_factor``; a
        NaN/inf ratio is rejected with ``min_factor``.

        Args:
            ratio: ``(B,)`` error ratios (from :meth:`ratio`).
            h: the step just tried, a number or a ``(B,)``/0-d tensor.
            error_order: order :math:`q` of the error estimate (> 0).
            hold: optional ``(B,)`` bool: where true the factor is capped at 1 (the step may shrink but
                not grow). Hairer et al., *Solving ODEs I*, II.4, advise this for the step right after
                a rejection: the rejected attempt showed the error model is optimistic there.

        Returns:
            ``(accept, h_next)``: ``(B,)`` bool and ``(B,)`` tensor (in ``h``'s dtype if a tensor,
            else ``ratio``'s).
        """
        q = check_float(error_order, "error_order")
        if ratio.ndim != 1:
            raise ValueError(f"ratio must have shape (B,), got {tuple(ratio.shape)}")
        if not isinstance(h, Tensor):
            h = torch.tensor(float(h), device=ratio.device, dtype=ratio.dtype)
        h = h.to(device=ratio.device)
        if h.ndim == 0:
            h = h.expand(ratio.shape[0])
        elif h.shape != ratio.shape:
            raise ValueError(
                f"h must be a number or have the shape of ratio {tuple(ratio.shape)}, got {tuple(h.shape)}"
            )
        r = ratio.to(torch.float64)
        finite = torch.isfinite(r)
        accept = finite & (r <= 1.0)
        # r = 0 → inf → clipped to max_factor; non-finite ratios shrink by min_factor
        factor = self.safety * torch.where(r > 0, r, torch.zeros_like(r)).pow(-1.0 / (q + 1.0))
        factor = torch.where(finite, factor, torch.full_like(factor, self.min_factor))
        factor = factor.clamp(self.min_factor, self.max_factor)
        if hold is not None:
            if not isinstance(hold, Tensor) or hold.shape != ratio.shape or hold.dtype != torch.bool:
                raise ValueError(f"hold must be a bool tensor of shape {tuple(ratio.shape)}")
            factor = torch.where(hold.to(factor.device), factor.clamp(max=1.0), factor)
        h_next = (h.to(torch.float64) * factor).to(h.dtype)
        return accept, h_next

    def __repr__(self) -> str:
        return (
            f"Controller(rtol={self.rtol}, atol={self.atol}, norm={self.norm!r}, safety={self.safety}, "
            f"min_factor={self.min_factor}, max_factor={self.max_factor})"
        )
