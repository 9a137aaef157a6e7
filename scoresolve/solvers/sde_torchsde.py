r"""``solver="sde"``: the reverse-time SDE (Song et al. 2021, arXiv:2011.13456, eq. 6)

.. math::  dx = [f(x, t) - g(t)^2 s_\theta(x, t)]\,dt + g(t)\,d\bar w,

integrated from :math:`T` to :math:`\epsilon` by torchsde (Li et al. 2020, arXiv:2001.01328; Kidger et al. 2021,
arXiv:2105.13493) in reversed time :math:`\tau = T - t` on states flattened to ``(B, D)``. The noise is additive,
so Itô and Stratonovich coincide and every torchsde method applies (``euler``: strong order 1 for additive noise;
``srk``: 1.5; ``milstein``, ``midpoint``, ``heun``, ``reversible_heun``). The Brownian interval is seeded from the
run's generator, or one per sample with ``seeds=``. Fixed steps are uniform, ``dt = (T - eps)/steps``;
``adaptive=True`` lets torchsde choose them (``rtol``, ``atol``). Cost: the method's evaluations per step
(``euler`` with ``steps=K``: exactly ``K``, plus the final step). Details: docs/stochastic_samplers.md."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from .._util import closest
from ..registry import SOLVERS
from ..sde import SDE
from .base import SolveContext, Solver
from .ode import check_tolerances

__all__ = ["TorchsdeReverseSDE", "METHODS"]

#: torchsde methods → (sde_type, strong order for additive noise).
METHODS: dict[str, tuple[str, float]] = {
    "euler": ("ito", 1.0),
    "milstein": ("ito", 1.0),
    "srk": ("ito", 1.5),
    "midpoint": ("stratonovich", 1.0),
    "heun": ("stratonovich", 1.0),
    "reversible_heun": ("stratonovich", 1.0),
}


class _ReverseSDE(torch.nn.Module):
    noise_type = "diagonal"

    def __init__(self, ctx: SolveContext, shape: tuple[int, ...], sde_type: str) -> None:
        super().__init__()
        self.ctx, self.shape, self.sde_type = ctx, shape, sde_type
        self.T = float(ctx.sde.T)
        self._last: tuple[float, Tensor, Tensor] | None = None  # (tau, y, drift) of the latest call

    def _t(self, tau: Tensor, y: Tensor) -> Tensor:
        return (self.T - tau).to(y.dtype).expand(y.shape[0])

    def f(self, tau: Tensor, y: Tensor) -> Tensor:
        # torchsde evaluates the drift at (t0, y0) once for its shape checks and again in the first
        # step: a one-entry memo (the drift is a pure function of (tau, y)) saves that evaluation
        key = float(tau)
        if self._last is not None and self._last[0] == key and torch.equal(self._last[1], y):
            return self._last[2]
        t = self._t(tau, y)
        x = y.reshape(y.shape[0], *self.shape)
        s = self.ctx.score(x, t)
        out = -self.ctx.sde.reverse_drift(x, t, s).reshape(y.shape)
        self._last = (key, y.detach().clone(), out)
        return out

    def g(self, tau: Tensor, y: Tensor) -> Tensor:
        t = self._t(tau, y)
        return SDE.bcast(self.ctx.sde.diffusion(t), y).expand_as(y)


class _PerSampleBrownian:
    """One ``BrownianInterval`` per sample (seeded from its own generator), stacked to ``(B, D)``."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    def __call__(self, ta: Any, tb: Any = None, return_U: bool = False, return_A: bool = False) -> Any:
        outs = [p(ta, tb, return_U=return_U, return_A=return_A) for p in self.parts]
        if isinstance(outs[0], tuple):
            return tuple(torch.cat([o[i] for o in outs], 0) for i in range(len(outs[0])))
        return torch.cat(outs, 0)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.parts), self.parts[0].shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.parts[0].dtype

    @property
    def device(self) -> torch.device:
        return self.parts[0].device

    @property
    def levy_area_approximation(self) -> str:
        return self.parts[0].levy_area_approximation

    def __repr__(self) -> str:
        return f"_PerSampleBrownian(n={len(self.parts)})"


