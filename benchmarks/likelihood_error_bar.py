"""How tight the budget method's error bar is: per sample |true error| against ``error_bpd``.

Mixtures (exact score, exact trace, exact p_T: solver error only; 64 samples, seed 3; the log-SNR path,
``precondition="none"``, that a network gets) and the bundled
networks (held-out digits, one common Rademacher probe, against dopri5 rtol=atol=1e-6). For each K prints
the bracket rate (|error| <= estimate) and mean estimate / mean |error|, for the unscaled gap sum ("old":
sum |gap| + |quadrature gap|) and the shipped estimate (``GAP_SCALE / (K-1)`` times the gap sum).

    python benchmarks/likelihood_error_bar.py [--n-digits 48] [--n-mnist 16] [--mnist PATH]  (--n-digits 0: no nets)
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings

import torch

import scoresolve as ss
from scoresolve import analytic

LK = sys.modules["scoresolve.likelihood"]
KS = [8, 12, 16, 20, 30, 40]
_last: dict = {}


def _capture(*a, **k):
    _last["sol"] = sol = _orig(*a, **k)
    return sol


_orig, LK.budget_logp = LK.budget_logp, _capture


def report(name: str, k: int, err: torch.Tensor, r, d: int) -> None:
    sol, f = _last["sol"], 1 / (d * math.log(2))
    old = (sol.jumps.abs().sum(0) + sol.quad_gap.abs()) * f
    a = err.abs()
    cells = [f"{float((a <= e).float().mean()):.3f} | {float(e.mean() / a.mean()):.1f} | {float(e.mean()):.3g}"
             for e in (old, r.error_bpd)]
    print(f"| {name} | {k} | {float(a.mean()):.3g} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-digits", type=int, default=48)
    ap.add_argument("--n-mnist", type=int, default=16)
    ap.add_argument("--mnist", default=None, help="MNIST t10k images (idx, .gz) or their folder")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    print("| problem | K | mean abs err | old bracket | old est/err | old mean est | bracket | est/err | mean est |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ve = ss.VESDE(sigma_min=0.01, sigma_max=50.0)
    sdes = {"vp": ss.VPSDE(), "ve": ve, "subvp": ss.SubVPSDE(), "flow": ss.RectifiedFlow()}
    probs = [(f"aniso8_{n}", analytic.anisotropic(8, n_components=3, min_var=0.02), s, {}) for n, s in sdes.items()]
    probs += [("aniso16_ve", analytic.anisotropic(16), ve, {"eps": 1e-5}),
              ("digits_vp", analytic.digits(), ss.VPSDE(), {"eps": 1e-5})]
    for name, mix, sde, kw in probs:
        x = mix.sample(64, torch.Generator().manual_seed(3), dtype=torch.float64)
        model = mix.velocity_model(sde) if isinstance(sde, ss.RectifiedFlow) else mix.score_model(sde)
        d = x[0].numel()
        for k in KS:
            prior = lambda z, m=mix, s=sde: m.log_prob(z, s.T, s)  # noqa: E731
            # the log-SNR path (a network's; an exact score gets the local frame: benchmarks/likelihood_local.py)
            r = LK.likelihood(model, sde, x, steps=k, trace="exact", precondition="none", prior_logp=prior, **kw)
            report(name, k, (mix.log_prob(x, r.eps, sde) - r.logp) / (d * math.log(2)), r, d)
    import scoresolve.io as sio
    from scoresolve.train.data import digits, mnist

    nets = [("digits net", args.n_digits)] * (args.n_digits > 0) + ([("mnist net", args.n_mnist)] if args.mnist else [])
    for name, n in nets:
        if name == "digits net":
            x = digits("test")[:n].to(torch.float32)
            x = x + torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) / 8
            model, opts = sio.load("digits"), {"data_range": None}
        else:
            x = mnist(args.mnist, "test")[:n].to(torch.float32)
            model, opts = sio.load("mnist"), {"dequantize": "uniform"}

        def run(**kw):
            g = torch.Generator().manual_seed(1000)
            return LK.likelihood(model, x, trace="hutchinson", probes=1, generator=g, **opts, **kw)  # noqa: B023

        ref = run(rtol=1e-6, atol=1e-6)
        for k in KS + [60, 80]:
            r = run(steps=k)
            report(name, k, r.bpd - ref.bpd, r, x[0].numel())


if __name__ == "__main__":
    main()
