"""Fixed-seed float64 outputs of every registered solver on analytic mixtures, to check a refactor.

Runs each registered solver (and every predictor x corrector of ``pc``, every grid, ``auto`` with its
calibration, ``calibrate_grid`` and ``gits_grid`` with small budgets) from a fixed ``x_T`` with fixed
per-sample seeds, and saves the outputs; ``--compare`` reruns and reports the largest difference per
entry (an entry that differs by more than ``--tol`` is a failure).

    python benchmarks/snapshot_outputs.py --save /tmp/snap.pt       # before a change
    python benchmarks/snapshot_outputs.py --compare /tmp/snap.pt    # after it: identical to 1e-12
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
import warnings
from typing import Any

import torch

import scoresolve as ss
from scoresolve import analytic
from scoresolve.registry import CORRECTORS, PREDICTORS, SOLVERS

B = 6
SEEDS = list(range(100, 100 + B))


def _problems() -> dict[str, tuple[Any, Any]]:
    mix = analytic.anisotropic(dim=3, n_components=3, seed=1)
    out = {}
    for sname, sde in (("ve", ss.VESDE()), ("vp", ss.VPSDE())):
        out[f"aniso3_{sname}"] = (mix.score_model(sde), sde)
    return out


def _x_T(sde: Any, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(B, dim, generator=g, dtype=torch.float64) * sde.prior_std


NEW_API = "nfe" in inspect.signature(ss.sample).parameters


def _budget_kwargs(budget: int, **opts: Any) -> dict[str, Any]:
    """The evaluation budget of a budgeted solver, in whatever words ``sample`` takes for it."""
    if NEW_API:
        if "last_step" in opts:
            opts["final"] = opts.pop("last_step")
        if opts.pop("final_variable", True) is False and opts.get("final") == "zero":
            raise ValueError("ipndm's final_variable=False (equal-step weights onto sigma = 0) was removed")
        return {"nfe": budget, **opts}
    return {"steps": budget, **opts}


def _run(model: Any, sde: Any, solver: str, **kw: Any) -> torch.Tensor:
    x_T = _x_T(sde, model.sample_shape[0])
    seeds = SEEDS if (solver in ("pc", "sde_dpmpp_2m", "sde_dpmpp_3m", "gotta_go_fast", "sde", *KD_STOCHASTIC)
                      or kw.get("s_churn")) else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = ss.sample(model, sde, solver=solver, x_T=x_T, seeds=seeds, return_result=True, progress=False, **kw)
    return torch.cat([r.samples.reshape(-1), torch.tensor([float(r.nfe)], dtype=torch.float64)])


def _adaptive(model: Any, sde: Any, solver: str, **kw: Any) -> torch.Tensor:
    """An adaptive solver from a generator (no seeds, so the batch norms are allowed), with its per-sample counts."""
    x_T = _x_T(sde, model.sample_shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = ss.sample(model, sde, solver=solver, x_T=x_T, generator=torch.Generator().manual_seed(3),
                      return_result=True, progress=False, **kw)
    per = r.info.get("nfe_per_sample")
    extra = [] if per is None else [torch.as_tensor(per, dtype=torch.float64).reshape(-1)]
    return torch.cat([r.samples.reshape(-1), torch.tensor([float(r.nfe)], dtype=torch.float64), *extra])


def _likelihood(model: Any, sde: Any) -> torch.Tensor:
    x = _x_T(sde, model.sample_shape[0]) / sde.prior_std
    r = ss.likelihood(model, sde, x, method="bosh3_per_sample", rtol=1e-4, atol=1e-4, trace="exact")
    return torch.cat([r.nll.reshape(-1), torch.as_tensor(r.nfe_per_sample, dtype=torch.float64).reshape(-1)])


def cases() -> dict[str, Any]:
    """``{key: thunk}``: one entry per configuration."""
    budgeted = {
        "dpm_solver": [{}, {"order": 1}, {"order": 3}, {"order": 3, "variant": "published"},
                       {"method": "singlestep"}, {"order": 3, "method": "singlestep"}],
        "dpmpp_2m": [{}],
        "dpmpp_3m": [{}, {"variant": "published"}],
        "unipc": [{}, {"variant": "bh1"}, {"order": 3}, {"corrector": False}, {"lower_order_final": False}],
        "ipndm": [{}, {"variable": False}, {"variable": False, "final_variable": False}, {"order": 2}],
        "heun_edm": [{}, {"s_churn": 10.0}],
    }
    out: dict[str, Any] = {}
    for pname, (model, sde) in _problems().items():
        def add(key: str, fn: Any, pname: str = pname) -> None:
            out[f"{pname}/{key}"] = fn

        for name, variants in budgeted.items():
            for opts in variants:
                for last in ("none", "zero", "tweedie"):
                    if name == "heun_edm" and last == "tweedie":
                        continue
                    for k in (3, 4, 8):
                        o = dict(opts, last_step=last)
                        add(f"{name}/{sorted(opts.items())}/{last}/{k}",
                            lambda m=model, s=sde, n=name, o=o, k=k: _run(m, s, n, **_budget_kwargs(k, **o)))
        # analytic Gaussian first interval
        for name in ("ipndm", "dpm_solver", "dpmpp_2m", "unipc"):
            for last in ("none", "zero", "tweedie"):
                gp = (torch.zeros(3, dtype=torch.float64), torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64))
                add(f"{name}/gauss/{last}/5", lambda m=model, s=sde, n=name, last=last, gp=gp: _run(
                    m, s, n, **_budget_kwargs(5, last_step=last, gaussian_prior=gp)))
        # fixed-grid ODE solvers, every grid, PC combinations, stochastic solvers
        for name in ("ode_euler", "ode_heun", "ode_rk4"):
            for grid in ("uniform", "quadratic", "log_snr", "karras"):
                add(f"{name}/{grid}/6", lambda m=model, s=sde, n=name, g=grid: _run(m, s, n, steps=6, grid=g))
            add(f"{name}/denoise_off/6", lambda m=model, s=sde, n=name: _run(m, s, n, steps=6, denoise=False))
        for pred in PREDICTORS.names():
            for corr in CORRECTORS.names():
                add(f"pc/{pred}/{corr}/7", lambda m=model, s=sde, p=pred, c=corr: _run(
                    m, s, "pc", steps=7, predictor=p, corrector=c))
        add("pc/default/20", lambda m=model, s=sde: _run(m, s, "pc", steps=20))
        for name in ("sde_dpmpp_2m", "sde_dpmpp_3m"):
            for fin in ("denoise", "sigma_min", "zero"):
                add(f"{name}/{fin}/8", lambda m=model, s=sde, n=name, f=fin: _run(m, s, n, **_sde_final(f)))
        # k-diffusion's family on its Karras grid (steps = grid intervals in every version)
        for name in ("euler", "heun", "dpm_2", "lms", *KD_STOCHASTIC):
            add(f"{name}/6", lambda m=model, s=sde, n=name: _run(m, s, n, steps=6))
        for name in ("euler", "heun", "dpm_2"):
            add(f"{name}/churn/6", lambda m=model, s=sde, n=name: _run(m, s, n, steps=6, s_churn=2.0))
        add("euler_ancestral/eta0/6", lambda m=model, s=sde: _run(m, s, "euler_ancestral", steps=6, eta=0.0))
        add("lms/order3/6", lambda m=model, s=sde: _run(m, s, "lms", steps=6, order=3))
        add("lms/own_last_step/6", lambda m=model, s=sde: _run(
            m, s, "lms", steps=6, **({"final": "zero"} if NEW_API else {"last_step": "lms"})))
        add("sde_dpmpp_3m/published/8", lambda m=model, s=sde: _run(
            m, s, "sde_dpmpp_3m", variant="published", solver_type="heun", **_sde_final("denoise")))
        add("ode_adaptive", lambda m=model, s=sde: _run(m, s, "ode_adaptive", rtol=1e-4, atol=1e-4))
        add("ode_adaptive_bosh3", lambda m=model, s=sde: _run(m, s, "ode_adaptive", pair="bosh3", rtol=1e-3,
                                                             atol=1e-3))
        add("gotta_go_fast", lambda m=model, s=sde: _run(m, s, "gotta_go_fast", rtol=0.05))
        # the per-sample adaptive loop's other paths: step variable, batch norms, given first step, the paper's
        # Gotta Go Fast rule, and the likelihood's forward use of it
        for key, opts in (("t", {"variable": "t"}), ("batch_rms", {"norm": "batch_rms"}),
                          ("first_step", {"first_step": 0.05})):
            add(f"ode_adaptive/{key}", lambda m=model, s=sde, o=opts: _adaptive(m, s, "ode_adaptive", rtol=1e-4,
                                                                              atol=1e-4, **o))
        for key, opts in (("paper", {"tolerance": "state", "variable": "t", "hold_after_reject": False}),
                          ("batch_rms", {"norm": "batch_rms"}),
                          ("batch_max_t", {"norm": "batch_max", "variable": "t"})):
            add(f"gotta_go_fast/{key}", lambda m=model, s=sde, o=opts: _adaptive(m, s, "gotta_go_fast", **o))
        add("likelihood/bosh3_per_sample", lambda m=model, s=sde: _likelihood(m, s))
        add("ode", lambda m=model, s=sde: _run(m, s, "ode", rtol=1e-5, atol=1e-5))
        add("sde_torchsde", lambda m=model, s=sde: _run(m, s, "sde", steps=10))
        # auto: uncalibrated, and calibrated at small budgets (one model only, to keep the run short)
        for k in (3, 10, 30):
            add(f"auto/nocal/{k}", lambda m=model, s=sde, k=k: _run(m, s, "auto", **_budget_kwargs(k, calibrate=False)))
        if pname.endswith("vp"):
            for k in (4, 8):
                add(f"auto/cal/{k}", lambda m=model, s=sde, k=k: _run(m, s, "auto", **_budget_kwargs(k)))
            add("calibrate_grid/ipndm", lambda m=model, s=sde: _calib(m, s, "ipndm", last_step="zero"))
            add("calibrate_grid/unipc_logp", lambda m=model, s=sde: _calib(m, s, "unipc", metric="logp"))
            add("gits_grid", lambda m=model, s=sde: _gits(m, s))
            add("ipndm/calibrate/5", lambda m=model, s=sde: _run(
                m, s, "ipndm", **_budget_kwargs(5, last_step="zero", calibrate=True)))
            mom = ss.ScoreModel(model.fn, sde=sde, sample_shape=model.sample_shape,
                                data_moments=(torch.zeros(3), torch.ones(3)))
            add("auto/cal_moments/5", lambda m=mom, s=sde: _run(m, s, "auto", **_budget_kwargs(5)))
            add("auto/nocal_moments/5", lambda m=mom, s=sde: _run(m, s, "auto", **_budget_kwargs(5, calibrate=False)))
    return out


#: the stochastic samplers merged from k-diffusion (seeded per sample)
KD_STOCHASTIC = ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "lcm")


def _sde_final(final: str) -> dict[str, Any]:
    """sde_dpmpp's old ``final=`` option, in the current words (``"zero"`` was removed)."""
    if not NEW_API:
        return {"steps": 8, "final": final}
    if final == "zero":
        raise ValueError("sde_dpmpp's final='zero' was removed")
    return {"nfe": 8, "final": "tweedie"} if final == "denoise" else {"steps": 8, "final": "none"}


