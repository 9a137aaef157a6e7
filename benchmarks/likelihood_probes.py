"""The budget likelihood's Monte-Carlo error over Hutchinson probe draws: one probe fixed along the path (what
``likelihood`` does today) against a fresh probe at every node (a candidate, measured here, not the default).

The path of x does not depend on the probes, and the divergence enters the budget method only through the
quadrature of ``m = tr(-sigma^2 grad s)`` at the K nodes. A fresh Rademacher probe per node keeps that quadrature
unbiased and makes its node errors independent, so its variance is ``sum_k c_k^2 Var_k`` instead of the variance of
one quadratic form of the summed Jacobian. ``Var_k`` has a bound from the same vector-Jacobian product: for a
Rademacher ``v``, ``Var(v'Av) <= 2 ||A'v - (v'Av / D) v||^2`` in expectation (adding a multiple of the identity
leaves ``v'Av``'s variance unchanged; the bound's excess is the spread of A's diagonal). The rows give, per network
and K, the per-digit standard deviation of bits/dim over ``--repeats`` probe draws (the same digits and
dequantization), and for the fresh probes that one-probe bound against it. Each run patches ``Field.traces``, so
it measures the candidate without changing the package.

    python benchmarks/likelihood_probes.py --mnist PATH [--n 25] [--repeats 6] [--ks 20,100] [--out DIR]
    python benchmarks/likelihood_probes.py --networks digits --n 64 --repeats 8
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, prepare_out_dir, versions, write_json, write_text

import scoresolve.io as sio
from scoresolve.data.mnist import mnist
from scoresolve.likelihood import budget, likelihood
from scoresolve.likelihood.field import Field
from scoresolve.train.data import digits

COLUMNS = [("network", "network"), ("n", "digits"), ("k", "K"), ("probes", "probes"),
           ("sd_rms", "per-digit SD of bits/dim (rms)"), ("sd_median", "median SD"),
           ("se_rms", "one-probe SE bound (rms)"), ("se_over_sd", "bound / SD"),
           ("se_over_sd_p10", "bound / SD, 10th pct of digits"), ("within_2se", "draws within 2 bounds of the mean"),
           ("cpu_per_run", "CPU s per run")]


def data(name: str, n: int, path: str | None) -> tuple[Any, torch.Tensor, dict[str, Any]]:
    """(model, digits, likelihood options), as benchmarks/likelihood.py --networks takes them."""
    if name == "digits":
        x = digits("test")[:n].to(torch.float32)
        x = x + torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) / 8  # 17 levels, bins 1/8 wide
        return sio.load("digits"), x, {"data_range": None}
    if path is None:
        raise SystemExit("the mnist rows need --mnist PATH (the MNIST t10k idx file or its folder)")
    return sio.load("mnist"), mnist(path, "test")[:n].to(torch.float32), {"dequantize": "uniform"}


def rows_for(name: str, n: int, repeats: int, ks: list[int], path: str | None) -> list[dict[str, Any]]:
    model, x, opts = data(name, n, path)
    sde = model.sde
    traces = Field.traces
    run: dict[str, Any] = {}

    def patched(self: Field, xx: torch.Tensor, t: torch.Tensor, rows: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, d = xx.shape[0], xx[0].numel()
        if run["fresh"] or run["probe"] is None:
            run["probe"] = (torch.randint(0, 2, xx.shape, generator=run["gen"]) * 2 - 1).to(xx)
        v = run["probe"]
        with torch.enable_grad():
            xg = xx.detach().requires_grad_(True)
            s = self.score(xg, t)
            (jv,) = torch.autograd.grad(s, xg, grad_outputs=v)
        jv, vv = jv.reshape(b, -1), v.reshape(b, -1)
        tr = (jv * vv).sum(1)
        sig = sde.marginal_std(t.to(torch.float64))
        run["var"].append(2 * (jv - (tr / d)[:, None] * vv).pow(2).sum(1).to(torch.float64) * sig**4)
        return s.detach(), tr.detach()[:, None]

    out = []
    Field.traces = patched  # type: ignore[method-assign]
    try:
        for k in ks:
            for fresh in (False, True):
                vals, ses = [], []
                c0 = time.process_time()
                for r in range(repeats):
                    run.update(fresh=fresh, probe=None, var=[], gen=torch.Generator().manual_seed(100 + r))
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        res = likelihood(model, x, steps=k, trace="hutchinson", probes=1,
                                         generator=torch.Generator().manual_seed(5), progress=False, **opts)
                    lam = res.info["log_snr"]
                    v_nodes, _ = budget.log_snr_nodes(lam[0], lam[-1], k)
                    c = budget.quadrature(v_nodes, torch.eye(k, dtype=torch.float64)[:, None, :],
                                          budget.QUADRATURE_POINTS)[0]  # the quadrature's weight of each node
                    var = (c[:, None] ** 2 * torch.stack(run["var"])).sum(0)
                    vals.append(res.bpd.to(torch.float64))
                    ses.append(var.sqrt() / (x[0].numel() * math.log(2)))
                v, se = torch.stack(vals), torch.stack(ses)
                sd = v.std(0)
                row = {"network": name, "n": n, "k": k, "probes": "fresh per node" if fresh else "fixed along the path",
                       "sd_rms": float(sd.pow(2).mean().sqrt()), "sd_median": float(sd.median()),
                       "cpu_per_run": (time.process_time() - c0) / repeats}
                if fresh:
                    ratio = se.mean(0) / sd
                    row.update(se_rms=float(se.pow(2).mean().sqrt()),
                               se_over_sd=float(se.pow(2).mean().sqrt() / sd.pow(2).mean().sqrt()),
                               se_over_sd_p10=float(ratio.quantile(0.1)),
                               within_2se=float(((v - v.mean(0)).abs() <= 2 * se).double().mean()))
                print(markdown_table([row], COLUMNS).splitlines()[-1], flush=True)
                out.append(row)
    finally:
        Field.traces = traces  # type: ignore[method-assign]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--networks", default="digits,mnist", help="comma-separated: digits, mnist")
    ap.add_argument("--mnist", default=None, help="MNIST t10k images (idx, .gz) or their folder")
    ap.add_argument("--n", type=int, default=None, help="held-out digits (default 64 digits, 25 MNIST)")
    ap.add_argument("--repeats", type=int, default=None, help="probe draws per digit (default 8 digits, 6 MNIST)")
    ap.add_argument("--ks", default="20,100")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = prepare_out_dir(args.out, "likelihood_probes")
    ks = [int(k) for k in args.ks.split(",")]
    rows = []
    for name in args.networks.split(","):
        n = args.n or {"digits": 64, "mnist": 25}[name]
        rows += rows_for(name, n, args.repeats or {"digits": 8, "mnist": 6}[name], ks, args.mnist)
    table = markdown_table(rows, COLUMNS)
    print(table)
    write_json(out / "results.json", {"rows": rows, "machine": machine_info(), "versions": versions(),
                                      "argv": sys.argv[1:] if argv is None else list(argv)})
    write_text(out / "table.md", table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
