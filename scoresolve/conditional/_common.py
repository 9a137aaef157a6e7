r"""Shared pieces of conditional sampling: argument checks, the observation and its forward-noised path.

An observation is held in the flattened sample space (``D = prod(event_shape)``) as three ``(n, D)``
tensors: the values ``y``, a boolean ``mask`` of observed coordinates and a per-coordinate noise
level ``nu`` on the EDM scale (0 for an exact observation). ``y_c = x_{0,c} + \nu_c \varepsilon`` is
distributed as :math:`x_{t^*}/\alpha_{t^*}` with :math:`\sigma_{t^*}/\alpha_{t^*} = \nu_c`, so a noisy
observation is an exact observation of the diffused state at time :math:`t^*` (MCGdiff's
observation of the noisy coordinate, Cardoso et al. 2023, arXiv:2308.07983). Given ``y``, the
diffused coordinate at any :math:`t` with :math:`\sigma_t/\alpha_t \ge \nu_c` is

.. math:: x_{t,c} \mid y_c \sim N(\alpha_t y_c,\ \sigma_t^2 - \alpha_t^2 \nu_c^2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._util import check_int
from ..models import resolve_model  # noqa: F401  (re-exported for the conditional modules)
from ..noise import NoiseSource
from ..sde import SDE

__all__ = ["Observation", "resolve_model", "check_particles", "rand"]


def check_particles(particles: Any) -> int:
    check_int(particles, "particles")
    return int(particles)


def rand(shape: Sequence[int], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Uniform [0, 1) numbers from ``generator`` (drawn on the generator's device, then moved)."""
    if generator is not None and generator.device.type != device.type:
        return torch.rand(tuple(shape), generator=generator, dtype=dtype).to(device)
    return torch.rand(tuple(shape), generator=generator, device=device, dtype=dtype)


