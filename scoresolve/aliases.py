"""The ecosystem's sampler names, as data: k-diffusion's ``sample_*`` names, diffusers' scheduler classes and
the names of the Stable Diffusion web UIs ("DPM++ 2M Karras", "Euler a"), each mapped to a registered solver,
its options and, where the name implies one, a time grid.

Lookups ignore case, spaces and punctuation (``"DPM++ 2M Karras"``, ``"dpmpp_2m_karras"`` and
``"DPM++-2M-karras"`` are the same name). :func:`scoresolve.sample`, the command line and
``scoresolve.adapters.kdiffusion.sample_<name>`` accept every name here; options given by the user win over
the alias's (``ss.sample(model, solver="ddim", eta=0.5)`` is DDIM with η = 0.5). A new alias is one row
of :data:`ALIASES`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from .registry import SOLVERS, UnknownNameError

__all__ = [
    "Alias", "ALIASES", "KDIFFUSION_SAMPLERS", "normalize", "lookup", "resolve", "describe", "markdown",
    "is_stochastic",
]


@dataclass(frozen=True)
class Alias:
    """One familiar name: the registered ``solver`` it runs, with ``options`` and ``grid`` (``None``: the
    solver's default grid). ``source`` says where the name comes from; ``note`` any difference."""

    name: str
    solver: str
    options: dict[str, Any] = field(default_factory=dict)
    grid: str | None = None
    source: str = "k-diffusion"
    note: str = ""


_KD, _DF, _UI = "k-diffusion", "diffusers", "web UIs (AUTOMATIC1111, ComfyUI)"
_DDIM = {"eta": 0.0}
_3M = {"variant": "published", "solver_type": "heun"}
_FAST = {"order": 3, "method": "singlestep"}

#: every k-diffusion ``sample_*`` sampler, by its name without ``sample_``
KDIFFUSION_SAMPLERS = (
    "euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive",
    "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde",
)  # fmt: skip

ALIASES: tuple[Alias, ...] = (
    # k-diffusion's names that are not registered solver names (the others are registered as they are)
    Alias("dpmpp_2m_sde", "sde_dpmpp_2m"),
    Alias("dpmpp_3m_sde", "sde_dpmpp_3m", _3M, note="k-diffusion's 3M weights; sde_dpmpp_3m alone is the exact ones"),
    Alias("dpm_fast", "dpm_solver", _FAST, "log_snr", note="third-order singlestep DPM-Solver on a log-SNR grid"),
    Alias("dpm_adaptive", "ode_adaptive", note="adaptive dopri5 per sample instead of DPM-Solver-23 with one PID step"),
    # short and older forms
    Alias("euler_a", "euler_ancestral"),
    Alias("k_euler", "euler"),
    Alias("k_euler_a", "euler_ancestral"),
    Alias("k_heun", "heun"),
    Alias("k_lms", "lms"),
    Alias("k_dpm_2", "dpm_2"),
    Alias("k_dpm_2_a", "dpm_2_ancestral"),
    Alias("ddim", "euler_ancestral", _DDIM, "uniform", "Song et al. 2021", "DDIM with eta= (default 0)"),
    Alias("ddpm", "euler_ancestral", {"eta": 1.0}, "uniform", "Ho et al. 2020", "DDPM's ancestral step"),
    Alias("dpm_solver_pp", "dpmpp_2m", source=_DF),
    Alias("LCMScheduler", "lcm", source=_DF),
    # the web UIs' menu
    Alias("Euler a", "euler_ancestral", source=_UI),
    Alias("DPM2", "dpm_2", source=_UI),
    Alias("DPM2 a", "dpm_2_ancestral", source=_UI),
    Alias("DPM++ 2S a", "dpmpp_2s_ancestral", source=_UI),
    Alias("DPM++ 2M", "dpmpp_2m", source=_UI),
    Alias("DPM++ SDE", "dpmpp_sde", source=_UI),
    Alias("DPM++ 2M SDE", "sde_dpmpp_2m", source=_UI),
    Alias("DPM++ 3M SDE", "sde_dpmpp_3m", _3M, source=_UI),
    Alias("DPM fast", "dpm_solver", _FAST, "log_snr", source=_UI),
    Alias("DPM adaptive", "ode_adaptive", source=_UI),
    Alias("PLMS", "ipndm", source=_UI, note="closest: iPNDM (Zhang & Chen 2022), not PLMS's exact coefficients"),
    Alias("Euler Karras", "euler", grid="karras", source=_UI),
    Alias("Euler a Karras", "euler_ancestral", grid="karras", source=_UI),
    Alias("Heun Karras", "heun", grid="karras", source=_UI),
    Alias("LMS Karras", "lms", grid="karras", source=_UI),
    Alias("DPM2 Karras", "dpm_2", grid="karras", source=_UI),
    Alias("DPM2 a Karras", "dpm_2_ancestral", grid="karras", source=_UI),
    Alias("DPM++ 2S a Karras", "dpmpp_2s_ancestral", grid="karras", source=_UI),
    Alias("DPM++ 2M Karras", "dpmpp_2m", grid="karras", source=_UI),
    Alias("DPM++ SDE Karras", "dpmpp_sde", grid="karras", source=_UI),
    Alias("DPM++ 2M SDE Karras", "sde_dpmpp_2m", grid="karras", source=_UI),
    Alias("DPM++ 3M SDE Karras", "sde_dpmpp_3m", _3M, "karras", source=_UI),
    Alias("DPM++ 2M SDE Exponential", "sde_dpmpp_2m", grid="log_snr", source=_UI),
    Alias("DPM++ 3M SDE Exponential", "sde_dpmpp_3m", _3M, "log_snr", source=_UI),
    # diffusers' scheduler classes
    Alias("DDIMScheduler", "euler_ancestral", _DDIM, "uniform", _DF, "eta= as in DDIMScheduler.step(eta=)"),
    Alias("DDPMScheduler", "euler_ancestral", {"eta": 1.0}, "uniform", _DF),
    Alias("EulerDiscreteScheduler", "euler", source=_DF),
    Alias("EulerAncestralDiscreteScheduler", "euler_ancestral", source=_DF),
    Alias("HeunDiscreteScheduler", "heun", source=_DF),
    Alias("KDPM2DiscreteScheduler", "dpm_2", source=_DF),
    Alias("KDPM2AncestralDiscreteScheduler", "dpm_2_ancestral", source=_DF),
    Alias("LMSDiscreteScheduler", "lms", source=_DF),
    Alias("DPMSolverMultistepScheduler", "dpmpp_2m", source=_DF),
    Alias("DPMSolverSDEScheduler", "dpmpp_sde", source=_DF),
    Alias("UniPCMultistepScheduler", "unipc", source=_DF),
    Alias("PNDMScheduler", "ipndm", source=_DF, note="closest: iPNDM, not PNDM's exact coefficients"),
    Alias("EDMEulerScheduler", "euler", grid="karras", source=_DF),
    Alias("EDMDPMSolverMultistepScheduler", "dpmpp_2m", grid="karras", source=_DF),
)


def normalize(name: str) -> str:
    """The lookup key of a name: lower case, ``++`` → ``pp``, every run of other characters → ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower().replace("++", "pp")).strip("_")


_BY_KEY: dict[str, Alias] = {}
for _a in ALIASES:  # two spellings of one name must mean the same run
    _k = normalize(_a.name)
    _same = _BY_KEY.get(_k, Alias(_k, _k) if _k in SOLVERS else _a)
    if (_same.solver, _same.options, _same.grid) != (_a.solver, _a.options, _a.grid):
        raise ValueError(f"alias {_a.name!r} means {_a.solver!r} but {_k!r} means {_same.solver!r}")
    if _k not in SOLVERS:
        _BY_KEY.setdefault(_k, _a)


def lookup(name: str) -> Alias | None:
    """The alias called ``name`` (any spelling, see :func:`normalize`), or ``None``."""
    return _BY_KEY.get(normalize(name))


def is_stochastic(name: str) -> bool:
    """Whether the solver or alias ``name`` injects noise with its default options (``ddim`` does not)."""
    alias = lookup(name) if name not in SOLVERS else None
    cls = SOLVERS.get(alias.solver if alias else name)
    if alias is not None and "eta" in alias.options:
        return alias.options["eta"] > 0
    return bool(getattr(cls, "stochastic", False))


_STOCHASTIC_WORDS = re.compile(r"sde|anc|ddpm|stoch|langevin|noise|(^|_)(a|pc)(_|$)")


def _closest(name: str) -> str | None:
    """The closest solver or alias name; for a name that reads stochastic ("_a", "ancestral", "sde", ...), the
    closest stochastic one (so "euler_anc" never suggests a deterministic Euler)."""
    key = normalize(name)
    pool = {n: n for n in SOLVERS.names()} | {k: a.name for k, a in _BY_KEY.items()}
    if _STOCHASTIC_WORDS.search(key):
        pool = {k: shown for k, shown in pool.items() if is_stochastic(shown)}
    close = difflib.get_close_matches(key, list(pool), n=1, cutoff=0.5)
    return pool[close[0]] if close else None


def resolve(name: str, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any], str | None]:
    """``(registered solver, options, grid or None)`` for a registered solver or alias ``name``; the caller's
    ``options`` win over the alias's.

    Raises:
        UnknownNameError: naming the closest solver or alias *of the same kind* (deterministic/stochastic).
    """
    options = dict(options or {})
    if name in SOLVERS:
        return name, options, None
    key = normalize(name)
    if key in SOLVERS:
        return key, options, None
    alias = _BY_KEY.get(key)
    if alias is not None:
        return alias.solver, {**alias.options, **options}, alias.grid
    close = _closest(name)
    hint = f" Did you mean {close!r}?" if close else ""
    raise UnknownNameError(
        f"unknown solver {name!r} (argument solver=).{hint} Registered solvers: {', '.join(SOLVERS.names())}; "
        "aliases (k-diffusion, diffusers, web-UI names): ss.solvers() lists them"
    )


def describe() -> dict[str, str]:
    """``{alias: one line}`` for every alias, in table order."""
    out = {}
    for a in ALIASES:
        opts = ", ".join(f"{k}={v!r}" for k, v in a.options.items())
        grid = f", grid={a.grid!r}" if a.grid else ""
        extra = f"; {a.note}" if a.note else ""
        out[a.name] = f"alias of {a.solver}" + (f"({opts})" if opts else "") + f"{grid} [{a.source}]{extra}"
    return out


def markdown() -> str:
    """The alias table as Markdown (``docs/solvers.md`` holds it; a test keeps the two in sync)."""
    lines = ["| name | runs | options | grid | from | note |", "|---|---|---|---|---|---|"]
    for a in ALIASES:
        opts = ", ".join(f"{k}={v!r}" for k, v in a.options.items()) or "—"
        cells = [f"`{a.name}`", f"`{a.solver}`", opts, a.grid or "solver's", a.source, a.note or ""]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