def _calib(model: Any, sde: Any, name: str, metric: str = "both", **opts: Any) -> torch.Tensor:
    from scoresolve import calibrate as cal

    fn = getattr(cal, "calibrate", None) or cal.calibrate_grid
    kw: dict[str, Any] = {}
    if NEW_API:
        kw["final"] = opts.pop("last_step", "none")
    solver = SOLVERS.get(name)(**opts)
    cg = fn(model, sde, solver, 5, n_samples=16, teacher_steps=40, max_evals=30, metric=metric, **kw)
    grid = cg.grid if hasattr(cg, "grid") else cg
    return torch.cat([grid.reshape(-1), torch.tensor([float(cg.nfe), cg.rmse])])


def _gits(model: Any, sde: Any) -> torch.Tensor:
    from scoresolve import calibrate as cal

    gits = getattr(cal, "gits_grid", None)
    if gits is None:
        from scoresolve.gits import gits_grid as gits
    grid, info = gits(model, sde, 4, n_samples=16, fine=20)
    return torch.cat([grid.reshape(-1), torch.tensor([float(info["nfe"]), info["cost"]])])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--save", help="write the outputs to this .pt file")
    g.add_argument("--compare", help="compare with the outputs saved in this .pt file")
    ap.add_argument("--tol", type=float, default=1e-12)
    ap.add_argument("-k", default="", help="only keys containing this string")
    args = ap.parse_args()
    torch.set_default_dtype(torch.float64)
    results: dict[str, torch.Tensor] = {}
    errors: dict[str, str] = {}
    start = time.perf_counter()
    for key, fn in cases().items():
        if args.k not in key:
            continue
        try:
            results[key] = fn().detach().cpu().to(torch.float64)
        except Exception as e:  # recorded: a configuration that raised must raise the same way afterwards
            errors[key] = f"{type(e).__name__}: {e}"
    print(f"{len(results)} outputs, {len(errors)} errors, {time.perf_counter() - start:.1f} s")
    if args.save:
        torch.save({"results": results, "errors": errors}, args.save)
        return 0
    ref = torch.load(args.compare)
    bad = 0
    for key in sorted(set(ref["results"]) | set(ref["errors"]) | set(results) | set(errors)):
        if args.k not in key:
            continue
        a, b = ref["results"].get(key), results.get(key)
        if a is None or b is None:
            was, now = ref["errors"].get(key, "ok"), errors.get(key, "ok")
            if (a is None) != (b is None):
                print(f"DIFF {key}: before {was!r}, after {now!r}")
                bad += 1
            continue
        d = float((a - b).abs().max()) if a.shape == b.shape else float("inf")
        scale = max(float(a.abs().max()), 1.0)
        if not d <= args.tol * scale:
            print(f"DIFF {key}: max |diff| {d:.3g} (shape {tuple(a.shape)} vs {tuple(b.shape)})")
            bad += 1
    print(f"{bad} entries differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
