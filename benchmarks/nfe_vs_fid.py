#!/usr/bin/env python
r"""Sample quality against the number of score evaluations (NFE), scoresolve's solvers beside the peers.

Default problem, with no download:

- ``analytic``: the 64-D Gaussian mixture fitted to the 8×8 digits (UCI optdigits, shipped)
  (:func:`scoresolve.analytic.digits`), whose score, density and moments are exact under every SDE.
  Metrics: the Fréchet distance (FD) of the samples to the exact moments, divided by the *floor*
  that exact samples of the same size reach (mean of ≥ 50 exact draws; 1.0 is perfect); the
  total-variation error of the mode weights (samples labelled by their most likely component);
  and the mean exact log-likelihood :math:`\log p_0(x)` of the samples beside that of exact samples
  (over-concentrated samplers score *higher* than exact samples: read it as a gap, not a score).
- ``bundled``: the trained digits model shipped with scoresolve (``scoresolve.io.load("digits")``),
  scored by the FID in the feature space of the bundled digits classifier
  (:mod:`scoresolve.metrics.classifier`) against held-out digits; skipped with a reason when either
  is not available in this version.

Solvers: every registered solver (``scoresolve.registry.SOLVERS``) at each NFE budget, plus the peers'
samplers on the *same exact score* (k-diffusion through a denoiser wrapper, diffusers schedulers
through an ε wrapper; with the ``bench`` extra). For a budget ``B`` a fixed-grid solver runs
``ss.sample(..., nfe=B)``: the grid is planned from the solver's declarations
(:func:`scoresolve.solvers.loop.plan`, the final step included); the NFE reported is the one *counted*
(``SampleResult.nfe``). Adaptive solvers run at a few tolerances instead. Budgets below a solver's
minimum are listed as skipped with the reason.

Outputs in ``--out`` (default ``bench_out/nfe_vs_fid/``): ``results.json`` (every run: solver, budget,
steps, NFE counted, metrics, wall time; the configuration, seed, versions and machine),
``results.md`` (a Markdown table) and ``nfe_vs_fd.png`` (metric against NFE, log axes; needs
matplotlib).

Three presets: the default run (ours beside the peers at 5, 10 and 20 NFE on both models, 1–2
minutes on a 2-core CPU: ``auto`` runs there with ``calibrate=False``, since its per-model grid
calibration costs minutes on a CPU), ``--full`` (every solver, budgets 5–200, ``auto`` calibrated; the
tables of docs/benchmarks.md) and ``--quick`` (one solver per family, for CI).

Examples::

    python benchmarks/nfe_vs_fid.py                         # the first look, 1-2 minutes
    python benchmarks/nfe_vs_fid.py --full                  # the full sweep (docs/benchmarks.md)
    python benchmarks/nfe_vs_fid.py --quick                 # < 1 minute, one solver per family
    python benchmarks/nfe_vs_fid.py --solvers pc,k_diffusion:lms --nfe 10,20,50 --n 4000 --sde ve
    python benchmarks/nfe_vs_fid.py --model analytic --sde flow   # exact flow model vs diffusers' flow schedulers
"""

from __future__ import annotations

import argparse
import ast
import math
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BenchError,
    machine_info,
    markdown_table,
    plot_metric_vs_nfe,
    prepare_out_dir,
    run_cli,
    versions,
    write_json,
    write_text,
)

import scoresolve as ss  # noqa: E402
from scoresolve.metrics import frechet_floor, frechet_to_moments, mode_weights  # noqa: E402
from scoresolve.models import cpu_facing  # noqa: E402
from scoresolve.progress import Progress  # noqa: E402
from scoresolve.recipes import auto_recipe  # noqa: E402
from scoresolve.registry import SOLVERS  # noqa: E402
from scoresolve.sampling import resolve_solver  # noqa: E402
from scoresolve.solvers.base import GridSolver  # noqa: E402
from scoresolve.solvers.loop import cost as planned_cost  # noqa: E402
from scoresolve.solvers.loop import plan  # noqa: E402

NAME = "nfe_vs_fid"
FULL_NFE = (5, 10, 20, 50, 100, 200)
DEFAULT_NFE = (5, 10, 20)
QUICK_NFE = (10, 50)
DEFAULT_N = 2000
QUICK_N = 500
FLOOR_DRAWS = 50
SDES: dict[str, Callable[[], ss.SDE]] = {"vp": ss.VPSDE, "ve": ss.VESDE, "subvp": ss.SubVPSDE,
                                         "flow": ss.RectifiedFlow}
BUILTIN_MODELS = ("analytic", "bundled")


# --------------------------------------------------------------------------------------------------
# peers: the same exact score through k-diffusion's and diffusers' samplers
# --------------------------------------------------------------------------------------------------

