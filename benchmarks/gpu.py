#!/usr/bin/env python
"""scoresolve on an accelerator: the CUDA path, half-precision networks, throughput and the other paths.

Four checks on the bundled networks, printed and saved to ``--out`` (``gpu.json``, ``gpu.md``):

1. **agreement**: every registered solver (10 NFE; the adaptive ones at their default tolerances; ``auto``
   uncalibrated) on the digits network from the same prior noise and CPU generator, on ``--device`` against
   the CPU, in float64 and float32 (TF32 as torch's defaults set it, and off): the largest difference of a
   sample. With per-sample ``seeds=`` on ``--device``: the first 8 samples drawn in batches of 8 and of 64.
2. **precision**: the digits and MNIST networks cast to float16 and bfloat16 (the sampler's state stays
   float32) against float32, ``dpmpp_2m`` at 10 and 20 NFE from the same noise: paired RMSE and the FD in the
   bundled classifier's features over the float32 run's FD.
3. **throughput**: samples per second of ``dpmpp_2m`` at 10 NFE on the MNIST network per batch size and
   network dtype, and the share of that time spent outside the network (10 timed forward calls subtracted).
4. **other paths**: the 20-step likelihood and SMC inpainting of held-out digits on ``--device`` against the
   CPU (largest difference), and a short training run there (finite losses, wall time).

    python benchmarks/gpu.py --device cuda            # about a minute on one GPU
    python benchmarks/gpu.py --device cpu --quick     # the machinery, on the CPU
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, prepare_out_dir, run_cli, versions, write_json, write_text  # noqa: E402
from real_models import _classifier_reference  # noqa: E402

import scoresolve as ss  # noqa: E402
from scoresolve.io import load  # noqa: E402
from scoresolve.metrics import frechet_distance, gaussian_moments  # noqa: E402
from scoresolve.registry import SOLVERS  # noqa: E402
from scoresolve.sampling import resolve_solver  # noqa: E402

NAME = "gpu"
HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run(model: Any, solver: str, x_T: Tensor, seed: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    opts: dict[str, Any] = {}
    if solver == "auto":
        opts["calibrate"] = False
    if not getattr(resolve_solver(solver, {}), "adaptive", False):
        opts["nfe"] = 10
    return ss.sample(model, solver=solver, x_T=x_T.to(device=device, dtype=dtype), device=device, dtype=dtype,
                     generator=torch.Generator().manual_seed(seed), progress=False, **opts).cpu()


def agreement(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    """Each solver on ``device`` against the CPU, same noise and generator, float64 and float32."""
    names = ["dpmpp_2m", "sde_dpmpp_2m", "pc", "ode"] if quick else SOLVERS.names()
    n = 16 if quick else 64
    cpu, dev = load("digits"), load("digits", device=device)
    rows = []
    for name in names:
        x_T = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        row: dict[str, Any] = {"solver": name}
        for label, dt, tf32 in (("float64", torch.float64, False), ("float32", torch.float32, True),
                                ("float32_no_tf32", torch.float32, False)):
            old_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
            try:
                a = _run(_cast(cpu, dt), name, x_T, 2, torch.device("cpu"), dt)
                b = _run(_cast(dev, dt), name, x_T, 2, device, dt)
                row[label] = float((a.double() - b.double()).abs().max())
            except Exception as e:  # noqa: BLE001 - a failing solver is a result
                row[label] = f"{type(e).__name__}: {str(e)[:120]}"
            finally:
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old_tf32
        rows.append(row)
        print(f"agreement {name:<22} " + "  ".join(f"{k} {row[k]!s:.10}" for k in row if k != "solver"), flush=True)
    for name in ("sde_dpmpp_2m", "euler_ancestral"):
        big = ss.sample(dev, solver=name, nfe=10, seeds=list(range(64)), device=device, progress=False)
        small = ss.sample(dev, solver=name, nfe=10, seeds=list(range(8)), device=device, progress=False)
        rows.append({"solver": f"{name}, seeds 0-7 in a batch of 8 vs 64 (on {device.type})",
                     "float32": float((big[:8] - small).abs().max())})
    return rows


def _cast(model: ss.ScoreModel, dtype: torch.dtype) -> ss.ScoreModel:
    """The model with its network in ``dtype`` (float32/float64 only: the state's precision)."""
    model.fn.to(dtype)
    return model


def precision(device: torch.device, n: int) -> list[dict[str, Any]]:
    """Half-precision networks against float32, the state in float32."""
    rows = []
    for name in ("digits", "mnist"):
        features, mean, cov, _ = _classifier_reference(tuple(load(name).sample_shape))

        def fd(x: Tensor, features: Callable[[Tensor], Tensor] = features, mean: Tensor = mean,
               cov: Tensor = cov) -> float:
            return frechet_distance(*gaussian_moments(features(x)), mean, cov)

        x_T = torch.randn(n, *load(name).sample_shape, generator=torch.Generator().manual_seed(0))
        for nfe in (10, 20):
            ref = ss.sample(load(name, device=device), solver="dpmpp_2m", nfe=nfe, x_T=x_T.to(device),
                            progress=False).cpu()
            fd_ref = fd(ref)
            rows.append({"model": name, "nfe": nfe, "network dtype": "float32", "rmse": 0.0, "fd": fd_ref,
                         "fd_ratio": 1.0})
            for label, dt in HALF.items():
                try:
                    x = ss.sample(load(name, device=device, dtype=dt), solver="dpmpp_2m", nfe=nfe,
                                  x_T=x_T.to(device), progress=False).cpu()
                    row = {"rmse": float((x - ref).pow(2).mean().sqrt()), "fd": fd(x)}
                    row["fd_ratio"] = row["fd"] / fd_ref
                except Exception as e:  # noqa: BLE001
                    row = {"error": f"{type(e).__name__}: {str(e)[:160]}"}
                rows.append({"model": name, "nfe": nfe, "network dtype": label, **row})
                print(f"precision {name} {nfe} NFE {label}: {row}", flush=True)
    return rows


def throughput(device: torch.device, batches: list[int], repeats: int) -> list[dict[str, Any]]:
    """Samples per second of dpmpp_2m at 10 NFE on the MNIST network, and the share outside the network."""
    rows = []
    for label, dt in {"float32": torch.float32, **HALF}.items():
        model = load("mnist", device=device, dtype=dt)
        for b in batches:
            x_T = torch.randn(b, 1, 28, 28, device=device)
            t = torch.full((b,), 0.5, device=device)

            def sampling(model: ss.ScoreModel = model, x_T: Tensor = x_T) -> None:
                ss.sample(model, solver="dpmpp_2m", nfe=10, x_T=x_T, progress=False)

            def network(model: ss.ScoreModel = model, x_T: Tensor = x_T, t: Tensor = t) -> None:
                with torch.no_grad():
                    for _ in range(10):
                        model(x_T, t)

            try:
                s_run, s_net = _best(sampling, device, repeats), _best(network, device, repeats)
            except Exception as e:  # noqa: BLE001 (out of memory, an unsupported kernel)
                rows.append({"network dtype": label, "batch": b, "error": f"{type(e).__name__}: {str(e)[:120]}"})
                continue
            rows.append({"network dtype": label, "batch": b, "seconds": s_run, "samples_per_s": b / s_run,
                         "network_seconds": s_net, "outside_network": max(0.0, 1 - s_net / s_run)})
            print(f"throughput {label} batch {b}: {b / s_run:.0f} samples/s, {rows[-1]['outside_network']:.0%} "
                  "outside the network", flush=True)
    return rows


def paths(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    """Likelihood, inpainting and a training run on ``device`` against the CPU (digits network / data)."""
    from scoresolve.conditional import inpaint
    from scoresolve.train import Trainer, UNet
    from scoresolve.train.data import digits

    rows: list[dict[str, Any]] = []
    x = digits("test")[:16]
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :4] = True  # the top half observed

    def likelihood(dev: torch.device) -> Tensor:
        return ss.likelihood(load("digits", device=dev), x=x.to(dev), steps=20, progress=False,
                             generator=torch.Generator().manual_seed(0)).bpd.cpu()

    def inpainting(dev: torch.device) -> Tensor:
        return inpaint(load("digits", device=dev), None, x.to(dev), mask.to(dev), steps=25, particles=4,
                       generator=torch.Generator().manual_seed(0)).cpu()

    for label, run in (("likelihood, steps=20 (bits/dim per image)", likelihood),
                       ("inpaint, top half, smc K = 4, 25 steps", inpainting)):
        row: dict[str, Any] = {"path": label}
        try:
            t0 = time.perf_counter()
            a = run(torch.device("cpu"))
            row["cpu_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            b = run(device)
            _sync(device)
            row["device_s"] = time.perf_counter() - t0
            row["max_difference"] = float((a.double() - b.double()).abs().max())
            row["finite"] = bool(torch.isfinite(b).all())
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
        rows.append(row)
        print(f"paths {row}", flush=True)
    steps = 20 if quick else 200
    row = {"path": f"training, UNet on digits, {steps} steps, batch 128 (bfloat16 autocast on CUDA)"}
    try:
        tr = Trainer(UNet(1, 8), ss.VPSDE(), digits("train"), batch_size=128, device=device)
        tr.train_step()  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        losses = [tr.train_step() for _ in range(steps)]
        _sync(device)
        row.update(device_s=time.perf_counter() - t0, finite=bool(torch.isfinite(torch.tensor(losses)).all()),
                   amp=tr.amp, last_loss=float(losses[-1]))
    except Exception as e:  # noqa: BLE001
        row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
    rows.append(row)
    print(f"paths {row}", flush=True)
    return rows


def _best(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="four solvers, n = 64, batches 64 and 256")
    p.add_argument("--n", type=int, default=None, help="samples per precision run (default 1000; --quick 64)")
    p.add_argument("--out", default=None, help=f"output folder (default bench_out/{NAME}/)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    n = args.n or (64 if args.quick else 1000)
    batches = [64, 256] if args.quick else [256, 1024, 4096]
    out = prepare_out_dir(args.out, NAME)
    t0 = time.perf_counter()
    res = {"agreement": agreement(device, args.quick), "precision": precision(device, n),
           "throughput": throughput(device, batches, 1 if args.quick else 3), "paths": paths(device, args.quick)}
    config = {"command": " ".join(["python", "benchmarks/gpu.py", *(argv if argv is not None else sys.argv[1:])]),
              "device": str(device), "n": n, "machine": machine_info(str(device)), "versions": versions(),
              "seconds": time.perf_counter() - t0}
    if device.type == "cuda":
        config["cuda"] = {"name": torch.cuda.get_device_name(device), "torch_cuda": torch.version.cuda,
                          "cudnn_tf32": torch.backends.cudnn.allow_tf32,
                          "matmul_tf32": torch.backends.cuda.matmul.allow_tf32}
    write_json(out / "gpu.json", {"config": config, **res})
    gpu_name = config.get("cuda", {}).get("name", "")
    md = [f"# {NAME}", "", f"Command: `{config['command']}`; device {device} ({gpu_name}); "
          f"{config['seconds']:.0f} s.", "",
          "## Agreement with the CPU (largest difference of a sample)", "",
          markdown_table(res["agreement"], [("solver", "solver"), ("float64", "float64"),
                                            ("float32", "float32 (TF32 as the defaults)"),
                                            ("float32_no_tf32", "float32, TF32 off")]),
          "", f"## Half-precision networks (n = {n}, state in float32)", "",
          markdown_table(res["precision"], [("model", "model"), ("nfe", "NFE"), ("network dtype", "network"),
                                            ("rmse", "RMSE vs float32"), ("fd", "FD"), ("fd_ratio", "FD / float32 FD"),
                                            ("error", "error")]),
          "", "## Throughput (MNIST network, dpmpp_2m, 10 NFE)", "",
          markdown_table(res["throughput"], [("network dtype", "network"), ("batch", "batch"), ("seconds", "s"),
                                             ("samples_per_s", "samples / s"),
                                             ("outside_network", "share outside the network"), ("error", "error")]),
          "", "## Other paths against the CPU", "",
          markdown_table(res["paths"], [("path", "path"), ("cpu_s", "CPU s"), ("device_s", "device s"),
                                        ("max_difference", "largest difference"), ("finite", "finite"),
                                        ("last_loss", "last loss"), ("error", "error")])]
    write_text(out / "gpu.md", "\n".join(md) + "\n")
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'}")


if __name__ == "__main__":
    run_cli(main)
