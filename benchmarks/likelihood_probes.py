"""The budget likelihood's Monte-Carlo error over Hutchinson probe draws: one probe kept along the path
(``fresh_probes=False``) against a fresh probe at every node (the default), and the default's standard error.

The path of x does not depend on the probes, and the divergence enters the budget method only through the
quadrature of ``m = tr(-sigma^2 grad s)`` at the K nodes. A fresh Rademacher probe per node keeps that quadrature
unbiased and makes its node errors independent, so its variance is ``sum_k c_k^2 Var_k`` instead of the variance of
one quadratic form of the summed Jacobian; ``trace_se_bpd`` bounds it from the same vector-Jacobian products
(:meth:`scoresolve.likelihood.field.Field.traces_with_variance`). The rows give, per network and K, the per-digit
standard deviation of bits/dim over ``--repeats`` probe draws (the same digits and dequantization: the probes come
from this script's own generator, patched into ``Field.traces_with_variance``), and for the fresh probes the
reported standard error against it.

    python benchmarks/likelihood_probes.py --mnist PATH [--n 25] [--repeats 6] [--ks 20,100] [--out DIR]
    python benchmarks/likelihood_probes.py --networks digits --n 64 --repeats 8
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, prepare_out_dir, write_table_results

import scoresolve.io as sio
from scoresolve.data.mnist import mnist
from scoresolve.likelihood import likelihood
from scoresolve.likelihood.field import Field
from scoresolve.train.data import digits

COLUMNS = [("network", "network"), ("n", "digits"), ("k", "K"), ("probes", "probes"),
           ("sd_rms", "per-digit SD of bits/dim (rms)"), ("sd_median", "median SD"),
           ("se_rms", "reported SE, trace_se_bpd (rms)"), ("se_over_sd", "SE / SD"),
           ("se_over_sd_p10", "SE / SD, 10th pct of digits"), ("within_2se", "draws within 2 SE of the mean"),
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
    traces = Field.traces_with_variance
    run: dict[str, Any] = {}

    def patched(self: Field, xx: torch.Tensor, t: torch.Tensor, rows: Any = None,
                probes: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if run["fresh"] or run["probe"] is None:  # this script's probes: the dequantization stays the same
            run["probe"] = (torch.randint(0, 2, (1, *xx.shape), generator=run["gen"]) * 2 - 1).to(xx)
        return traces(self, xx, t, rows, probes=run["probe"])

    out = []
    Field.traces_with_variance = patched  # type: ignore[method-assign]
    try:
        for k in ks:
            for fresh in (False, True):
                vals, ses = [], []
                c0 = time.process_time()
                for r in range(repeats):
                    run.update(fresh=fresh, probe=None, gen=torch.Generator().manual_seed(100 + r))
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        res = likelihood(model, x, steps=k, trace="hutchinson", probes=1, fresh_probes=fresh,
                                         generator=torch.Generator().manual_seed(5), progress=False, **opts)
                    vals.append(res.bpd.to(torch.float64))
                    ses.append(res.trace_se_bpd.to(torch.float64))
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
        Field.traces_with_variance = traces  # type: ignore[method-assign]
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
    write_table_results(out, rows, COLUMNS, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
