r"""Per-sample likelihood of a score model through the probability-flow ODE (Song et al. 2021,
arXiv:2011.13456, Sec. 4.3): :math:`\log p_\epsilon(x) = \log p_T(x_T) + \int_\epsilon^T \nabla\cdot F\,dt`
(instantaneous change of variables, arXiv:1806.07366), :math:`\nabla\cdot F = D h(t) - \tfrac12 g^2
\mathrm{tr}\nabla s`, the trace exact (D vector–Jacobian products) or Hutchinson–Skilling (fixed probes).

Bits/dim: :math:`\mathrm{bpd} = -\log p/(D\ln 2) + \text{bits} - \log_2(b - a)` for data on ``data_range``
``(a, b)`` (+7 on [-1, 1]); ``dequantize="uniform"`` evaluates at uniformly dequantized 8-bit data.

Methods: ``"budget"`` (``steps=K`` evaluations in log-SNR time with an error estimate, :mod:`.budget`;
the default when ``steps`` is given), ``"dopri5"`` and the other adaptive torchdiffeq methods (the
default otherwise), ``"euler"``/``"heun"``/``"rk4"``/``"adams"`` on a time grid (:mod:`.field`), the
per-sample adaptive pairs, and locally Gaussian coordinates for small D (:mod:`.local`). The math and
the measured accuracy are in docs/likelihood.md.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, Literal

import torch
from torch import Tensor

from .._util import check_int, closest
from ..models import ScoreModel, resolve_model
from ..progress import Progress, ticking
from ..sde import SDE
from ..solvers.base import CountedScore, check_grid
from ..solvers.grids import make_grid
from ..solvers.ode import ADAPTIVE_METHODS, FIXED_METHODS, check_tolerances
from ..solvers.ode_adaptive import integrate_adaptive
from .budget import (
    LOCAL_GAP_SCALE,
    LOCAL_MIN_STEPS,
    SYMMETRY_TOL,
    WARP_CENTER,
    WARP_WIDTH,
    budget_logp,
    jacobian_asymmetry,
    log_snr_nodes,
)
from .field import ADAMS_ORDER, Field, State, integrate_on_grid
from .local import preconditioned_fixed_step, refit_adams

__all__ = [
    "likelihood",
    "LikelihoodResult",
    "likelihood_grid",
    "bpd_offset",
    "FIXED_STEP_METHODS",
    "ADAMS_ORDER",
    "LikelihoodAccuracyWarning",
    "LikelihoodAccuracyError",
    "integrate_on_grid",
]

#: our fixed-step methods: name → score evaluations per step.
FIXED_STEP_METHODS: dict[str, int] = {"euler": 1, "heun": 2, "rk4": 4, "adams": 1}
#: the default with ``steps=K``: K evaluations in log-SNR time, with an error estimate (:mod:`.budget`)
BUDGET = "budget"
#: the exact trace costs D vector-Jacobian products per evaluation: the default up to this D
EXACT_TRACE_MAX_DIM = 64
#: Hutchinson probes per sample by default (the budget method draws a fresh one at every node: ``fresh_probes``)
DEFAULT_PROBES = 1
_PER_SAMPLE = {"adaptive": "dopri5", "dopri5_per_sample": "dopri5", "bosh3_per_sample": "bosh3"}
DEFAULT_GRID = "quadratic"
DEFAULT_RHO = 3.0


@dataclass
class LikelihoodResult:
    """What :func:`likelihood` returns (per-sample tensors of shape ``(B,)``).

    Attributes:
        nll: :math:`-\\log p_\\epsilon(x)` in nats (of the dequantized ``x`` when dequantizing).
        bpd: bits per dimension (with the 8-bit offset when ``data_range`` is set).
        prior_logp: :math:`\\log p_T(x_T)` at the end of the ODE.
        delta_logp: :math:`\\int_\\epsilon^T \\nabla\\cdot F\\,dt`.
        z: the latent :math:`x_T`.
        nfe: score evaluations (model calls; exact traces count one per call, whatever D).
        nfe_per_sample: evaluations each sample received (differs for the per-sample method).
        eps: the start time.
        offset: the bits/dim offset added (0 for continuous data).
        x: the point the density was evaluated at (the dequantized input).
        info: extras (method, trace, probes, grid, ...).
        error_bpd: estimated solver error of ``bpd`` per sample (the budget method's embedded estimate;
            ``None`` for the other methods, whose error is set by ``rtol`` or ``steps``).
        trace_se_bpd: Monte-Carlo standard error of ``bpd`` from the Hutchinson probes: their spread over
            :math:`\\sqrt P`; with one fresh probe per node (the budget method's default) an upper bound from the
            same products (1.9-2.5x the measured spread on the bundled networks); NaN with a single probe kept along
            the path; 0 for the exact trace.
    """

    nll: Tensor
    bpd: Tensor
    prior_logp: Tensor
    delta_logp: Tensor
    z: Tensor
    nfe: int
    nfe_per_sample: Tensor
    eps: float
    offset: float
    x: Tensor
    info: dict[str, Any] = dc_field(default_factory=dict)
    error_bpd: Tensor | None = None
    trace_se_bpd: Tensor | None = None

    @property
    def logp(self) -> Tensor:
        """:math:`\\log p_\\epsilon(x)` in nats (``-nll``)."""
        return -self.nll


def bpd_offset(data_range: tuple[float, float] | None, bits: int = 8) -> float:
    r"""The bits/dim offset :math:`\text{bits} - \log_2(b - a)` (7 for 8-bit data on [-1, 1], 8 on [0, 1])."""
    if data_range is None:
        return 0.0
    a, b = _check_range(data_range)
    return float(bits) - math.log2(b - a)


def _check_range(data_range: Any) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise TypeError(f"data_range must be a pair (low, high), e.g. (-1, 1), got {data_range!r}") from None
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        raise ValueError(f"data_range must be finite with low < high, got {data_range!r}")
    return a, b


@torch.no_grad()
def likelihood_grid(sde: SDE, steps: int, eps: float, grid: str | Sequence[float] | Tensor = DEFAULT_GRID, **opts: Any):
    r"""The increasing time grid (``steps + 1`` float64 times from ``eps`` to ``T``) of the fixed-step
    likelihood methods.

    ``grid`` is a registered grid name (``uniform``, ``quadratic``, ``log_snr``, ``karras``, ...), an
    explicit sequence of times (either order), ``"power"``: times uniform in :math:`t^{1/\rho}`
    (``rho=3`` by default; ``quadratic`` is :math:`\rho = 2`), denser near :math:`t = \epsilon` where
    the probability-flow ODE is stiffest, or ``"warped"``: uniform in :math:`v` with log-SNR
    :math:`\lambda = c + w\sinh v` (``center`` :math:`c`, ``width`` :math:`w`; the budget method's nodes by default),
    spaced as :math:`\sqrt{w^2 + (\lambda - c)^2}`.
    """
    if isinstance(grid, str) and grid == "power":
        rho = float(opts.pop("rho", DEFAULT_RHO))
        if opts:
            raise TypeError(f"unknown grid option(s) {sorted(opts)} for grid 'power' (it takes rho)")
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
        u = torch.linspace(sde.T ** (1 / rho), eps ** (1 / rho), steps + 1, dtype=torch.float64)
        g = u**rho
        g[0], g[-1] = sde.T, eps
        g = check_grid(g, sde, name="grid 'power'")
    elif isinstance(grid, str) and grid == "warped":
        center, width = float(opts.pop("center", WARP_CENTER)), float(opts.pop("width", WARP_WIDTH))
        if opts:
            raise TypeError(f"unknown grid option(s) {sorted(opts)} for grid 'warped' (it takes center, width)")
        if not (math.isfinite(center) and math.isfinite(width) and width > 0):
            raise ValueError(f"grid 'warped' needs a finite center and width > 0, got {center!r}, {width!r}")
        ends = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64)).tolist()
        _, lam = log_snr_nodes(ends[0], ends[1], steps + 1, center, width)
        g = sde.t_from_log_snr(torch.tensor(lam, dtype=torch.float64))
        g[0], g[-1] = sde.T, eps
        g = check_grid(g, sde, name="grid 'warped'")
    elif isinstance(grid, str):
        g = make_grid(grid, sde, steps, eps, **opts)
    else:
        g = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
        if g.ndim == 1 and g.numel() >= 2 and g[0] < g[-1]:
            g = g.flip(0)
        g = check_grid(g, sde)
    return g.flip(0)


class LikelihoodAccuracyWarning(UserWarning):
    """The estimated solver error of a likelihood exceeds ``tol``."""


class LikelihoodAccuracyError(RuntimeError):
    """The estimated solver error of a likelihood exceeds ``tol`` and ``strict=True``."""


def _dequantize(x: Tensor, data_range: tuple[float, float], bits: int, generator: torch.Generator | None) -> Tensor:
    a, b = data_range
    levels = 2**bits
    u = (x - a) / (b - a) * (levels - 1)  # 0 .. levels-1 on the lattice
    k = torch.round(u)
    off = (u - k).abs().max()
    if float(off) > 1e-3:
        raise ValueError(
            f"dequantize='uniform' expects {bits}-bit data scaled to data_range={data_range} "
            f"(x = low + (high - low) k / {levels - 1}, k integer); x is off that lattice by up to "
            f"{float(off):.3g} levels. Pass dequantize=None for continuous data."
        )
    noise = torch.rand(x.shape, generator=generator, dtype=torch.float64)
    return (a + (b - a) * (k.to(torch.float64).cpu() + noise) / levels).to(device=x.device, dtype=x.dtype)


def likelihood(
    model: Callable[[Tensor, Tensor], Tensor] | ScoreModel,
    sde: SDE | None = None,
    x: Tensor | None = None,
    *,
    method: str | None = None,
    steps: int | None = None,
    grid: str | Sequence[float] | Tensor | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    trace: Literal["exact", "hutchinson"] | None = None,
    probes: int | None = None,
    fresh_probes: bool | None = None,
    noise: Literal["rademacher", "gaussian"] = "rademacher",
    generator: torch.Generator | None = None,
    eps: float = 1e-5,
    dequantize: Literal["uniform"] | None = None,
    data_range: tuple[float, float] | None | Literal["model"] = "model",
    bits: int = 8,
    grid_options: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    precondition: Literal["none", "local"] | None = None,
    progress: bool | None = None,
    tol: float = 0.01,
    strict: bool = False,
) -> LikelihoodResult:
    r"""Per-sample negative log-likelihood and bits/dim of ``x`` under the score model, through the
    probability-flow ODE (see the module docstring for the math).

    Args:
        model: a score callable ``score(x, t)`` or a :class:`~scoresolve.ScoreModel` (which may
            supply ``sde`` and ``data_range``).
        sde: the forward SDE (default: the model's); ``likelihood(model, x, ...)`` also works.
        x: data, ``(B, *dims)``.
        method: default ``"budget"`` when ``steps`` is given (``steps`` evaluations in log-SNR time
            with an error estimate, :mod:`scoresolve.likelihood.budget`), else ``"dopri5"`` (the
            paper's RK45 analogue); another adaptive torchdiffeq method; ``"euler"`` / ``"heun"`` /
            ``"rk4"`` (our fixed-step Runge–Kutta, with ``steps``);
            ``"adams"`` (Adams PEC, one evaluation per step: the few-evaluation choice);
            ``"adaptive"`` / ``"dopri5_per_sample"`` / ``"bosh3_per_sample"`` (per-sample steps).
        steps: score evaluations of the budget method (>= 2); grid steps of a fixed-step method
            (NFE = steps × 1/2/4 for euler/heun/rk4, = steps for adams).
        grid: grid of a fixed-step method: a name (``"quadratic"`` default, ``"karras"``,
            ``"log_snr"``, ``"uniform"``, ``"power"``) or explicit times from ``eps`` to ``T``.
        rtol, atol: tolerances of the adaptive methods (> 0; 1e-5 as in the paper).
        trace: ``"exact"`` (D vector–Jacobian products per evaluation; the default for
            D <= 64) or ``"hutchinson"`` (the default above).
        probes: Hutchinson probes per sample (averaged; their spread gives ``trace_se_bpd`` when there are
            several); default 1.
        fresh_probes: the budget method draws fresh probes at every node (the default there): its path of x does
            not depend on them, so the quadrature of the divergence stays unbiased with independent node errors
            (a few times less Monte-Carlo error than one probe kept along the path, at the same cost;
            docs/likelihood.md), and ``trace_se_bpd`` comes, for a single probe, from a bound computed with the same
            products. ``False``: one probe per sample kept along the path, as the ODE methods must (they take
            only ``False``), e.g. to share probes with another method's run from the same generator.
        noise: probe distribution, ``"rademacher"`` (default, lower variance) or ``"gaussian"``.
        generator: fixes the probes and the dequantization noise.
        eps: start time of the ODE (1e-5, the paper's likelihood setting).
        dequantize: ``"uniform"`` to evaluate at uniformly dequantized 8-bit data; ``None`` for
            continuous data.
        data_range: ``(low, high)`` of the data for the bits/dim offset (``(-1, 1)`` → +7,
            ``(0, 1)`` → +8); ``"model"`` (default) takes the ScoreModel's ``data_range`` if it has
            one, else ``None`` (continuous bits/dim, no offset).
        bits: bits per value of the quantized data (8).
        grid_options: options of the grid (e.g. ``{"rho": 3}`` for ``"power"``).
        options: extra torchdiffeq options (adaptive torchdiffeq methods), or ``first_step`` /
            ``max_steps`` for the per-sample methods.
        prior_logp: the log-density used at :math:`T` instead of the SDE's prior
            (:meth:`SDE.prior_logp`), e.g. the exact :math:`\log p_T` of an analytic model, to
            separate the prior mismatch :math:`p_T \neq` prior from solver error.
        precondition: ``"local"`` (fixed-step methods and the budget method, with the exact trace): integrate in
            the coordinates of each sample's local Gaussian, read off the score's Jacobian (no extra
            evaluation): fitted once at the start for Runge–Kutta (:func:`.local.preconditioned_fixed_step`),
            re-fitted at every evaluation for ``"adams"`` and the budget method (:func:`.local.refit_adams`).
            ``"none"``: plain coordinates. Default ``None``: ``"local"`` for the budget method where the trace is
            exact, ``steps >= LOCAL_MIN_STEPS`` and the score's Jacobian at the first node is symmetric (a gradient
            field such as an exact score: ``info["jacobian_asymmetry"] <= SYMMETRY_TOL``; trained networks measure
            0.03-0.6), else ``"none"``.
        progress: a tqdm bar over the score evaluations (:mod:`scoresolve.progress`).
        tol: bits/dim; where ``error_bpd`` exceeds it the result warns
            (:class:`LikelihoodAccuracyWarning`, naming the remedy: more steps or the adaptive method).
        strict: raise :class:`LikelihoodAccuracyError` instead of warning.

    Returns:
        :class:`LikelihoodResult`.

    Dequantized 8-bit data can only give bits/dim >= 0; a negative value raises ``ValueError``.

    Example::

        res = ss.likelihood(model, x, steps=20, dequantize="uniform")   # the budget method
        res.bpd.mean(), res.error_bpd.max(), res.trace_se_bpd.mean()
    """
    if isinstance(sde, Tensor) and x is None:
        sde, x = None, sde
    score_fn, sde = resolve_model(model, sde)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor of data (B, *dims), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (B, *dims) with B >= 1, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf")
    if method is None:
        method = BUDGET if steps is not None else "dopri5"
    d = x[0].numel()
    if trace is None:
        trace = "exact" if d <= EXACT_TRACE_MAX_DIM else "hutchinson"
    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
    if noise not in ("rademacher", "gaussian"):
        raise ValueError(f"noise must be 'rademacher' or 'gaussian', got {noise!r}")
    if probes is None:
        probes = DEFAULT_PROBES
    check_int(probes, "probes")
    if fresh_probes is None:
        fresh_probes = method == BUDGET and trace == "hutchinson"
    if fresh_probes and not (method == BUDGET and trace == "hutchinson"):
        raise ValueError(f"fresh_probes=True needs the budget method (steps=) with Hutchinson traces, not "
                         f"method={method!r}, trace={trace!r}: an ODE solver needs one probe along its path")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite number of bits/dim > 0, got {tol!r}")
    eps = float(eps)
    if not (math.isfinite(eps) and 0 < eps < sde.T):
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps!r}")
    check_int(bits, "bits", max=32)
    if isinstance(data_range, str):
        if data_range != "model":
            raise ValueError(f"data_range must be (low, high), None or 'model', got {data_range!r}")
        data_range = model.data_range if isinstance(model, ScoreModel) else None
    rng = _check_range(data_range) if data_range is not None else None
    if dequantize not in (None, "uniform"):
        raise ValueError(f"dequantize must be 'uniform' or None, got {dequantize!r}")
    if rng is not None:
        lo, hi = rng
        slack = 1e-6 * (hi - lo)
        out = (x < lo - slack) | (x > hi + slack)
        if bool(out.any()):
            raise ValueError(
                f"x has {int(out.sum())} values outside data_range={data_range} (min {float(x.min()):.4g}, "
                f"max {float(x.max()):.4g}); bits/dim needs data in that range (scale it, or pass "
                f"data_range=None for continuous bits/dim)"
            )
    if dequantize == "uniform":
        if rng is None:
            raise ValueError("dequantize='uniform' needs data_range=(low, high), e.g. (-1, 1)")
        x = _dequantize(x, rng, bits, generator)

    # --- method -------------------------------------------------------------------------------
    fixed = method in FIXED_STEP_METHODS or method in FIXED_METHODS
    per_sample = method in _PER_SAMPLE
    if not (fixed or per_sample or method == BUDGET or method in ADAPTIVE_METHODS):
        valid = sorted(
            set(FIXED_STEP_METHODS) | set(_PER_SAMPLE) | set(ADAPTIVE_METHODS) | set(FIXED_METHODS) | {BUDGET}
        )
        hint = closest(method, valid, n=2)
        raise ValueError(f"unknown likelihood method={method!r}.{hint} Valid: {', '.join(valid)}")
    if method == BUDGET:
        if steps is None:
            raise ValueError("method='budget' takes steps= (score evaluations, e.g. steps=20)")
        check_int(steps, "steps", min=2)
        if grid is not None or grid_options:
            raise ValueError("method='budget' builds its own grid (warped in log-SNR): pass steps= only, not grid=")
    elif fixed:
        if steps is None and grid is None:
            raise ValueError(f"method={method!r} is fixed-step: pass steps= (e.g. steps=5 for rk4 = 20 evaluations)")
        if steps is not None:
            check_int(steps, "steps")
        if grid is not None and not isinstance(grid, str):
            times = likelihood_grid(sde, 0, eps, grid)
            if steps is not None and steps != times.numel() - 1:
                raise ValueError(f"steps={steps} disagrees with the {times.numel() - 1} intervals of grid")
            if not math.isclose(float(times[0]), eps, rel_tol=1e-9):
                raise ValueError(f"the grid must start at eps={eps}, got {float(times[0])}")
        else:
            assert steps is not None
            times = likelihood_grid(sde, steps, eps, grid or DEFAULT_GRID, **(grid_options or {}))
    else:
        if steps is not None or grid is not None:
            raise ValueError(f"method={method!r} is adaptive: it takes rtol/atol, not steps= or grid=")
        rtol, atol = check_tolerances(rtol, atol)

    # --- probes ---------------------------------------------------------------------------------
    def draw() -> Tensor:
        shape = (probes, *x.shape)
        if noise == "rademacher":
            v = torch.randint(0, 2, shape, generator=generator, dtype=torch.int64).to(x.dtype) * 2 - 1
        else:
            v = torch.randn(shape, generator=generator, dtype=x.dtype)
        return v.to(x.device)

    pr = draw() if trace == "hutchinson" else None

    bar = Progress(None, f"likelihood of {x.shape[0]} samples ({method})", unit="eval", progress=progress)
    counted = CountedScore(ticking(score_fn, bar))
    chunk = max(1, min(d, (1 << 24) // max(1, x.shape[0] * d)))
    fld = Field(counted, sde, trace, pr, eps, float(sde.T), chunk)
    b = x.shape[0]
    fld.rademacher = noise == "rademacher"
    info: dict[str, Any] = {"method": method, "trace": trace, "probes": probes if trace == "hutchinson" else 0,
                            "fresh_probes": fresh_probes}
    if precondition not in (None, "none", "local"):
        raise ValueError(f"precondition must be 'none', 'local' or None (chosen), got {precondition!r}")
    if precondition == "local" and not (trace == "exact" and (method in FIXED_STEP_METHODS or method == BUDGET)):
        raise ValueError(
            "precondition='local' needs trace='exact' and the budget method or a fixed-step method (euler, heun, "
            "rk4, adams): it uses the score's full Jacobian"
        )
    fld.per_probe = precondition != "local"
    n_cols = probes if trace == "hutchinson" and fld.per_probe else 1
    y0: State = (x.detach(), torch.zeros(b, n_cols, device=x.device, dtype=x.dtype))
    error: Tensor | None = None

    lp_jac: Tensor | None = None
    trace_var: Tensor | None = None
    first: tuple[Tensor, Tensor] | None = None
    if method == BUDGET and precondition is None and trace == "exact" and steps >= LOCAL_MIN_STEPS:
        # a gradient field gets the locally Gaussian frame
        counted.step = 0
        first = fld.score_and_jacobian(torch.full((b,), eps, device=x.device, dtype=x.dtype), x.detach())
        asym = float(jacobian_asymmetry(first[1]).max())
        info["jacobian_asymmetry"] = asym
        precondition = "local" if asym <= SYMMETRY_TOL else "none"
    if method == BUDGET and precondition == "local":  # K - 1 intervals, every step corrected: K evaluations
        grid_name, grid_opts = sde.likelihood_local_grid
        times = likelihood_grid(sde, steps - 1, eps, grid_name, **dict(grid_opts))
    if precondition == "local" and method in (BUDGET, "adams"):
        y, lp_jac, gaps = refit_adams(fld, sde, x, times, counted, correct_last=method == BUDGET, first=first)
        if method == BUDGET:
            error = gaps * (LOCAL_GAP_SCALE / (steps - 1))
        nfe_ps = torch.full((b,), counted.nfe, dtype=torch.long)
        info["grid"] = times
        info["precondition"] = "local (re-fitted at every evaluation)"
    elif method == BUDGET:
        first_tr = None if first is None else (first[0], first[1].diagonal(dim1=1, dim2=2).sum(1)[:, None])
        sol = budget_logp(fld, sde, x.detach(), steps, eps, draw=draw if fresh_probes else None, first=first_tr)
        y, error, trace_var = (sol.z, sol.delta), sol.error, sol.trace_var
        nfe_ps = torch.full((b,), counted.nfe, dtype=torch.long)
        info["log_snr"] = sol.lam
    elif precondition == "local":
        y, lp_jac = preconditioned_fixed_step(fld, sde, x, times, method, counted)
        nfe_ps = torch.full((b,), counted.nfe, dtype=torch.long)
        info["grid"] = times
        info["precondition"] = "local"
    elif fixed and method in FIXED_STEP_METHODS:
        y = integrate_on_grid(fld, times, y0, method, counted)
        nfe_ps = torch.full((b,), counted.nfe, dtype=torch.long)
        info["grid"] = times
    elif per_sample:
        opts = dict(options or {})
        res = integrate_adaptive(
            lambda t, yy, rows: fld(t, yy, rows),
            y0,
            eps,
            float(sde.T),
            rtol=rtol,
            atol=atol,
            pair=_PER_SAMPLE[method],
            first_step=opts.pop("first_step", None),
            max_steps=opts.pop("max_steps", 10_000),
        )
        if opts:
            raise TypeError(f"unknown option(s) {sorted(opts)} for method={method!r} (first_step, max_steps)")
        y = res.y
        nfe_ps = res.nfe_per_sample.cpu()
        info["row_evals"] = res.info["row_evals"]
    else:
        from torchdiffeq import odeint

        def td_func(t: Tensor, yy: State) -> State:
            return fld(t, yy, None)

        if fixed:
            tt = times.to(device=x.device)
            opts = dict(options or {})
        else:
            tt = torch.tensor([eps, float(sde.T)], dtype=torch.float64, device=x.device)
            opts = {"step_t": torch.tensor([float(sde.T)], dtype=torch.float64, device=x.device), **(options or {})}
        ys = odeint(td_func, y0, tt, rtol=rtol, atol=atol, method=method, options=opts)
        y = (ys[0][-1], ys[1][-1])
        nfe_ps = torch.full((b,), counted.nfe, dtype=torch.long)
    counted.check()
    bar.close(evaluations=counted.nfe)
    info["clamped_evals"] = fld.clamped

    z, delta = y[0].detach(), y[1].detach()
    if delta.ndim == 2:  # one column per probe
        n_p = delta.shape[1]
        if n_p > 1:
            se = delta.std(1) / math.sqrt(n_p)
        elif trace_var is not None:  # one fresh probe per node: the bound from its products
            se = trace_var[:, 0].sqrt()
        else:
            se = torch.full_like(delta[:, 0], math.nan)
        delta = delta.mean(1)
    else:
        se = torch.zeros_like(delta)
    if trace == "exact":
        se = torch.zeros_like(delta)
    if lp_jac is not None:
        delta = delta + lp_jac
    prior = sde.prior_logp(z) if prior_logp is None else prior_logp(z).to(z.dtype).reshape(z.shape[0])
    logp = prior + delta
    nll = -logp
    offset = bpd_offset(rng, bits) if rng is not None else 0.0
    bits_per_nat = 1 / (d * math.log(2))
    bpd = nll * bits_per_nat + offset
    error_bpd = None if error is None else error * bits_per_nat
    if dequantize == "uniform" and bool((bpd < 0).any()):
        bad = int((bpd < 0).sum())
        raise ValueError(
            f"{bad} of {b} samples got negative bits/dim (min {float(bpd.min()):.3g}) on dequantized {bits}-bit data, "
            f"which no correct estimate gives: the solver is off (use more steps or method='adaptive'), or the "
            f"model/SDE pair is wrong"
        )
    if error_bpd is not None:
        _check_error(error_bpd, tol, strict, method, steps)
    return LikelihoodResult(
        nll=nll,
        bpd=bpd,
        prior_logp=prior,
        delta_logp=delta,
        z=z,
        nfe=counted.nfe,
        nfe_per_sample=nfe_ps,
        eps=eps,
        offset=offset,
        x=x,
        info=info,
        error_bpd=error_bpd,
        trace_se_bpd=se * bits_per_nat,
    )


def _check_error(error_bpd: Tensor, tol: float, strict: bool, method: str, steps: int | None) -> None:
    over = error_bpd > tol
    if not bool(over.any()):
        return
    more = f"steps={2 * steps}" if steps else "more steps"
    msg = (
        f"likelihood(method={method!r}, steps={steps}): the estimated solver error exceeds tol={tol:g} bits/dim on "
        f"{int(over.sum())} of {error_bpd.numel()} samples (up to {float(error_bpd.max()):.3g}); use {more}, or "
        f"method='adaptive' (per-sample dopri5 at rtol=atol=1e-5)"
    )
    if strict:
        raise LikelihoodAccuracyError(msg)
    warnings.warn(msg, LikelihoodAccuracyWarning, stacklevel=3)
