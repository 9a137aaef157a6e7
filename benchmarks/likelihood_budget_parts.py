"""Where the budget method's error comes from on digits x VP (exact score, exact trace, exact p_T).

Re-runs the budget integrator (``scoresolve.likelihood.budget``) with one part changed at a time and prints
the mean |error| in bits/dim over 64 samples (seed 1) against the exact ``log p_eps``:

- ``shipped``: the default (exponential Adams predictor order 3 / corrector order 4, PEC, 4-point quadrature);
- ``exact path``: x at the nodes taken from a 16x finer run (the quadrature of m is the only error left);
- ``PECE``: a second evaluation at the corrected point (2K - 1 evaluations), for eps_hat and m, or eps_hat only;
- predictor / corrector orders, the quadrature's points, a Hamming-type predictor modifier, and the warp's
  centre and width.

    python benchmarks/likelihood_budget_parts.py [--ks 12,20] [--warp]
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings

import numpy as np
import torch

import scoresolve as ss
from scoresolve import analytic
from scoresolve.likelihood import budget as B
from scoresolve.solvers.coefficients import weighted_lagrange_weights

LK = sys.modules["scoresolve.likelihood"]
OPT: dict = {}


def variant_logp(fld, sde, x, k, eps, draw=None, first=None):
    """``budget_logp`` with the parts named in ``OPT`` changed (no error estimate)."""
    b, d = x.shape[0], x[0].numel()
    lam_ends = [float(sde.log_snr(torch.tensor([t], dtype=torch.float64))) for t in (eps, sde.T)]
    v_l, lam_l = B.log_snr_nodes(*lam_ends, k)
    ts = sde.t_from_log_snr(torch.tensor(lam_l, dtype=torch.float64))
    ts[0], ts[-1] = eps, sde.T
    t_l, alpha, sig = ts.tolist(), sde.alpha(ts).tolist(), sde.marginal_std(ts).tolist()

    def evaluate(i, xi):
        s, tr = fld.traces(xi, torch.full((b,), t_l[i], dtype=x.dtype))
        return -sig[i] * s, -(sig[i] ** 2) * tr

    def advance(n, xn, nodes):
        w = weighted_lagrange_weights([v_l[j] for j in nodes], v_l[n], v_l[n + 1],
                                      lambda v: np.exp(lam_l[n] - B._lam(v)) * B._dlam(v))
        inc = sum(wj * eps_hats[j] for wj, j in zip(w, nodes, strict=True))
        return (alpha[n + 1] / alpha[n]) * (xn - sig[n] * inc)

    e0, m0 = evaluate(0, x)
    eps_hats, ms, xn, gap = [e0], [m0], x, None
    path, record = OPT.get("path"), OPT.get("record")
    for n in range(k - 1):
        xp = xp_plain = advance(n, xn, list(range(n, n - min(OPT["p"], n + 1), -1)))
        if OPT.get("modifier") and gap is not None:  # the last step's gap of the unmodified predictor
            xp = xp + OPT["modifier"] * gap
        xp = xp if path is None else path[n + 1]
        e1, m1 = evaluate(n + 1, xp)
        eps_hats.append(e1)
        ms.append(m1)
        xc = advance(n, xn, list(range(n + 1, n + 1 - min(OPT["c"], n + 2), -1)))
        xc = xc if path is None else path[n + 1]
        gap = xc - xp_plain
        if OPT.get("pece"):
            e2, m2 = evaluate(n + 1, xc)
            eps_hats[-1], ms[-1] = e2, (m2 if OPT["pece"] == "both" else m1)
        xn = xc
        if record is not None:
            record.append(xn)
    delta = d * math.log(alpha[-1] / alpha[0]) + B.quadrature(v_l, torch.stack(ms), OPT["q"])
    return B.BudgetSolution(z=xn, delta=delta, error=torch.zeros(b, dtype=x.dtype), lam=lam_l)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ks", default="12,20")
    ap.add_argument("--warp", action="store_true", help="also sweep the warp's centre and width at each K")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    LK.budget_logp = variant_logp
    mix, sde = analytic.digits(), ss.VPSDE()
    model = mix.score_model(sde)
    x = mix.sample(64, torch.Generator().manual_seed(1), dtype=torch.float64)

    def err(k, **o):
        OPT.clear()
        OPT.update({"p": 3, "c": 4, "q": 4, "center": 2.0, "width": 5.0, **o})
        B.WARP_CENTER, B.WARP_WIDTH = OPT["center"], OPT["width"]
        r = LK.likelihood(model, sde, x, steps=k, precondition="none", prior_logp=lambda z: mix.log_prob(z, sde.T, sde))
        return float(((r.logp - mix.log_prob(x, r.eps, sde)).abs() / (64 * math.log(2))).mean())

    print("| K | part changed | evaluations | mean abs error (bits/dim) |\n|---:|---|---:|---:|")
    for k in [int(s) for s in args.ks.split(",")]:
        fine = [x]
        err((k - 1) * 16 + 1, record=fine)
        rows = [("shipped", k, {}), ("exact path (quadrature error only)", k, {"path": fine[::16]}),
                ("exact path, 6-point quadrature", k, {"path": fine[::16], "q": 6}),
                ("PECE, eps_hat and m at the corrected point", 2 * k - 1, {"pece": "both"}),
                ("PECE, eps_hat only", 2 * k - 1, {"pece": "eps"}),
                ("predictor order 4, corrector 4", k, {"p": 4, "c": 4}),
                ("predictor order 4, corrector 5", k, {"p": 4, "c": 5}),
                ("predictor order 3, corrector 3", k, {"c": 3}),
                ("predictor modifier + 0.5 x last gap", k, {"modifier": 0.5}),
                ("predictor modifier + 1.0 x last gap", k, {"modifier": 1.0}),
                ("5-point quadrature", k, {"q": 5})]
        if args.warp:
            rows += [(f"warp c = {c}, w = {w}", k, {"center": c, "width": w})
                     for c in (0.0, 0.5, 1.0, 1.5, 2.0) for w in (1.5, 2.5, 3.5, 5.0)]
        for label, nfe, o in rows:
            print(f"| {k} | {label} | {nfe} | {err(k, **o):.3g} |", flush=True)


if __name__ == "__main__":
    main()