@dataclass
class Observation:
    """An observation in the flattened sample space.

    Attributes:
        y: ``(n, D)`` observed values (entries outside ``mask`` are zero).
        mask: ``(n, D)`` bool, the observed coordinates.
        nu: ``(n, D)`` noise level of each observed coordinate on the EDM scale (0: exact).
        event_shape: the shape of one sample.
    """

    y: Tensor
    mask: Tensor
    nu: Tensor
    event_shape: tuple[int, ...]

    @property
    def n(self) -> int:
        return self.y.shape[0]

    @property
    def dim(self) -> int:
        return self.y.shape[1]

    @property
    def noisy(self) -> bool:
        return bool((self.nu > 0).any())

    @classmethod
    def from_inpainting(
        cls,
        y: Any,
        mask: Any,
        event_shape: Sequence[int] | None,
        *,
        noise_std: float | Tensor = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Observation:
        """Check and flatten ``y`` ``(n, *event_shape)`` and ``mask`` (broadcastable to ``y``)."""
        if not isinstance(y, Tensor):
            raise TypeError(f"y must be a tensor of shape (n, *sample_shape), got {type(y).__name__}")
        if not y.is_floating_point():
            raise TypeError(f"y must be a floating-point tensor, got dtype {y.dtype}")
        if y.ndim < 2:
            raise ValueError(f"y must have shape (n, *sample_shape) with one observation per row, got {tuple(y.shape)}")
        if event_shape is not None and tuple(y.shape[1:]) != tuple(event_shape):
            raise ValueError(
                f"y has shape {tuple(y.shape)}, expected (n, *{tuple(event_shape)}) for the model's sample shape"
            )
        ev = tuple(y.shape[1:])
        dev = torch.device(device) if device is not None else y.device
        dt = dtype or y.dtype
        m = torch.as_tensor(mask, device=dev)
        if m.dtype != torch.bool:
            if not bool(((m == 0) | (m == 1)).all()):
                raise ValueError("mask must be boolean (or 0/1): True marks an observed entry")
            m = m != 0
        try:
            m = torch.broadcast_to(m, y.shape)
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(m.shape)} is not broadcastable to y's shape {tuple(y.shape)} "
                f"(use a mask of the sample shape {ev} or of y's shape)"
            ) from None
        yv = y.to(device=dev, dtype=dt)
        obs_vals = yv[m]
        if not torch.isfinite(obs_vals).all():
            raise ValueError("y contains NaN or inf at observed entries (mask True); observed values must be finite")
        if not bool(m.any()):
            raise ValueError("mask observes nothing: use scoresolve.sample for unconditional sampling")
        nu = torch.as_tensor(noise_std, device=dev, dtype=dt)
        if not torch.isfinite(nu).all() or bool((nu < 0).any()):
            raise ValueError(f"noise_std must be finite and >= 0, got {noise_std!r}")
        n = y.shape[0]
        mf = m.reshape(n, -1).clone()
        nu_full = torch.broadcast_to(nu, y.shape).reshape(n, -1) * mf
        yf = torch.where(mf, yv.reshape(n, -1), torch.zeros((), device=dev, dtype=dt))
        return cls(yf, mf, nu_full.contiguous(), ev)

    # --- the diffused observation ---------------------------------------------------------------
    def mask_at(self, sde: SDE, t: float) -> Tensor:
        """Coordinates observed at time ``t``: those whose noise level lies below the SDE's ``sigma(t)``."""
        if not self.noisy:
            return self.mask
        sig = float(sde.sigma(torch.tensor(t, dtype=torch.float64)))
        return self.mask & (self.nu <= sig)

    def marginal_at(self, sde: SDE, t: float, z: Tensor) -> Tensor:
        r"""A draw of :math:`x_t \mid y` on the observed coordinates, :math:`\alpha_t y +
        (\sigma_t^2 - \alpha_t^2\nu^2)^{1/2} z` (fresh noise ``z``; the paper's replacement value)."""
        tt = torch.tensor(t, dtype=torch.float64)
        a, s = float(sde.alpha(tt)), float(sde.marginal_std(tt))
        std = torch.sqrt(torch.clamp(s**2 - a**2 * self.nu**2, min=0.0))
        return a * self.y + std * z

    def mean_at(self, sde: SDE, t: float) -> Tensor:
        return float(sde.alpha(torch.tensor(t, dtype=torch.float64))) * self.y

    def path(self, sde: SDE, times: Tensor, noise: NoiseSource) -> tuple[Tensor, Tensor, Tensor]:
        r"""One forward-noised path of the observation on the decreasing grid ``times``.

        Coordinate ``c`` enters at the lowest grid time :math:`t_{j_c}` whose noise level
        :math:`\sigma(t_{j_c})` reaches :math:`\nu_c` (its :math:`t^*`, or the last time :math:`\epsilon` for an
        exact or less noisy coordinate), pinned to :math:`\alpha y_c`: it is then an exact observation of
        the diffused state, with effective noise :math:`\nu^{\rm eff}_c = \sigma(t_{j_c})`. Above that it
        moves up with the exact forward transition :math:`x_{t'} = a\,x_t + b\,z` (:meth:`SDE.transition`).

        Returns values and masks, both ``(len(times), n, D)`` indexed like ``times``, and ``(n,)``
        :math:`\log q(\text{path} \mid y)`: the transitions' log density minus :math:`\sum_c \log \alpha_{t_{j_c}}`
        (the Jacobian of :math:`y \mapsto \alpha y`), so that :math:`\log p(y) = \log p(\text{path}) -
        \log q(\text{path} \mid y)` for the observation with noise :math:`\nu^{\rm eff}`.
        """
        y, mask, nu = self.y, self.mask, self.nu
        n_t = times.numel()
        t64 = times.to(torch.float64).cpu()
        sig = sde.sigma(t64).to(device=y.device)
        # entry index: the last (lowest) time whose noise level reaches nu (relative slack for rounding at t*)
        reach = sig[:, None, None] >= nu.to(torch.float64)[None] * (1 - 1e-9)  # (n_t, n, d), decreasing in j
        entry = reach.sum(0) - 1  # -1: never observed (nu above sigma(T))
        entry = torch.where(mask, entry, torch.full_like(entry, -1))
        alphas = sde.alpha(t64).to(device=y.device)
        log_q = -(torch.where(entry >= 0, torch.log(alphas[entry.clamp(min=0)]), torch.zeros((), device=y.device,
                                                                                            dtype=torch.float64))).sum(1)
        vals = torch.zeros((n_t,) + y.shape, device=y.device, dtype=y.dtype)
        masks = torch.zeros((n_t,) + y.shape, device=y.device, dtype=torch.bool)
        prev: Tensor | None = None
        half_log_2pi = 0.5 * math.log(2 * math.pi)
        for j in range(n_t - 1, -1, -1):
            z = noise.randn(y.shape, device=y.device, dtype=y.dtype)
            fresh = float(alphas[j]) * y
            if prev is None:
                v = fresh
            else:
                a, b = sde.transition(t64[j], t64[j + 1])
                a, b = float(a), float(b)
                v = torch.where(entry > j, a * prev + b * z, fresh)
                up = (entry > j).to(torch.float64)
                log_q = log_q + (up * (-0.5 * z.to(torch.float64) ** 2 - math.log(b) - half_log_2pi)).sum(1)
            m_j = entry >= j
            v = torch.where(m_j, v, torch.zeros((), device=y.device, dtype=y.dtype))
            vals[j], masks[j] = v, m_j
            prev = v
        return vals, masks, log_q

    def observation_times(self, sde: SDE, eps: float) -> list[float]:
        """Times :math:`t^*` at which noisy coordinates become exact observations of :math:`x_{t^*}`
        (those above ``eps``); a grid that contains them conditions on all the information in ``y``."""
        if not self.noisy:
            return []
        levels = torch.unique(self.nu[self.mask & (self.nu > 0)].to(torch.float64).cpu())
        ts = sde.t_from_sigma(levels)
        return sorted({float(t) for t in ts if eps < float(t) < sde.T}, reverse=True)


def merge_times(times: Tensor, extra: Sequence[float], tol: float = 1e-9) -> Tensor:
    """Insert ``extra`` times into a decreasing grid (dropping near-duplicates)."""
    if not extra:
        return times
    allt = torch.cat([times, torch.tensor(list(extra), dtype=torch.float64)])
    allt = torch.sort(allt, descending=True).values
    keep = torch.ones_like(allt, dtype=torch.bool)
    keep[1:] = (allt[:-1] - allt[1:]) > tol
    return allt[keep]


def finite_float(value: Any, name: str) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v
