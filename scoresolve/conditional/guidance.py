r"""Guidance: score models of a conditional distribution built from an unconditional one, usable with
every solver of :func:`scoresolve.sample` (they are plain score models).

Classifier guidance (Song et al. 2021, arXiv:2011.13456, Sec. 5 and App. I.1; Dhariwal & Nichol 2021,
arXiv:2105.05233 for the scale): :math:`\nabla_x \log p_t(x) + w\,\nabla_x \log p_t(y \mid x)`, exact at
:math:`w = 1` with the exact noisy-data classifier (Bayes' rule; :math:`\log p(y)` has no gradient in :math:`x`).

Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598): :math:`s_w = s(x, t) + w\,(s(x, t \mid y) -
s(x, t))`; :math:`w = 1` is conditional sampling, :math:`w = 0` unconditional (their weight is :math:`w - 1`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..models import ScoreModel, as_score_fn

__all__ = ["guided", "classifier_free"]


def _check_scale(scale: Any) -> float:
    try:
        v = float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__}") from None
    if not math.isfinite(v):
        raise ValueError(f"scale must be finite, got {scale!r}")
    return v


def _wrap(fn: Callable[[Tensor, Tensor], Tensor], like: Any, name: str) -> ScoreModel:
    if isinstance(like, ScoreModel):
        return ScoreModel(fn, sde=like.sde, sample_shape=like.sample_shape, data_range=like.data_range, name=name)
    return ScoreModel(fn, name=name)


def guided(
    model: Callable[[Tensor, Tensor], Tensor] | ScoreModel,
    log_prob_y_fn: Callable[[Tensor, Tensor], Tensor],
    scale: float = 1.0,
) -> ScoreModel:
    r"""Classifier guidance: the score :math:`s(x,t) + w\,\nabla_x \log p_t(y \mid x)`.

    Args:
        model: the unconditional score model.
        log_prob_y_fn: ``log_prob_y_fn(x, t) -> (B,)``, a differentiable :math:`\log p_t(y \mid x_t)`
            with the target ``y`` fixed inside it (e.g. ``lambda x, t: clf(x, t).log_softmax(-1)[:, label]``;
            ``label`` may be a ``(B,)`` tensor for per-sample targets). Its gradient is taken by
            autograd, also when the sampler runs under ``torch.no_grad``/``inference_mode``.
        scale: the guidance scale :math:`w` (1: Bayes' rule; larger sharpens).

    Returns:
        A :class:`~scoresolve.ScoreModel` (carrying ``model``'s SDE and sample shape). One call costs
        one model evaluation plus a forward and backward pass of the classifier.
    """
    fn = as_score_fn(model)
    if not callable(log_prob_y_fn):
        raise TypeError(f"log_prob_y_fn must be a callable (x, t) -> (B,), got {type(log_prob_y_fn).__name__}")
    w = _check_scale(scale)

    def score(x: Tensor, t: Tensor) -> Tensor:
        s = fn(x, t)
        if w == 0.0:
            return s
        return s + w * grad_log_prob(log_prob_y_fn, x, t).to(s.dtype)

    return _wrap(score, model, "classifier_guided")


def grad_log_prob(log_prob_y_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor) -> Tensor:
    r""":math:`\nabla_x` of ``log_prob_y_fn(x, t)`` (one scalar per sample), by autograd."""
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        tg = t.detach().clone()
        lp = log_prob_y_fn(xg, tg)
        if not isinstance(lp, Tensor):
            raise TypeError(f"log_prob_y_fn must return a tensor of shape ({x.shape[0]},), got {type(lp).__name__}")
        if lp.shape != (x.shape[0],):
            raise ValueError(
                f"log_prob_y_fn must return one scalar per sample, shape ({x.shape[0]},); got {tuple(lp.shape)}"
            )
        if not lp.requires_grad:
            raise ValueError("log_prob_y_fn's output does not depend differentiably on x (no gradient to guide with)")
        (g,) = torch.autograd.grad(lp.sum(), xg)
    return g


def classifier_free(
    cond_model: Callable[..., Tensor],
    uncond_model: Callable[[Tensor, Tensor], Tensor] | ScoreModel,
    scale: float = 1.0,
    y: Any = None,
) -> ScoreModel:
    r"""Classifier-free guidance: :math:`s(x,t) + w\,(s(x,t \mid y) - s(x,t))`.

    Args:
        cond_model: the conditional score, called as ``cond_model(x, t, y)`` when ``y`` is given,
            else ``cond_model(x, t)`` (with the condition bound inside it).
        uncond_model: the unconditional score ``uncond_model(x, t)`` (often the same network with a
            null label, wrapped as a callable).
        scale: :math:`w`; 1 gives the conditional model, 0 the unconditional, > 1 sharpens.
        y: the condition passed to ``cond_model`` (e.g. a ``(B,)`` label tensor matching the batch).

    Returns:
        A :class:`~scoresolve.ScoreModel` (metadata from ``uncond_model``). One call costs one
        evaluation of each model (one when ``scale`` is 0 or 1).
    """
    if not callable(cond_model):
        raise TypeError(f"cond_model must be callable, got {type(cond_model).__name__}")
    ufn = as_score_fn(uncond_model)
    w = _check_scale(scale)

    def cond(x: Tensor, t: Tensor) -> Tensor:
        return cond_model(x, t) if y is None else cond_model(x, t, y)

    def score(x: Tensor, t: Tensor) -> Tensor:
        if w == 1.0:
            return cond(x, t)
        u = ufn(x, t)
        if w == 0.0:
            return u
        c = cond(x, t)
        if c.shape != u.shape:
            raise ValueError(f"cond_model returned shape {tuple(c.shape)}, uncond_model {tuple(u.shape)}")
        return u + w * (c - u)

    return _wrap(score, uncond_model, "classifier_free")
