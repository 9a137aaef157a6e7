r"""Time grids: where a fixed-step solver places its steps.

A grid is a registered function ``grid(sde, n, eps, **options) -> Tensor`` returning ``n + 1``
strictly decreasing float64 times from ``sde.T`` to ``eps``. Grids defined on a noise level
(log-SNR, Karras σ) are mapped back to ``t`` through the SDE's own inverse
(:meth:`SDE.t_from_log_snr`), so they work for every SDE.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from ..registry import GRIDS
from ..sde import SDE
from .base import check_grid

__all__ = ["make_grid", "grid_uniform", "grid_quadratic", "grid_log_snr", "grid_karras", "grid_analytic"]


@GRIDS.register("uniform", description="uniform in t (the paper's PC/ODE grids)")
def grid_uniform(sde: SDE, n: int, eps: float) -> Tensor:
    """``n + 1`` times uniform in ``t`` from ``T`` to ``eps``."""
    return torch.linspace(sde.T, eps, n + 1, dtype=torch.float64)


@GRIDS.register("quadratic", description="uniform in sqrt(t): denser near t = eps (DDIM's quadratic)")
def grid_quadratic(sde: SDE, n: int, eps: float) -> Tensor:
    """Times uniform in :math:`\\sqrt{t}` (Song et al. 2021 DDIM's quadratic schedule, continuous)."""
    u = torch.linspace(sde.T**0.5, eps**0.5, n + 1, dtype=torch.float64)
    t = u**2
    t[0], t[-1] = sde.T, eps  # exact ends: sqrt(T)**2 may round above T
    return t


@GRIDS.register("log_snr", description="uniform in log-SNR lambda (DPM-Solver's grid)")
def grid_log_snr(sde: SDE, n: int, eps: float) -> Tensor:
    r"""Times uniform in :math:`\lambda = \log(\alpha/\sigma)` (Lu et al. 2022, arXiv:2206.00927)."""
    lam_max, lam_min = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64)).tolist()
    lam = torch.linspace(lam_max, lam_min, n + 1, dtype=torch.float64)
    t = sde.t_from_log_snr(lam)
    t[0], t[-1] = sde.T, eps
    return t


@GRIDS.register("karras", description="Karras et al. 2022 sigma^(1/rho) grid, rho = 7")
def grid_karras(sde: SDE, n: int, eps: float, rho: float = 7.0) -> Tensor:
    r"""Noise levels :math:`\sigma_i = (\sigma_{max}^{1/\rho} + \tfrac{i}{n}(\sigma_{min}^{1/\rho} -
    \sigma_{max}^{1/\rho}))^\rho` on the EDM scale :math:`\sigma = e^{-\lambda}` (Karras et al. 2022,
    arXiv:2206.00364, eq. 5), mapped to ``t``."""
    s_max, s_min = sde.sigma(torch.tensor([sde.T, eps], dtype=torch.float64)).tolist()
    u = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    t = sde.t_from_sigma(sig)
    t[0], t[-1] = sde.T, eps
    return t


@GRIDS.register("analytic", description="no model calls: equidistributes the local error of the Gaussian flow")
def grid_analytic(sde: SDE, n: int, eps: float, c: float = 0.02, floor: float = 0.2) -> Tensor:
    r"""For data of per-element variance :math:`c` (Gaussian), the PF-ODE in :math:`y = x/\alpha` moves as
    :math:`y - m \propto f = \sqrt{c + \tilde\sigma^2}`; in :math:`u = \log\tilde\sigma` a first-order step of
    size :math:`h` errs by :math:`\tfrac12 h^2 f''` relative to :math:`f`, with :math:`f''/f =
    \tilde\sigma^2(2c + \tilde\sigma^2)/(c + \tilde\sigma^2)^2`. The steps equidistribute that error: uniform in
    :math:`\int \max(\sqrt{f''/f}, \text{floor})\,du` (log-SNR spacing where :math:`\tilde\sigma^2 \gg c`, wider
    steps below; ``floor`` keeps a share at the smallest noise levels). Our derivation; no model calls. The default
    ``c`` is a measured choice, not a data moment (docs/benchmarks.md, "The analytic grid")."""
    u0, u1 = torch.log(sde.sigma(torch.tensor([sde.T, eps], dtype=torch.float64))).tolist()
    u = torch.linspace(u0, u1, 4001, dtype=torch.float64)
    g = torch.exp(2 * u)
    rho = (torch.sqrt(g * (2 * c + g)) / (c + g)).clamp_min(floor)
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum((rho[1:] + rho[:-1]) / 2 * (u[:-1] - u[1:]), 0)])
    q = torch.linspace(0, float(cum[-1]), n + 1, dtype=torch.float64)
    k = torch.searchsorted(cum, q).clamp(1, u.numel() - 1)
    w = (q - cum[k - 1]) / (cum[k] - cum[k - 1])
    t = sde.t_from_sigma(torch.exp(u[k - 1] + w * (u[k] - u[k - 1])))
    t[0], t[-1] = sde.T, eps
    return t


def make_grid(name: str, sde: SDE, n: int, eps: float, context: dict[str, Any] | None = None,
              **options: Any) -> Tensor:
    """Build the registered grid ``name`` and validate it.

    ``context`` holds what :func:`scoresolve.sample` knows about the run (``model``, ``solver``,
    ``shape`` — one sample's shape, without the batch); each entry is passed only to grid functions
    that declare a parameter of that name, so model-fitted grids (``calibrated``, ``gits``) get the
    model and plain grids stay plain functions.
    """
    fn = GRIDS[name]
    if context:
        params = inspect.signature(fn).parameters
        options = {**{k: v for k, v in context.items() if k in params}, **options}
    return check_grid(fn(sde, n, eps, **options), sde, name=f"grid {name!r}")
