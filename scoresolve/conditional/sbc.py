r"""Simulation-based calibration of a conditional sampler on a model with no closed form.

If ``x ~ p`` (the model's own unconditional law) and ``x'_m ~ p(x_m | x_o)`` is drawn by an exact
conditional sampler, then the pair ``(x_o, x'_m)`` is again distributed as ``p``. So the joint
(observed, inpainted) set must be as close to a fresh unconditional set as another unconditional
set is. :func:`calibration_check` draws two unconditional sets ``A`` and ``B`` (reference) from the
model's sampler, inpaints the unobserved part of ``A`` and reports

.. math:: \text{ratio} = \mathrm{FD}\big(f(A_o, A'_m),\ f(B)\big) \,/\, \mathrm{FD}\big(f(A),\ f(B)\big)

in a feature space ``f`` (pixels by default; the bundled classifiers' features for digits/MNIST).
An exact sampler gives a ratio near 1, a biased one (e.g. the replacement method) a ratio well above; one
ratio scatters, so judge it over seeds or at large ``n``. Cost: ``2n`` unconditional samples plus the
inpainting of ``n``. (Talts et al. 2018, arXiv:1804.06788, rank scalar statistics; this is a distance variant.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..metrics.frechet import frechet_distance, gaussian_moments
from ..models import ScoreModel
from ..sampling import SampleResult, sample
from .api import inpaint

__all__ = ["CalibrationCheck", "calibration_check", "CHAIN"]

#: the unconditional sampler of the check (with the inpainting's ``steps``): the chain ``smc``'s particles move by
CHAIN = {"solver": "pc", "predictor": "ancestral_sampling", "corrector": "none", "grid": "log_snr", "final": "tweedie"}


@dataclass
class CalibrationCheck:
    """Result of :func:`calibration_check`.

    Attributes:
        fd: FD between the features of the (observed, inpainted) set and of the reference set.
        floor: FD between the features of the observed model samples (before inpainting) and the reference set.
        ratio: ``fd / floor`` (about 1 for an exact conditional sampler).
        n: samples per set.
        score_evals_per_output: single-sample score evaluations of the inpainting, per output.
        score_evals: all single-sample score evaluations of the check (the two unconditional sets included).
        samples: the ``(n, *shape)`` joint (observed, inpainted) samples.
    """

    fd: float
    floor: float
    ratio: float
    n: int
    score_evals_per_output: float
    score_evals: int
    samples: Tensor


def _features(features: Callable[[Tensor], Tensor] | None, x: Tensor) -> Tensor:
    f = x.reshape(x.shape[0], -1) if features is None else features(x)
    return f.to(torch.float64)


def calibration_check(
    model: ScoreModel | Callable[[Tensor, Tensor], Tensor],
    mask: Tensor,
    n: int,
    *,
    sde: Any = None,
    shape: tuple[int, ...] | None = None,
    features: Callable[[Tensor], Tensor] | None = None,
    sampler: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    **inpaint_options: Any,
) -> CalibrationCheck:
    """Check a conditional sampler against the model's own unconditional samples (module docstring).

    Args:
        model: the unconditional score model (``sde`` and ``shape`` needed for a plain callable).
        mask: boolean of the sample shape; True marks an observed entry.
        n: samples per set (the check draws ``2n`` unconditional samples and inpaints ``n``).
        features: ``(n, *shape) -> (n, F)`` feature map (default: the flattened pixels).
        sampler: options of :func:`scoresolve.sample` for the unconditional sets (default: ancestral
            sampling, no corrector, on the ``log_snr`` grid with the inpainting's ``steps`` (200 if unset), the
            chain the ``smc`` method's particles move by).
        generator: the one source of randomness.
        **inpaint_options: passed to :func:`scoresolve.inpaint` (``method``, ``particles``, ``steps``, ...).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (samples per set), got {n!r}")
    shp = tuple(model.sample_shape) if isinstance(model, ScoreModel) and shape is None else shape
    if shp is None:
        raise ValueError("shape is needed for a plain score callable (the shape of one sample)")
    m = torch.as_tensor(mask, dtype=torch.bool)
    if tuple(m.shape) != shp:
        raise ValueError(f"mask must have the sample shape {shp}, got {tuple(m.shape)}")
    opts = {**CHAIN, "steps": inpaint_options.get("steps") or 200}
    opts.update(sampler or {})
    uncond = sample(model, sde, shape=(2 * n, *shp), generator=generator, progress=False, return_result=True,
                    **opts)
    assert isinstance(uncond, SampleResult)
    a, b = uncond.samples[:n], uncond.samples[n:]
    res = inpaint(model, sde, a, m, generator=generator, return_result=True, **inpaint_options)
    assert isinstance(res, SampleResult)
    fa, fb, fc = (_features(features, v) for v in (a, b, res.samples))
    mb, cb = gaussian_moments(fb)
    floor = frechet_distance(*gaussian_moments(fa), mb, cb)
    fd = frechet_distance(*gaussian_moments(fc), mb, cb)
    rows = res.info.get("score_rows", res.nfe * n)
    return CalibrationCheck(fd=fd, floor=floor, ratio=fd / floor, n=n, score_evals_per_output=rows / n,
                            score_evals=int(rows + uncond.nfe * 2 * n), samples=res.samples)