# k-diffusion: sampler name → NFE spent by n steps on a Karras grid ending at sigma = 0
# (second-order methods take a first-order last step onto 0, hence 2n - 1).
KDIFF_SAMPLERS: dict[str, Callable[[int], int]] = {
    "euler": lambda n: n,
    "euler_ancestral": lambda n: n,
    "heun": lambda n: 2 * n - 1,
    "dpm_2": lambda n: 2 * n - 1,
    "lms": lambda n: n,
    "dpmpp_2m": lambda n: n,
    "dpmpp_2s_ancestral": lambda n: 2 * n - 1,
    "dpmpp_2m_sde": lambda n: n,
    "dpm_fast": lambda n: n,  # DPM-Solver-3 "fast": exactly n evaluations, ends at sigma_min
}
KDIFF_STOCHASTIC = {"euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_2m_sde"}
# diffusers: scheduler class → NFE of n steps (one model call per step; Heun calls twice except last)
DIFFUSERS_SCHEDULERS: dict[str, tuple[str, Callable[[int], int]]] = {
    "ddim": ("DDIMScheduler", lambda n: n),
    "euler": ("EulerDiscreteScheduler", lambda n: n),
    "heun": ("HeunDiscreteScheduler", lambda n: 2 * n - 1),
    "dpmsolver_multistep": ("DPMSolverMultistepScheduler", lambda n: n),
    "unipc": ("UniPCMultistepScheduler", lambda n: n),
    "deis": ("DEISMultistepScheduler", lambda n: n),
    "flow_match_euler": ("FlowMatchEulerDiscreteScheduler", lambda n: n),
    "flow_match_heun": ("FlowMatchHeunDiscreteScheduler", lambda n: 2 * n - 1),
    "dpmsolver_multistep_flow": ("DPMSolverMultistepScheduler", lambda n: n),
    "unipc_flow": ("UniPCMultistepScheduler", lambda n: n),
}
# the flow-matching ones (a velocity model on the linear interpolant, --sde flow) and their scheduler options
DIFFUSERS_FLOW_OPTIONS: dict[str, dict[str, Any]] = {
    "flow_match_euler": {},
    "flow_match_heun": {},
    "dpmsolver_multistep_flow": {"use_flow_sigmas": True, "prediction_type": "flow_prediction"},
    "unipc_flow": {"use_flow_sigmas": True, "prediction_type": "flow_prediction"},
}
FLOW_PEERS = ("k_diffusion:euler", "k_diffusion:dpmpp_2m") + tuple(f"diffusers:{k}" for k in DIFFUSERS_FLOW_OPTIONS)
FULL_PEERS = (
    "k_diffusion:euler",
    "k_diffusion:heun",
    "k_diffusion:lms",
    "k_diffusion:dpmpp_2m",
    "k_diffusion:dpm_fast",
    "k_diffusion:euler_ancestral",
    "diffusers:ddim",
    "diffusers:dpmsolver_multistep",
    "diffusers:unipc",
)
QUICK_PEERS = ("k_diffusion:dpmpp_2m", "diffusers:dpmsolver_multistep")
# the default run (a first look in about a minute): ours beside the peers, on both models. ``auto``'s grid
# calibration costs minutes on a CPU (docs/benchmarks.md), so here it runs on its uncalibrated grid; --full
# runs it calibrated.
DEFAULT_SOLVERS = ("auto[calibrate=False]", "dpmpp_2m", "unipc", "ipndm",
                   "k_diffusion:dpmpp_2m", "k_diffusion:euler", "diffusers:ddim", "diffusers:dpmsolver_multistep",
                   "diffusers:unipc")
DEFAULT_TRAINED_SOLVERS = ("auto[calibrate=False]", "dpmpp_2m", "unipc",
                           "k_diffusion:dpmpp_2m", "diffusers:ddim", "diffusers:dpmsolver_multistep")
# --quick runs these registered solvers (those present): one of each family, all cheap; the full run takes all
QUICK_SOLVERS = ("pc", "ode", "ode_heun", "dpmpp_2m", "unipc", "sde_dpmpp_2m")
# a trained network costs ~1000x the analytic score per evaluation on the CPU: fewer samples, budgets, solvers
TRAINED_N, QUICK_TRAINED_N = 500, 200
TRAINED_NFE, QUICK_TRAINED_NFE = (5, 10, 20, 50, 100), (10,)
DEFAULT_TRAINED_NFE = DEFAULT_NFE
TRAINED_SOLVERS = ("pc", "ode", "ode_heun", "dpmpp_2m", "unipc", "ipndm", "auto", "sde_dpmpp_2m", "heun_edm",
                   "k_diffusion:dpmpp_2m", "k_diffusion:lms", "diffusers:dpmsolver_multistep", "diffusers:unipc")
QUICK_TRAINED_SOLVERS = ("dpmpp_2m", "k_diffusion:dpmpp_2m")
DEFAULT_TIME_LIMIT = 60.0
#: adaptive solvers whose tolerances are not "rtol = atol": the settings swept (quick runs the first)
#: options of a solver spec that are arguments of ss.sample, not of the solver
SAMPLE_ARGS = ("calibrate", "calibration_budget", "gaussian_prior", "final")
TOLERANCE_SWEEPS: dict[str, list[dict[str, float]]] = {"gotta_go_fast": [{"rtol": 1.0}, {"rtol": 0.5}, {"rtol": 0.25}]}
QUICK_TIME_LIMIT = 20.0

_KDIFF_NOTE: str | None = None


def _load_k_diffusion_sampling() -> Any:
    """``k_diffusion.sampling`` (see :func:`scoresolve.adapters.kdiffusion.load_kdiffusion_sampling`)."""
    global _KDIFF_NOTE
    from scoresolve.adapters.kdiffusion import load_kdiffusion_sampling

    ks, _KDIFF_NOTE = load_kdiffusion_sampling()
    return ks


def peer_available(name: str) -> str | None:
    """``None`` if the peer can run here, else the reason it is skipped."""
    lib, _, sampler = name.partition(":")
    if lib == "k_diffusion":
        if sampler not in KDIFF_SAMPLERS:
            return f"unknown k-diffusion sampler {sampler!r} (known: {', '.join(KDIFF_SAMPLERS)})"
        try:
            _load_k_diffusion_sampling()
        except Exception as e:  # noqa: BLE001 - any import failure is a reason to skip
            return f"k-diffusion not importable ({type(e).__name__}: {e}); pip install 'scoresolve[bench]'"
        return None
    if lib == "diffusers":
        if sampler not in DIFFUSERS_SCHEDULERS:
            return f"unknown diffusers scheduler {sampler!r} (known: {', '.join(DIFFUSERS_SCHEDULERS)})"
        try:
            import diffusers  # noqa: F401
        except Exception as e:  # noqa: BLE001
            return f"diffusers not importable ({type(e).__name__}: {e}); pip install 'scoresolve[bench]'"
        return None
    return f"unknown peer library {lib!r} (known: k_diffusion, diffusers)"


class _Counter:
    def __init__(self, fn: Callable[..., Tensor]) -> None:
        self.fn, self.nfe = fn, 0

    def __call__(self, *a: Any, **k: Any) -> Tensor:
        self.nfe += 1
        return self.fn(*a, **k)


