r"""Linear observations :math:`y = A x + \text{noise}` and colorisation, reduced to inpainting by an
orthogonal change of basis (Song et al. 2021, arXiv:2011.13456, App. I.3, generalised).

With the SVD :math:`A = U \,\mathrm{diag}(S)\, V^\top` (``V`` a full ``D × D`` orthogonal matrix) and
:math:`x' = V^\top x`, the observation reads :math:`(U^\top y)_i = S_i x'_i + (U^\top \text{noise})_i`
for the ``r`` non-zero singular values: an observation of the first ``r`` coordinates of :math:`x'`,
exact (``noise_std = 0``) or with noise level :math:`\nu_i` = ``noise_std`` / :math:`S_i`. An orthogonal
map commutes with the isotropic forward noise, so the diffused density of :math:`x'` has the score
:math:`V^\top s(V x', t)`: inpainting that model in the :math:`x'` basis and mapping back samples
:math:`p(x \mid y)` — with any inpainting method, exact or not.

Colorisation is the per-pixel case: a gray image ``g = Σ_c w_c x_c`` (``w`` the channel mix, e.g. the
mean ``(1/3, 1/3, 1/3)``) observes one direction of each pixel's colour vector. The paper's
orthogonal colour transform (first column the gray direction :math:`(1,1,1)/\sqrt3`) is the ``C × C``
version of ``V``; only the channel mixing is applied, never a ``D × D`` matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._util import one_of
from ..models import ScoreModel
from ..sampling import SampleResult
from ..sde import SDE
from ._common import Observation, resolve_model
from .api import METHODS, run_method

__all__ = ["linear_inverse", "colorize", "color_basis", "avg_pool_matrix", "super_resolution"]


def _finish(res: Tensor | SampleResult, back: Callable[[Tensor], Tensor]) -> Tensor | SampleResult:
    if isinstance(res, SampleResult):
        res.samples = back(res.samples)
        return res
    return back(res)


def linear_inverse(
    model: Callable[[Tensor, Tensor], Tensor] | ScoreModel,
    sde: SDE | None,
    y: Tensor,
    A: Tensor,
    noise_std: float = 0.0,
    *,
    sample_shape: Sequence[int] | None = None,
    rcond: float = 1e-10,
    **options: Any,
) -> Tensor | SampleResult:
    r"""Sample :math:`p(x \mid A x + \sigma_y \varepsilon = y)` with an unconditional score model.

    Args:
        model, sde: the unconditional score model and its SDE.
        y: ``(n, M)`` observations, one sample returned per row.
        A: ``(M, D)`` with ``D`` the number of entries of one sample.
        noise_std: :math:`\sigma_y`, the standard deviation of the observation noise (0: exact).
        **options: as for :func:`~scoresolve.inpaint` (``method``, ``steps``, ``particles``, ``eps``, ``grid``,
            ``denoise``, ``generator``, ``return_result`` and the method's options); the method runs in the
            rotated basis.
        sample_shape: the shape of one sample when ``model`` is a plain callable (default ``(D,)``).
        rcond: singular values below ``rcond · max(S)`` count as zero (unobserved directions).

    Returns:
        ``(n, *sample_shape)`` samples; with ``noise_std = 0`` they satisfy ``A x = y`` up to
        rounding (for ``y`` in the range of ``A``).

    Cost: that of :func:`~scoresolve.inpaint` plus two ``D × D`` matrix products per score call and
    one SVD of ``A`` (float64).
    """
    score_fn, sde = resolve_model(model, sde)
    one_of(options.get("method", "smc"), METHODS, "method")
    if not isinstance(A, Tensor) or A.ndim != 2:
        raise ValueError(f"A must be a 2-D tensor (M, D), got {getattr(A, 'shape', type(A).__name__)}")
    if not isinstance(y, Tensor) or y.ndim != 2 or y.shape[1] != A.shape[0]:
        raise ValueError(f"y must have shape (n, M={A.shape[0]}), got {tuple(getattr(y, 'shape', ()))}")
    if not torch.isfinite(y).all():
        raise ValueError("y contains NaN or inf")
    if not torch.isfinite(A).all():
        raise ValueError("A contains NaN or inf")
    nstd = float(noise_std)
    if not math.isfinite(nstd) or nstd < 0:
        raise ValueError(f"noise_std must be finite and >= 0, got {noise_std!r}")
    d = A.shape[1]
    shape = model.sample_shape if isinstance(model, ScoreModel) and model.sample_shape else sample_shape
    ev = tuple(shape) if shape is not None else (d,)
    if math.prod(ev) != d:
        raise ValueError(f"A has {d} columns but one sample {ev} has {math.prod(ev)} entries")
    dev, dt = y.device, y.dtype
    U, S, Vh = torch.linalg.svd(A.detach().to(torch.float64).cpu(), full_matrices=True)
    if S.numel() == 0 or float(S.max()) == 0.0:
        raise ValueError("A is zero: it observes nothing")
    r = int((S > rcond * S.max()).sum())
    uy = y.detach().to(torch.float64).cpu() @ U  # (n, M): U^T y per row
    if nstd == 0.0 and A.shape[0] > r:
        resid = uy[:, r:].norm(dim=1)
        if bool((resid > 1e-5 * (1.0 + y.detach().double().cpu().norm(dim=1))).any()):
            raise ValueError(
                f"y is not in the range of A (rank {r}); with noise_std=0 the observation must be consistent"
            )
    n = y.shape[0]
    y_rot = torch.zeros(n, d, dtype=torch.float64)
    y_rot[:, :r] = uy[:, :r] / S[:r]
    mask = torch.zeros(d, dtype=torch.bool)
    mask[:r] = True
    nu = torch.zeros(d, dtype=torch.float64)
    nu[:r] = nstd / S[:r]
    V = Vh.to(device=dev, dtype=dt)  # rows: the new basis; x' = V x, x = V^T x'
    obs = Observation.from_inpainting(y_rot.to(device=dev, dtype=dt), mask.to(dev), None, noise_std=nu.to(dev, dt))

    def rot_score(xr: Tensor, t: Tensor) -> Tensor:
        x = (xr.reshape(xr.shape[0], d) @ V).reshape(xr.shape[0], *ev)
        return (score_fn(x, t).reshape(xr.shape[0], d) @ V.T).reshape(xr.shape)

    return _finish(run_method(rot_score, sde, obs, **options),
                   lambda xr: (xr.reshape(xr.shape[0], d) @ V).reshape(xr.shape[0], *ev))


def color_basis(mix: Sequence[float] | Tensor) -> Tensor:
    r"""An orthogonal ``C × C`` matrix whose first row is the gray direction ``mix / |mix|``.

    For ``mix ∝ (1, 1, 1)`` this is the transpose of the paper's colour transform
    :math:`M \approx [[0.577, -0.816, 0], [0.577, 0.408, 0.707], [0.577, 0.408, -0.707]]`.
    """
    w = torch.as_tensor(mix, dtype=torch.float64).reshape(-1)
    c = w.numel()
    if c < 2 or not torch.isfinite(w).all() or float(w.norm()) == 0.0:
        raise ValueError(f"mix must hold >= 2 finite channel weights, not all zero; got {w.tolist()}")
    u = w / w.norm()
    if c == 3 and torch.allclose(u, torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64)):
        return torch.tensor([[1, 1, 1], [-2, 1, 1], [0, 1, -1]], dtype=torch.float64) / torch.tensor(
            [[math.sqrt(3)], [math.sqrt(6)], [math.sqrt(2)]], dtype=torch.float64
        )
    q, _ = torch.linalg.qr(torch.cat([u[:, None], torch.eye(c, dtype=torch.float64)], dim=1))
    basis = q.T[:c]
    return basis * torch.sign(basis[0] @ u)  # first row +u


def colorize(
    model: Callable[[Tensor, Tensor], Tensor] | ScoreModel,
    sde: SDE | None,
    gray: Tensor,
    *,
    mix: Sequence[float] | Tensor = (1 / 3, 1 / 3, 1 / 3),
    noise_std: float = 0.0,
    sample_shape: Sequence[int] | None = None,
    **options: Any,
) -> Tensor | SampleResult:
    r"""Colour images given their gray version ``gray = Σ_c mix_c · x_c`` (per pixel).

    The channels are rotated by :func:`color_basis` (the paper's orthogonal colour transform for
    the mean), which turns the gray image into one exactly known channel,
    :math:`x'_0 = \text{gray}/\lVert \text{mix}\rVert`; the other ``C − 1`` channels are inpainted
    with ``method`` and the result rotated back.

    Args:
        model, sde: unconditional score model of ``(C, H, W)`` images (channel dimension 1).
        gray: ``(n, H, W)`` or ``(n, 1, H, W)``.
        mix: the ``C`` channel weights of the gray image (default the mean of 3 channels).
        noise_std: noise of the gray image (0: exact).
        **options: as for :func:`~scoresolve.inpaint` (``method``, ``particles``, ``steps``, ``generator``, ...).
        sample_shape: ``(C, H, W)`` when ``model`` is a plain callable.

    Returns:
        ``(n, C, H, W)`` colour images whose gray version equals ``gray`` (for ``noise_std = 0``).
    """
    score_fn, sde = resolve_model(model, sde)
    one_of(options.get("method", "smc"), METHODS, "method")
    B = color_basis(mix)
    c = B.shape[0]
    shape = model.sample_shape if isinstance(model, ScoreModel) and model.sample_shape else sample_shape
    if not isinstance(gray, Tensor) or not gray.is_floating_point():
        raise TypeError("gray must be a floating-point tensor of shape (n, H, W) or (n, 1, H, W)")
    g = gray[:, None] if gray.ndim == 3 else gray
    if g.ndim != 4 or g.shape[1] != 1:
        raise ValueError(f"gray must have shape (n, H, W) or (n, 1, H, W), got {tuple(gray.shape)}")
    ev = tuple(shape) if shape is not None else (c, *g.shape[2:])
    if len(ev) != 3 or ev[0] != c or tuple(ev[1:]) != tuple(g.shape[2:]):
        raise ValueError(f"samples of shape {ev} do not fit {c} channels (len(mix)) and gray {tuple(g.shape[2:])}")
    if not torch.isfinite(g).all():
        raise ValueError("gray contains NaN or inf")
    nstd = float(noise_std)
    if not math.isfinite(nstd) or nstd < 0:
        raise ValueError(f"noise_std must be finite and >= 0, got {noise_std!r}")
    norm = float(torch.as_tensor(mix, dtype=torch.float64).norm())
    dev, dt = g.device, g.dtype
    Bt = B.to(device=dev, dtype=dt)

    def to_rot(x: Tensor) -> Tensor:
        return torch.einsum("ij,bj...->bi...", Bt, x)

    def from_rot(xr: Tensor) -> Tensor:
        return torch.einsum("ji,bj...->bi...", Bt, xr)

    n = g.shape[0]
    y_rot = torch.zeros((n, *ev), device=dev, dtype=dt)
    y_rot[:, :1] = g / norm
    mask = torch.zeros(ev, dtype=torch.bool, device=dev)
    mask[0] = True
    obs = Observation.from_inpainting(y_rot, mask, ev, noise_std=nstd / norm)

    def rot_score(xr: Tensor, t: Tensor) -> Tensor:
        return to_rot(score_fn(from_rot(xr), t))

    return _finish(run_method(rot_score, sde, obs, **options), from_rot)


def avg_pool_matrix(shape: Sequence[int], factor: int = 2) -> Tensor:
    r"""The ``(D / factor², D)`` matrix of ``factor × factor`` average pooling of ``(C, H, W)`` images
    (float64; row-major flattening; ``H`` and ``W`` divisible by ``factor``). Its rows are orthogonal
    with singular values ``1 / factor``."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    if len(shape) != 3 or shape[1] % factor or shape[2] % factor:
        raise ValueError(f"shape must be (C, H, W) with H and W divisible by factor={factor}, got {tuple(shape)}")
    c, h, w = (int(v) for v in shape)
    idx = torch.arange(c * h * w).reshape(c, h // factor, factor, w // factor, factor)
    rows = idx.permute(0, 1, 3, 2, 4).reshape(-1, factor * factor)  # one row of source pixels per output pixel
    A = torch.zeros(rows.shape[0], c * h * w, dtype=torch.float64)
    A.scatter_(1, rows, 1.0 / factor**2)
    return A


def super_resolution(
    model: Callable[[Tensor, Tensor], Tensor] | ScoreModel,
    sde: SDE | None,
    low_res: Tensor,
    factor: int = 2,
    noise_std: float = 0.0,
    *,
    sample_shape: Sequence[int] | None = None,
    **options: Any,
) -> Tensor | SampleResult:
    r"""Images whose ``factor × factor`` average pooling is ``low_res`` (plus Gaussian noise of std
    ``noise_std``): :func:`linear_inverse` with :func:`avg_pool_matrix`.

    Args:
        low_res: ``(n, C, H / factor, W / factor)``.
        sample_shape: ``(C, H, W)`` when ``model`` is a plain callable.
        **options: as for :func:`linear_inverse` (``method``, ``particles``, ``steps``, ``generator``, ...).
    """
    if not isinstance(low_res, Tensor) or low_res.ndim != 4:
        raise ValueError(f"low_res must have shape (n, C, h, w), got {tuple(getattr(low_res, 'shape', ()))}")
    shape = model.sample_shape if isinstance(model, ScoreModel) and model.sample_shape else sample_shape
    n, c, h, w = low_res.shape
    ev = tuple(shape) if shape is not None else (c, h * factor, w * factor)
    if tuple(ev) != (c, h * factor, w * factor):
        raise ValueError(f"low_res {tuple(low_res.shape[1:])} x factor {factor} does not give the sample shape {ev}")
    A = avg_pool_matrix(ev, factor).to(device=low_res.device, dtype=low_res.dtype)
    return linear_inverse(model, sde, low_res.reshape(n, -1), A, noise_std, sample_shape=ev, **options)
