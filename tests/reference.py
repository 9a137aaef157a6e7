"""Ground truth the tests share: the analytic problems, the one reference solution of the probability-flow ODE,
and the registry filtered by what solvers declare (so no test keeps a list of solvers by hand)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torchdiffeq import odeint

import scoresolve as ss
from scoresolve.registry import SOLVERS
from scoresolve.solvers.base import GridSolver, Solver
from scoresolve.solvers.loop import cost

EPS = 1e-3
#: VP, and the rectified-flow interpolant with SD3's shift 3 (there the mixture's exact velocity is the model)
PROCESSES = {"vp": ss.VPSDE(), "flow": ss.RectifiedFlow(shift=3.0)}


@functools.cache
def problem(process: str = "vp") -> tuple[Any, Any, torch.Tensor]:
    """A 4-D anisotropic 3-component Gaussian mixture, the process, and 8 prior draws (float64)."""
    gm = ss.analytic.anisotropic(dim=4, n_components=3, seed=0)
    x_T = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return gm, PROCESSES[process], x_T


def model(process: str) -> Any:
    """The exact score under VP; the exact velocity as a flow model (``from_velocity``) under the flow process."""
    gm, sde, _ = problem(process)
    return gm.velocity_model(sde) if process == "flow" else (lambda x, t: gm.score(x, t, sde))


def reference_solution(score: Callable, sde: Any, x_T: torch.Tensor, eps: float, rtol: float = 1e-10) -> torch.Tensor:
    """PF-ODE solution at ``eps`` from ``x_T`` at ``T``: dy/dλ = D - y in y = x/α (dopri5, float64)."""
    f64 = functools.partial(torch.tensor, dtype=torch.float64)
    lam0, lam1 = float(sde.log_snr(f64(sde.T))), float(sde.log_snr(f64(eps)))

    def f(lam: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = sde.t_from_log_snr(lam.reshape(1)).expand(y.shape[0])
        a = sde.alpha(t).reshape(-1, *([1] * (y.ndim - 1)))
        s = torch.exp(-lam)
        return s * s * a * score(a * y, t)  # D - y

    y0 = x_T / sde.alpha(f64(sde.T))
    y1 = odeint(f, y0, f64([lam0, lam1]), rtol=rtol, atol=rtol, method="dopri5")[-1]
    return y1 * sde.alpha(f64(eps))


@functools.cache
def reference(process: str = "vp") -> torch.Tensor:
    gm, sde, x_T = problem(process)
    return reference_solution(lambda x, t: gm.score(x, t, sde), sde, x_T, EPS)


def registered(where: Callable[[type[Solver]], bool]) -> list[str]:
    """Registered solver classes for which ``where(cls)`` holds (``auto``, a recipe, is not a class)."""
    return [n for n in SOLVERS.names() if isinstance(c := SOLVERS.get(n), type) and issubclass(c, Solver) and where(c)]


def deterministic_fixed_grid(cls: type[Solver]) -> bool:
    return issubclass(cls, GridSolver) and not cls.stochastic and not cls.adaptive


def variants(names: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """Every ``(name, options)`` of the solvers named, one per declared variant."""
    return [(n, dict(o)) for n in names for o in SOLVERS.get(n).variants()]


def intervals(solver: Solver, n: int, final: str = "none") -> dict[str, int]:
    """``sample``'s keyword for ``n`` grid intervals: ``steps=n``, or the budget ``nfe=`` that plans ``n`` for a
    budgeted solver (whose ``steps=`` alone warns)."""
    return {"nfe": cost(solver, n, final, False)} if getattr(solver, "budgeted", False) else {"steps": n}


def stochastic(cls: type[Solver]) -> bool:
    return bool(cls.stochastic)


@functools.cache
def gaussian(eps: float = EPS) -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
    """A correlated 2-D Gaussian under VP, and the exact mean and covariance of the marginal at ``eps``."""
    sde = ss.VPSDE()
    mean = torch.tensor([0.5, -1.0], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    gm = ss.analytic.GaussianMixture(torch.ones(1), mean[None], cov[None])
    t = torch.tensor(eps, dtype=torch.float64)
    a, s = float(sde.alpha(t)), float(sde.marginal_std(t))
    return gm.score_model(sde), sde, a * mean, a * a * cov + s * s * torch.eye(2, dtype=torch.float64)


def moment_error(x: torch.Tensor, eps: float = EPS) -> float:
    """|mean - exact| + ||covariance - exact||_F of samples at ``eps`` of :func:`gaussian`."""
    _, _, mean, cov = gaussian(eps)
    x = x.double()
    return float((x.mean(0) - mean).norm() + (torch.cov(x.T) - cov).norm())