def run_k_diffusion(
    sampler: str, score: Callable[[Tensor, Tensor], Tensor], sde: ss.SDE, n_steps: int, shape: tuple[int, ...],
    eps: float, generator: torch.Generator,
) -> tuple[Tensor, int]:
    r"""k-diffusion's ``sample_<sampler>`` on the exact score, as a denoiser
    :math:`D(\tilde x, \tilde\sigma) = (x_t + \sigma_t^2 s(x_t, t))/\alpha_t` with :math:`x_t = \alpha_t\tilde x`,
    :math:`t = t(\tilde\sigma)`, on a Karras grid from :math:`\tilde\sigma(T)` to :math:`\tilde\sigma(\epsilon)`
    then 0 (as k-diffusion's users run it). Returns samples in the SDE's ``x_0`` space and the NFE."""
    ks = _load_k_diffusion_sampling()
    smin = float(sde.sigma(torch.tensor(eps, dtype=torch.float64)))
    smax = float(sde.sigma(torch.tensor(sde.T, dtype=torch.float64)))

    def denoiser(xt: Tensor, sig: Tensor) -> Tensor:
        t = sde.t_from_sigma(sig.to(torch.float64)).to(xt.dtype)
        a = ss.SDE.bcast(sde.alpha(t), xt)
        x = a * xt
        s = score(x, t)
        std = ss.SDE.bcast(sde.marginal_std(t), xt)
        return (x + std**2 * s) / a

    model = _Counter(denoiser)
    # the prior noise is the generator's first draw, as for scoresolve's solvers and the diffusers runner (the
    # same seed gives the same start, so samples can be paired); k-diffusion's own samplers draw later noise
    # from the global RNG: seed it from the generator so that runs are reproducible
    x = torch.randn(shape, generator=generator) * smax
    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    if sampler == "dpm_fast":
        out = ks.sample_dpm_fast(model, x, smin, smax, n_steps, disable=True)
    else:
        sigmas = ks.get_sigmas_karras(n_steps, smin, smax, rho=7.0)
        out = getattr(ks, f"sample_{sampler}")(model, x, sigmas, disable=True)
    return out, model.nfe


def run_diffusers(
    sched_key: str, score: Callable[[Tensor, Tensor], Tensor], sde: ss.SDE, n_steps: int, shape: tuple[int, ...],
    generator: torch.Generator,
) -> tuple[Tensor, int]:
    r"""A diffusers scheduler loop on the exact score. The continuous VP (β linear from β_min to β_max)
    is the limit of the discrete DDPM schedule with 1000 betas linear from β_min/1000 to β_max/1000; each
    discrete timestep ``i`` is mapped to continuous time by inverting its ``alphas_cumprod`` through the
    log-SNR (not ``t = i/1000``: off by several per cent at the ends), and ε = -σ_t s(x_t, t).
    Scheduler defaults as their users get them, except ``clip_sample=False`` (DDIM clips x0 to ±1)."""
    import diffusers

    if sched_key in DIFFUSERS_FLOW_OPTIONS:
        return run_diffusers_flow(sched_key, score, sde, n_steps, shape, generator)
    if not isinstance(sde, ss.VPSDE):
        raise NotImplementedError("diffusers' DDPM-type schedulers model the VP SDE only")
    cls_name, _ = DIFFUSERS_SCHEDULERS[sched_key]
    cls = getattr(diffusers, cls_name)
    n_train = 1000
    kwargs: dict[str, Any] = dict(
        num_train_timesteps=n_train, beta_start=sde.beta_min / n_train, beta_end=sde.beta_max / n_train,
        beta_schedule="linear", prediction_type="epsilon",
    )
    import inspect

    if "clip_sample" in inspect.signature(cls.__init__).parameters:  # follows register_to_config's wrapper
        kwargs["clip_sample"] = False
    sched = cls(**kwargs)
    sched.set_timesteps(n_steps)
    acp = sched.alphas_cumprod.to(torch.float64)

    def eps_fn(x: Tensor, ts: Tensor) -> Tensor:
        i = int(round(float(ts)))
        a2 = acp[i]
        lam = 0.5 * torch.log(a2 / (1 - a2))
        t = sde.t_from_log_snr(lam.reshape(1)).to(x.dtype).expand(x.shape[0])
        return -torch.sqrt(1 - a2).to(x.dtype) * score(x, t)

    model = _Counter(eps_fn)
    x = torch.randn(shape, generator=generator) * float(sched.init_noise_sigma)
    for ts in sched.timesteps:
        xin = sched.scale_model_input(x, ts)
        e = model(xin, ts)
        x = sched.step(e, ts, x).prev_sample
    return x, model.nfe


def run_diffusers_flow(
    sched_key: str, model: Any, sde: ss.SDE, n_steps: int, shape: tuple[int, ...], generator: torch.Generator,
) -> tuple[Tensor, int]:
    """A diffusers flow-matching scheduler loop on a flow model's velocity ``model.fn(x, tau)`` (the exact
    velocity of the analytic problem), called at ``tau = timestep / 1000`` as a diffusers flow network is;
    the process's shift as the scheduler's ``shift`` / ``flow_shift``, defaults otherwise."""
    import diffusers

    if not isinstance(sde, ss.RectifiedFlow) or getattr(model, "parameterization", None) != "velocity":
        raise NotImplementedError("diffusers' flow-matching schedulers need a flow model (--sde flow)")
    cls_name, _ = DIFFUSERS_SCHEDULERS[sched_key]
    opts = dict(DIFFUSERS_FLOW_OPTIONS[sched_key])
    opts["flow_shift" if opts.get("use_flow_sigmas") else "shift"] = sde.shift
    sched = getattr(diffusers, cls_name)(num_train_timesteps=1000, **opts)
    sched.set_timesteps(n_steps)
    counted = _Counter(lambda x, ts: model.fn(x, (ts / 1000).to(x.dtype).expand(x.shape[0])))
    x = torch.randn(shape, generator=generator) * float(getattr(sched, "init_noise_sigma", 1.0))
    for ts in sched.timesteps:
        x = sched.step(counted(x, ts), ts, x).prev_sample
    return x, counted.nfe