@SOLVERS.register("sde", description="reverse-time SDE via torchsde (method=euler|milstein|srk|..., adaptive option)")
class TorchsdeReverseSDE(Solver):
    r"""The reverse-time SDE integrated by torchsde (see the module docstring).

    Args:
        method: ``"euler"`` (default), ``"milstein"``, ``"srk"``, ``"midpoint"``, ``"heun"``,
            ``"reversible_heun"``.
        adaptive: let torchsde choose the steps (``rtol``/``atol``); then ``steps=`` is not taken.
        rtol, atol: tolerances of the adaptive mode (> 0).
        options: extra ``torchsde.sdeint`` options.

    Stochastic; strong order 1 (``srk``: 1.5) for the additive noise of these SDEs; NFE per step
    1 (euler, milstein), 2 (heun, midpoint), more for srk. Ends with a Tweedie step by default.
    """

    stochastic = True
    default_final = "tweedie"
    default_grid = "uniform"
    reference = "Song et al. 2021, arXiv:2011.13456 (reverse SDE); Li et al. 2020, arXiv:2001.01328 (torchsde)"

    def __init__(
        self,
        method: str = "euler",
        adaptive: bool = False,
        rtol: float = 1e-3,
        atol: float = 1e-3,
        options: dict[str, Any] | None = None,
    ) -> None:
        if method not in METHODS:
            hint = closest(method, list(METHODS))
            raise ValueError(f"unknown torchsde method={method!r}.{hint} Valid: {', '.join(METHODS)}")
        self.method = method
        self.rtol, self.atol = check_tolerances(rtol, atol)
        self.adaptive = bool(adaptive)  # type: ignore[misc]
        self.options = dict(options or {})
        self.order = METHODS[method][1]  # type: ignore[misc]

    def solve(self, ctx: SolveContext, x: Tensor) -> Tensor:
        import torchsde

        b = x.shape[0]
        d = x[0].numel()
        T, eps = float(ctx.sde.T), float(ctx.t_end)
        span = T - eps
        if self.adaptive:
            steps = 100
        else:
            assert ctx.grid is not None
            g = ctx.grid
            steps = g.numel() - 1
            uniform = torch.linspace(T, eps, steps + 1, dtype=torch.float64)
            if not torch.allclose(g, uniform, rtol=0, atol=1e-9 * max(1.0, T)):
                raise ValueError("solver 'sde' (torchsde) steps uniformly in t: pass grid='uniform' (or adaptive=True)")
        span = float(torch.tensor(span, dtype=x.dtype))  # the end time as torchsde will see it
        dt = span / steps
        if not self.adaptive:
            # torchsde steps while t < end, accumulating t + dt in x's dtype: rounding can leave t a hair
            # short of the end after `steps` steps and cost one more (tiny) step and evaluation. A step a
            # fraction longer (the last one clamped to the end) makes it exactly `steps`.
            dt *= 1 + 8 * steps * torch.finfo(x.dtype).eps
        sde_type, _ = METHODS[self.method]
        levy = "space-time" if self.method == "srk" else "none"
        bm = self._brownian(ctx, b, d, span, x, levy)
        sys_ = _ReverseSDE(ctx, tuple(x.shape[1:]), sde_type)
        ts = torch.tensor([0.0, span], dtype=x.dtype, device=x.device)
        with warnings.catch_warnings():
            # the noise is additive (g depends on t only) though declared "diagonal" to avoid a (B, D, D)
            # diffusion matrix; torchsde's warning about adaptive Euler with non-additive noise does not apply
            warnings.filterwarnings("ignore", message=".*adaptive time-stepping with the Euler.*")
            ys = self._sdeint(torchsde, sys_, x, b, d, ts, bm, dt)
        out = ys[-1].reshape(x.shape)
        ctx.after_step(0, torch.full((b,), eps, device=x.device, dtype=x.dtype), out)
        return out

    def _sdeint(self, torchsde: Any, sys_: Any, x: Tensor, b: int, d: int, ts: Tensor, bm: Any, dt: float) -> Tensor:
        return torchsde.sdeint(
            sys_,
            x.reshape(b, d),
            ts,
            bm=bm,
            method=self.method,
            dt=dt,
            adaptive=self.adaptive,
            rtol=self.rtol,
            atol=self.atol,
            options=self.options or None,
        )

    @staticmethod
    def _brownian(ctx: SolveContext, b: int, d: int, span: float, x: Tensor, levy: str) -> Any:
        import torchsde

        def interval(gen: torch.Generator | None, rows: int) -> Any:
            entropy = int(torch.randint(0, 2**62, (1,), generator=gen).item())
            return torchsde.BrownianInterval(
                t0=0.0,
                t1=span,
                size=(rows, d),
                dtype=x.dtype,
                device=x.device,
                entropy=entropy,
                levy_area_approximation=levy,
            )

        gens = ctx.noise.generators
        if gens is None:
            return interval(ctx.noise.generator, b)
        return _PerSampleBrownian([interval(g, 1) for g in gens])