# --------------------------------------------------------------------------------------------------
# problems (model + reference + metrics)
# --------------------------------------------------------------------------------------------------


@dataclass
class Problem:
    """A model to sample and how to score its samples."""

    name: str
    model: Any
    sde: ss.SDE
    shape: tuple[int, ...]
    metric_name: str
    evaluate: Callable[[Tensor], dict[str, float]]
    reference: dict[str, Any] = field(default_factory=dict)
    score_fn: Callable[[Tensor, Tensor], Tensor] | None = None


def on_device(problem: Problem, device: str) -> Problem:
    """``problem`` with its network moved to ``device``. The peers' loops stay on the CPU: they call the
    network through a wrapper that moves their inputs to ``device`` and the score back."""
    net = getattr(problem.model, "fn", None)
    if not isinstance(net, torch.nn.Module):  # a closure over the network (the Pulfer DDPM's clip_x0)
        net = getattr(problem.model, "metadata", {}).get("network")
    if torch.device(device).type == "cpu" or not isinstance(net, torch.nn.Module):
        return problem
    net.to(device)
    return replace(problem, score_fn=cpu_facing(problem.model, torch.device(device)))


def analytic_problem(sde: ss.SDE, n: int, seed: int) -> Problem:
    mix = ss.analytic.digits()
    mean, cov = mix.moments()
    floor, floor_se = frechet_floor(lambda m, g: mix.sample(m, g), mean, cov, n, draws=FLOOR_DRAWS, seed=seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    tv_exact, ll_exact = [], []
    for _ in range(FLOOR_DRAWS):
        xe = mix.sample(n, g)
        tv_exact.append(0.5 * float((mode_weights(mix.labels(xe), mix.n_components) - mix.weights).abs().sum()))
        ll_exact.append(float(mix.log_prob(xe.to(torch.float64)).mean()))
    tv_floor = sum(tv_exact) / len(tv_exact)
    ll_ref = sum(ll_exact) / len(ll_exact)
    ll_sd = float(torch.tensor(ll_exact).std())

    def evaluate(x: Tensor) -> dict[str, float]:
        x64 = x.detach().cpu().to(torch.float64)
        if not torch.isfinite(x64).all():
            nan = math.nan
            return {"fd": math.inf, "fd_ratio": math.inf, "mode_tv": nan, "loglik": nan, "loglik_gap": nan}
        fd = frechet_to_moments(x64, mean, cov)
        w = mode_weights(mix.labels(x64), mix.n_components)
        ll = float(mix.log_prob(x64).mean())
        return {
            "fd": fd,
            "fd_ratio": fd / floor,
            "mode_tv": 0.5 * float((w - mix.weights).abs().sum()),
            "loglik": ll,
            "loglik_gap": ll - ll_ref,
        }

    # a flow process gets the mixture's exact velocity, as a flow model would give it
    model = mix.velocity_model(sde) if isinstance(sde, ss.RectifiedFlow) else mix.score_model(sde)
    return Problem(
        name="analytic",
        model=model,
        sde=sde,
        shape=(n, *mix.event_shape),
        metric_name="fd_ratio",
        evaluate=evaluate,
        reference={
            "description": "analytic digits mixture (64-D, 10 components), exact score/moments/density",
            "fd_floor": floor,
            "fd_floor_stderr": floor_se,
            "floor_draws": FLOOR_DRAWS,
            "mode_tv_exact": tv_floor,
            "loglik_exact": ll_ref,
            "loglik_exact_sd": ll_sd,
        },
        score_fn=model,
    )


def _load_model(spec: str) -> Any:
    try:
        from scoresolve import io as ssio
    except ImportError as e:
        raise BenchError(f"--model {spec!r} needs scoresolve.io, which is not available in this version ({e})") from e
    return ssio.load(spec)


def trained_problem(spec: str, n: int, seed: int, sde_override: ss.SDE | None) -> Problem:
    """A trained 8×8 digits model scored by classifier-feature FID against held-out digits."""
    from scoresolve.metrics import fid as fidmod

    model = _load_model("digits" if spec == "bundled" else spec)
    sde = sde_override or getattr(model, "sde", None)
    if sde is None:
        raise BenchError(f"model {spec!r} carries no SDE; pass --sde")
    shape = tuple(getattr(model, "sample_shape", None) or ())
    if shape != (1, 8, 8):
        raise BenchError(
            f"classifier-feature FID is for 8×8 digits models (sample shape (1, 8, 8)); {spec!r} has {shape}"
        )
    ref = fidmod.DigitsFID()
    floor, floor_se = ref.floor(n, draws=FLOOR_DRAWS, seed=seed + 1)

    def evaluate(x: Tensor) -> dict[str, float]:
        if not torch.isfinite(x).all():
            return {"fid": math.inf, "fid_ratio": math.inf}
        f = ref.fid(x)
        return {"fid": f, "fid_ratio": f / floor}

    return Problem(
        name=spec,
        model=model,
        sde=sde,
        shape=(n, *shape),
        metric_name="fid_ratio",
        evaluate=evaluate,
        reference={
            "description": f"trained model {spec!r}; FID in the bundled digits classifier's feature space "
            "against held-out digits",
            "fid_floor": floor,
            "fid_floor_stderr": floor_se,
            **ref.describe(),
        },
        score_fn=model,
    )


# --------------------------------------------------------------------------------------------------
# planning runs
# --------------------------------------------------------------------------------------------------

_SPEC = re.compile(r"^([a-z0-9_]+(?::[a-z0-9_]+)?)(?:\[(.*)\])?$")


def parse_solver_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name[key=value,...]`` → ``(name, options)``; values are Python literals or strings."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise BenchError(f"cannot parse solver {spec!r}: expected name or name[key=value,...]")
    name, opts_s = m.group(1), m.group(2)
    opts: dict[str, Any] = {}
    if opts_s:
        for part in opts_s.split(","):
            k, sep, v = part.partition("=")
            if not sep or not k.strip():
                raise BenchError(f"cannot parse option {part!r} of solver {spec!r}: expected key=value")
            try:
                opts[k.strip()] = ast.literal_eval(v.strip())
            except (ValueError, SyntaxError):
                opts[k.strip()] = v.strip()
    return name, opts


def default_solver_names() -> list[str]:
    return list(SOLVERS.names())


def check_solver_names(names: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    known = default_solver_names()
    peers = [f"k_diffusion:{k}" for k in KDIFF_SAMPLERS] + [f"diffusers:{k}" for k in DIFFUSERS_SCHEDULERS]
    for spec in names:
        name, opts = parse_solver_spec(spec)
        if ":" in name:
            if name not in peers:
                raise BenchError(f"unknown peer {name!r}. Peers: {', '.join(peers)}")
            if opts:
                raise BenchError(f"peer {name!r} takes no options")
        elif name not in SOLVERS:
            import difflib

            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise BenchError(
                f"unknown solver {name!r}.{hint} Registered solvers: {', '.join(known)}; peers: {', '.join(peers)}"
            )
        out.append((spec, opts))
    return out


# --------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------


def _sample_ours(problem: Problem, solver_name: str, opts: dict[str, Any], nfe: int | None, seed: int,
                 device: str) -> tuple[Tensor, int, float, dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(problem.shape, generator=g) * problem.sde.prior_std
    t0 = time.perf_counter()
    res = ss.sample(
        problem.model, problem.sde, solver=solver_name, nfe=nfe, x_T=x_T.to(device), generator=g,
        progress=False, return_result=True, device=device, **opts,
    )
    secs = time.perf_counter() - t0
    extra: dict[str, Any] = {}
    cal = res.info.get("calibration")
    if isinstance(cal, dict):  # model-dependent grids: their one-off cost is not in the sampling NFE
        extra["calibration"] = {k: v for k, v in cal.items() if isinstance(v, (int, float, str, bool))}
    if "nfe_per_sample" in res.info:
        v = res.info["nfe_per_sample"]
        extra["nfe_per_sample_mean"] = float(torch.as_tensor(v, dtype=torch.float64).mean())
    return res.samples, int(res.nfe), secs, extra


def _sample_peer(problem: Problem, peer: str, steps: int, seed: int) -> tuple[Tensor, int, float]:
    lib, _, sampler = peer.partition(":")
    g = torch.Generator().manual_seed(seed)
    eps = problem.sde.default_eps
    t0 = time.perf_counter()
    with torch.no_grad():
        if lib == "k_diffusion":
            x, nfe = run_k_diffusion(sampler, problem.score_fn, problem.sde, steps, problem.shape, eps, g)
        else:
            x, nfe = run_diffusers(sampler, problem.score_fn, problem.sde, steps, problem.shape, g)
    return x, nfe, time.perf_counter() - t0


def peer_steps(peer: str, budget: int) -> tuple[int, int] | None:
    lib, _, sampler = peer.partition(":")
    cost = KDIFF_SAMPLERS[sampler] if lib == "k_diffusion" else DIFFUSERS_SCHEDULERS[sampler][1]
    low = 2 if sampler in ("lms", "dpm_fast", "dpmpp_2m", "dpmsolver_multistep", "unipc", "deis") else 1
    best = None
    for steps in range(low, budget + 1):
        if cost(steps) <= budget:
            best = (steps, cost(steps))
    return best


def plan_runs(
    problem: Problem, solver_specs: Sequence[tuple[str, dict[str, Any]]], budgets: Sequence[int], quick: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return (runs to do, skipped rows)."""
    runs, skipped = [], []
    for spec, opts in solver_specs:
        name = spec.split("[")[0]
        base = {"model": problem.name, "solver": spec}
        if ":" in name:
            why = peer_available(name)
            is_flow_peer = name.partition(":")[2] in DIFFUSERS_FLOW_OPTIONS
            if why is None and name.startswith("diffusers:") and is_flow_peer:
                if not isinstance(problem.sde, ss.RectifiedFlow) or problem.name != "analytic":
                    why = "diffusers' flow-matching schedulers need the analytic flow model (--sde flow)"
            elif why is None and name.startswith("diffusers:") and not isinstance(problem.sde, ss.VPSDE):
                why = "diffusers' DDPM-type schedulers model the VP SDE only"
            if why is None and problem.name != "analytic" and name.startswith("diffusers:"):
                why = None
            if why is not None:
                skipped.append({**base, "budget": None, "skipped": why})
                continue
            for b in budgets:
                st = peer_steps(name, b)
                if st is None:
                    skipped.append({**base, "budget": b, "skipped": f"budget {b} below the sampler's minimum"})
                else:
                    runs.append({**base, "kind": "peer", "budget": b, "steps": st[0], "declared_nfe": st[1]})
            continue
        try:  # the options that are sample()'s own arguments (auto's calibrate=False) are not the solver's
            solver = resolve_solver(name, {k: v for k, v in opts.items() if k not in SAMPLE_ARGS})
        except (TypeError, ValueError) as e:
            raise BenchError(f"solver {spec!r}: {e}") from e
        info = {
            "stochastic": bool(getattr(solver, "stochastic", False)),
            "order": float(getattr(solver, "order", float("nan"))),
        }
        if getattr(solver, "adaptive", False):
            import inspect

            params = inspect.signature(type(solver).__init__).parameters
            if name in TOLERANCE_SWEEPS and "rtol" not in opts:
                # tolerances in the solver's own units (gotta_go_fast: rtol is a multiple of sigma_t)
                for o_tol in TOLERANCE_SWEEPS[name][:1] if quick else TOLERANCE_SWEEPS[name]:
                    o = {**opts, **o_tol}
                    runs.append({**base, **info, "kind": "adaptive", "budget": None, "steps": None,
                                 "options": o, "setting": ", ".join(f"{k}={v:g}" for k, v in o_tol.items())})
            elif "rtol" in params and "rtol" not in opts:
                tols = (1e-3,) if quick else (1e-2, 1e-3, 1e-4)
                for tol in tols:
                    o = {**opts, "rtol": tol}
                    if "atol" in params and "atol" not in opts:
                        o["atol"] = tol
                    runs.append({**base, **info, "kind": "adaptive", "budget": None, "steps": None,
                                 "options": o, "setting": f"rtol={tol:g}"})
            else:
                runs.append({**base, **info, "kind": "adaptive", "budget": None, "steps": None, "options": opts})
            continue
        for b in budgets:
            try:
                if isinstance(solver, GridSolver):
                    final = opts.get("final", solver.default_final)
                    n = plan(solver, b, final)
                    declared = planned_cost(solver, n, final, False)
                else:  # solver="auto": a recipe per budget (raises below its minimum)
                    auto_recipe(b, gaussian=False)
                    n, declared = None, b
            except ValueError as e:
                skipped.append({**base, **info, "budget": b, "skipped": f"budget {b} below the solver's minimum ({e})"})
            else:
                runs.append({**base, **info, "kind": "ours", "budget": b, "steps": n, "declared_nfe": declared,
                             "options": opts})
    return runs, skipped


def execute(problem: Problem, run: dict[str, Any], seed: int, device: str) -> dict[str, Any]:
    row = {k: v for k, v in run.items() if k != "options"}
    if run.get("options"):
        row["options"] = run["options"]
    name = run["solver"].split("[")[0]
    try:
        if run["kind"] == "peer":
            x, nfe, secs = _sample_peer(problem, name, run["steps"], seed)
            extra: dict[str, Any] = {}
        else:
            x, nfe, secs, extra = _sample_ours(problem, name, run.get("options") or {}, run.get("budget"), seed, device)
    except Exception as e:  # noqa: BLE001 - a failing solver is a result, not a crash of the benchmark
        row.update(error=f"{type(e).__name__}: {e}", nfe=None)
        if "--debug" in sys.argv:
            traceback.print_exc()
        return row
    row.update(nfe=nfe, seconds=secs, **extra)
    if run.get("budget") is not None and nfe > run["budget"]:
        row["note"] = f"counted NFE {nfe} exceeds the budget {run['budget']} (declarations disagree with the count)"
    row.update(problem.evaluate(x))
    return row


# --------------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------------


def _table(rows: list[dict[str, Any]], problem: Problem) -> str:
    if problem.metric_name == "fd_ratio":
        cols = [("solver", "solver"), ("setting", "budget / setting"), ("steps", "steps"), ("nfe", "NFE"),
                ("fd", "FD"), ("fd_ratio", "FD / floor"), ("mode_tv", "mode TV"), ("loglik_gap", "Δ log p0"),
                ("seconds", "s"), ("remark", "note")]
    else:
        cols = [("solver", "solver"), ("setting", "budget / setting"), ("steps", "steps"), ("nfe", "NFE"),
                ("fid", "FID (classifier)"), ("fid_ratio", "FID / floor"), ("seconds", "s"), ("remark", "note")]
    out = []
    for r in rows:
        r = dict(r)
        if r.get("setting") is None:
            r["setting"] = r.get("budget") if r.get("budget") is not None else "—"
        r["remark"] = r.get("skipped") or r.get("error") or r.get("note") or ""
        cal = r.get("calibration")
        if cal:
            bits = [f"{cal[k]:.3g} {k}" for k in ("nfe", "seconds") if isinstance(cal.get(k), (int, float))]
            r["remark"] = (r["remark"] + "; " if r["remark"] else "") + "time incl. grid calibration" + (
                f" ({', '.join(bits)})" if bits else "")
        out.append(r)
    return markdown_table(out, cols)


def _row_line(problem: Problem, row: dict[str, Any]) -> str:
    """One line per finished run: model, solver, budget, counted NFE, the main metric, seconds."""
    head = f"{problem.name:<9} {row['solver']:<30} {str(row.get('setting') or '—'):>10}"
    if row.get("error"):
        return f"{head}  error: {row['error']}"
    metric = row.get(problem.metric_name)
    label = "FD/floor" if problem.metric_name == "fd_ratio" else "FID/floor"
    return f"{head}  NFE {row.get('nfe')!s:>4}  {label} {metric:8.3g}  {row.get('seconds', 0):6.2f} s"


def _sort_key(r: dict[str, Any]) -> tuple:
    return (":" in r["solver"], r["solver"], r.get("budget") or 0, str(r.get("setting", "")))


def report(problems: list[Problem], rows: list[dict[str, Any]], skipped_models: list[dict[str, str]],
           peer_skips: list[dict[str, Any]], config: dict[str, Any], out: Path, plot: bool = True) -> dict[str, Path]:
    md = ["# NFE vs sample quality", "", f"Command: `{config['command']}`", "",
          f"Machine: {config['machine']['processor']}, {config['machine']['cpu_count']} CPUs, "
          f"torch threads {config['machine']['torch_threads']}, device {config['machine']['device']}; "
          f"seed {config['seed']}; n = {config['n']} samples per run on the analytic model, "
          f"{config['n_trained']} on trained models; SDE {config['sde']} (analytic model).", "",
          *[f"Note: {note}" for note in config.get("notes", [])], *([""] if config.get("notes") else [])]
    files: dict[str, Path] = {}
    for p in problems:
        prow = sorted([r for r in rows if r["model"] == p.name], key=_sort_key)
        md += [f"## {p.name}: {p.reference.get('description', '')}", ""]
        if p.metric_name == "fd_ratio":
            ref = p.reference
            md += [f"FD floor (exact samples, n = {config['n']}, {ref['floor_draws']} draws): "
                   f"{ref['fd_floor']:.4g} ± {ref['fd_floor_stderr']:.2g}; mode-weight TV of exact samples "
                   f"{ref['mode_tv_exact']:.3g}; mean log p0 of exact samples {ref['loglik_exact']:.4g} "
                   f"(sd over draws {ref['loglik_exact_sd']:.2g}). Δ log p0 = samples' mean log p0 minus exact "
                   "samples' (positive: over-concentrated, negative: too spread).", ""]
        else:
            ref = p.reference
            md += [f"FID floor ({config['n_trained']} real train-split digits drawn with replacement, against the "
                   f"{ref['n_reference']} held-out digits, {FLOOR_DRAWS} draws): "
                   f"{ref['fid_floor']:.4g} ± {ref['fid_floor_stderr']:.2g}.", ""]
        md += [_table(prow, p), ""]
        series: dict[str, list[tuple[float, float]]] = {}
        for r in prow:
            if r.get("nfe") and r.get(p.metric_name) is not None:
                series.setdefault(r["solver"], []).append((float(r["nfe"]), float(r[p.metric_name])))
        png = None if not plot else plot_metric_vs_nfe(
            out / f"nfe_vs_fd_{p.name if p.name in BUILTIN_MODELS else 'model'}.png", series,
            ylabel="FD / floor (1 = exact samples)" if p.metric_name == "fd_ratio" else "FID / floor",
            title=f"{p.name}, n = {config['n'] if p.name == 'analytic' else config['n_trained']}", hline=1.0,
            hline_label="floor (exact / real samples)",
        )
        if png is not None:
            files[f"plot_{p.name}"] = png
            md += [f"![{p.name}]({png.name})", ""]
    if skipped_models or peer_skips:
        md += ["## Skipped", ""]
        for s in skipped_models:
            md.append(f"- model `{s['model']}`: {s['reason']}")
        seen = set()
        for s in peer_skips:
            if s["solver"] not in seen:
                md.append(f"- `{s['solver']}`: {s['skipped']}")
                seen.add(s["solver"])
        md.append("")
    files["json"] = write_json(out / "results.json", {
        "benchmark": NAME, "config": config, "references": {p.name: p.reference for p in problems},
        "skipped_models": skipped_models, "runs": rows,
    })
    files["markdown"] = write_text(out / "results.md", "\n".join(md))
    return files


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nfe_vs_fid.py",
        description="Sample quality (Fréchet distance / FID) against the number of score evaluations, for every "
        "registered scoresolve solver and the peers' samplers on the same score.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default="analytic,bundled",
                   help="comma-separated models: 'analytic' (exact digits mixture), 'bundled' (the trained digits "
                   "model shipped with scoresolve; skipped with a reason if absent), a checkpoint path or a Hub id "
                   "loadable by scoresolve.io.load")
    p.add_argument("--sde", default="vp", choices=sorted(SDES),
                   help="SDE for the analytic model (trained models use their own unless this is given explicitly)")
    p.add_argument("--solvers", default=None,
                   help="comma-separated solvers: registered names, optionally with options as name[key=value,...] "
                   "(e.g. pc[corrector=none]), and peers as k_diffusion:<sampler> / diffusers:<scheduler>; "
                   "'all' = every registered solver and the default peers; 'ours' = registered solvers only "
                   f"(default: {', '.join(DEFAULT_SOLVERS)}; --full: all on the analytic model, a representative "
                   "subset on trained models; --quick: one solver per family)")
    p.add_argument("--nfe", default=None,
                   help=f"comma-separated NFE budgets (default {','.join(map(str, DEFAULT_NFE))}; "
                   f"--full: {','.join(map(str, FULL_NFE))}; --quick: {','.join(map(str, QUICK_NFE))})")
    p.add_argument("--n", type=int, default=None,
                   help=f"samples per run on the analytic model (default {DEFAULT_N}; --quick: {QUICK_N})")
    p.add_argument("--n-trained", type=int, default=None,
                   help=f"samples per run on trained models (default {TRAINED_N}; --quick: {QUICK_TRAINED_N})")
    p.add_argument("--nfe-trained", default=None,
                   help="NFE budgets for trained models (default: --nfe if given, else "
                   f"{','.join(map(str, DEFAULT_TRAINED_NFE))}; --full: {','.join(map(str, TRAINED_NFE))}; "
                   f"--quick: {','.join(map(str, QUICK_TRAINED_NFE))})")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior noise and of the solvers' noise")
    p.add_argument("--device", default="cpu", help="torch device for scoresolve's solvers (the peers run on the CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--out", default=None, help=f"output folder (default bench_out/{NAME}/)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true",
                      help="the full sweep of docs/benchmarks.md: every registered solver (auto calibrated), "
                      "budgets up to 200, nine peers (about 15 minutes on a 2-core CPU)")
    mode.add_argument("--quick", action="store_true",
                      help="a run under a minute: fewer budgets, fewer samples, two peers")
    p.add_argument("--time-limit", type=float, default=None,
                   help=f"seconds: after a run of a solver takes longer, its larger budgets are skipped (with the "
                   f"reason in the table); default {DEFAULT_TIME_LIMIT:g}, --quick {QUICK_TIME_LIMIT:g}")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    p.add_argument("--debug", action="store_true", help="print tracebacks of failing runs")
    return p


def _parse_ints(s: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise BenchError(f"--{what} must be comma-separated integers, got {s!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise BenchError(f"--{what} needs integers >= 1, got {s!r}")
    return sorted(set(vals))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns ``{"rows": [...], "files": {...}, "config": {...}}``."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = "quick" if args.quick else "full" if args.full else "default"
    budgets = _parse_ints(args.nfe, "nfe") if args.nfe else list(
        {"quick": QUICK_NFE, "full": FULL_NFE, "default": DEFAULT_NFE}[preset])
    n = args.n if args.n is not None else (QUICK_N if args.quick else DEFAULT_N)
    if n < 2:
        raise BenchError(f"--n must be >= 2, got {n}")
    n_trained = args.n_trained if args.n_trained is not None else (QUICK_TRAINED_N if args.quick else TRAINED_N)
    if n_trained < 2:
        raise BenchError(f"--n-trained must be >= 2, got {n_trained}")
    if args.nfe_trained:
        budgets_trained = _parse_ints(args.nfe_trained, "nfe-trained")
    elif args.nfe:
        budgets_trained = budgets
    else:
        presets = {"quick": QUICK_TRAINED_NFE, "full": TRAINED_NFE, "default": DEFAULT_TRAINED_NFE}
        budgets_trained = list(presets[preset])
    if args.solvers is None and args.quick:
        specs = [s for s in QUICK_SOLVERS if s in SOLVERS] + list(QUICK_PEERS)
    elif args.solvers is None and preset == "default" and args.sde == "flow":
        specs = [s for s in DEFAULT_SOLVERS if ":" not in s] + list(FLOW_PEERS)
    elif args.solvers in (None, "all") and args.sde == "flow":
        specs = default_solver_names() + list(FLOW_PEERS)
    elif args.solvers is None and preset == "default":
        specs = list(DEFAULT_SOLVERS)
    elif args.solvers in (None, "all"):
        specs = default_solver_names() + list(QUICK_PEERS if args.quick else FULL_PEERS)
    elif args.solvers == "ours":
        specs = default_solver_names()
    else:
        specs = [s for s in _split_specs(args.solvers) if s]
    solver_specs = check_solver_names(specs)
    if args.solvers is None:
        subset = {"quick": QUICK_TRAINED_SOLVERS, "full": TRAINED_SOLVERS, "default": DEFAULT_TRAINED_SOLVERS}[preset]
        trained_specs = check_solver_names([s for s in subset if s.split("[")[0] in SOLVERS or ":" in s])
    else:
        trained_specs = solver_specs
    try:
        torch.empty(1, device=args.device)
    except Exception as e:  # noqa: BLE001
        raise BenchError(f"--device {args.device!r} is not usable here ({e})") from None
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    if not models:
        raise BenchError("--model is empty")
    out = prepare_out_dir(args.out, NAME)
    sde_given = any(a == "--sde" or a.startswith("--sde=") for a in (argv if argv is not None else sys.argv[1:]))
    sde = SDES[args.sde]()

    problems: list[Problem] = []
    skipped_models: list[dict[str, str]] = []
    for m in models:
        if m == "analytic":
            problems.append(analytic_problem(sde, n, args.seed))
            continue
        try:
            problems.append(on_device(trained_problem(m, n_trained, args.seed, sde if sde_given else None),
                                      args.device))
        except BenchError:
            raise
        except Exception as e:  # noqa: BLE001 - the bundled model is optional; anything else is the user's error
            reason = f"{type(e).__name__}: {e}"
            if m != "bundled":
                raise BenchError(f"cannot load --model {m!r} ({reason}); built-in models: "
                                 f"{', '.join(BUILTIN_MODELS)}, or a path / Hub id scoresolve.io.load accepts") from e
            skipped_models.append({"model": m, "reason": f"not available in this version ({reason})"})
            print(f"note: skipping model {m!r}: {reason}", file=sys.stderr)

    all_runs: list[tuple[Problem, dict[str, Any]]] = []
    rows: list[dict[str, Any]] = []
    peer_skips: list[dict[str, Any]] = []
    for p in problems:
        trained = p.name != "analytic"
        runs, skipped = plan_runs(p, trained_specs if trained else solver_specs,
                                  budgets_trained if trained else budgets, args.quick)
        all_runs += [(p, r) for r in runs]
        rows += skipped
        peer_skips += [s for s in skipped if s.get("budget") is None]
    for s in {s["solver"]: s for s in peer_skips}.values():
        print(f"note: skipping {s['solver']}: {s['skipped']}", file=sys.stderr)

    limit = args.time_limit if args.time_limit is not None else (QUICK_TIME_LIMIT if args.quick else DEFAULT_TIME_LIMIT)
    too_slow: dict[tuple[str, str], float] = {}
    notes = [_KDIFF_NOTE] if _KDIFF_NOTE else []
    if any("calibrate=False" in s for s, _ in solver_specs + trained_specs):
        notes.append("auto runs here on its uncalibrated grid (calibrate=False): its per-model grid calibration "
                     "costs minutes on a CPU; --full runs it calibrated (docs/benchmarks.md)")
        print(f"note: {notes[-1]}", file=sys.stderr)
    bar = Progress(len(all_runs), NAME, unit="run")
    for p, r in all_runs:
        key = (p.name, r["solver"])
        bar.update(0, run=f"{p.name} {r['solver']} @ {r.get('setting') or r.get('budget')}")
        if key in too_slow:
            rows.append({k: v for k, v in r.items() if k not in ("options", "kind")} | {
                "skipped": f"skipped: a smaller budget took {too_slow[key]:.0f} s > --time-limit {limit:g} s"})
            bar.update(1)
            continue
        row = execute(p, r, args.seed, args.device)
        rows.append(row)
        if row.get("setting") is None:
            row["setting"] = row.get("budget")
        if (row.get("seconds") or 0) > limit:
            too_slow[key] = row["seconds"]
        (bar.write if bar.active else print)(_row_line(p, row))
        bar.update(1)
    bar.close()
    argv_list = list(argv) if argv is not None else sys.argv[1:]
    config = {
        "command": "python benchmarks/nfe_vs_fid.py " + " ".join(argv_list),
        "models": models, "sde": args.sde, "solvers": [s for s, _ in solver_specs], "nfe_budgets": budgets,
        "n": n, "n_trained": n_trained, "nfe_budgets_trained": budgets_trained,
        "solvers_trained": [s for s, _ in trained_specs],
        "seed": args.seed, "device": args.device, "quick": args.quick, "preset": preset, "time_limit_s": limit,
        "versions": versions(), "machine": machine_info(args.device),
        "notes": notes,
    }
    files = report(problems, rows, skipped_models, peer_skips, config, out, plot=not args.no_plot)
    print((out / "results.md").read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(f) for f in files.values()), file=sys.stderr)
    for k, f in files.items():
        if k.startswith("plot_"):
            print(f"plot ({k[5:]}): {f}")
    return {"rows": rows, "files": files, "config": config, "references": {p.name: p.reference for p in problems}}


def _split_specs(s: str) -> list[str]:
    """Split on commas outside brackets: ``pc[snr=0.1,corrector=none],ode`` → two specs."""
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


if __name__ == "__main__":
    sys.exit(run_cli(main))
