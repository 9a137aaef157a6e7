"""``ScoresolveScheduler(solver="auto")`` inside a diffusers ``DDPMPipeline`` vs ``ss.sample(solver="auto")``.

The bundled digits network (``ss.load("digits")``, a continuous-time VP score model) is wrapped as a diffusers
``ModelMixin`` that predicts the noise at a (fractional) timestep of ``DDPMScheduler``'s linear 1000-step
schedule (the time with the same log-SNR on the network's own SDE), put in a ``DDPMPipeline``, and sampled
with ``ScoresolveScheduler.from_scheduler(pipe.scheduler, solver="auto")`` after ``scheduler.calibrate(pipe,
steps)`` at ``--steps`` network calls. The reference is ``ss.sample(model, solver="auto", nfe=...)`` on the
network itself. Both are scored by the benchmark's classifier-feature FID against the held-out digits
(``benchmarks/nfe_vs_fid.py --model bundled``); the pipeline clamps its images to [-1, 1], so the reference
is scored clamped too (and unclamped, for the record).

The second part measures the one documented difference of the scheduler from diffusers' multistep schedulers,
the last step: ``ScoresolveScheduler(solver="dpmpp_2m")`` with ``final="zero"`` (our default: the solver's own
step to sigma = 0) against ``final="tweedie"`` (a first-order last step, Tweedie's x0, as diffusers' takes) on
the same grid, and diffusers' ``DPMSolverMultistepScheduler`` (its defaults) in the same pipeline, same noise.

Usage::

    python benchmarks/diffusers_scheduler.py                 # n = 2000, 10 calls, both parts
    python benchmarks/diffusers_scheduler.py --share-grid    # one calibration: ss.sample's grid, exported
    python benchmarks/diffusers_scheduler.py --part final    # the last-step comparison only (no calibration)
    python benchmarks/diffusers_scheduler.py --part auto --uncalibrated   # both sides on auto's default grid
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, markdown_table, prepare_out_dir, versions, write_json, write_text  # noqa: E402

import scoresolve as ss  # noqa: E402

NAME = "diffusers_scheduler"


def digits_pipeline(model: ss.ScoreModel):
    """A ``DDPMPipeline`` whose UNet is the digits score network, as noise prediction at DDPM timesteps."""
    import diffusers
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.modeling_utils import ModelMixin

    from scoresolve.adapters.diffusers import DiscreteTimeMap

    ddpm = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    tm = DiscreteTimeMap(ddpm.alphas_cumprod, model.sde)
    sde = model.sde

    class DigitsUNet(ModelMixin, ConfigMixin):
        @register_to_config
        def __init__(self, sample_size: int = 8, in_channels: int = 1, out_channels: int = 1) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a dtype and device

        def forward(self, sample, timestep, return_dict=True):
            ts = torch.as_tensor(timestep).reshape(-1).expand(sample.shape[0])
            ac = tm.alphas_cumprod_at(ts)
            t = sde.t_from_log_snr(0.5 * torch.log(ac / (1 - ac))).clamp(max=sde.T).to(sample)
            eps = -sde.marginal_std(t).reshape(-1, 1, 1, 1) * model(sample, t)
            return diffusers.models.unets.unet_2d.UNet2DOutput(sample=eps) if return_dict else (eps,)

    pipe = diffusers.DDPMPipeline(unet=DigitsUNet(), scheduler=ddpm)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _row(name: str, nfe: int, f: float, floor: float, start: float, cpu: float) -> dict:
    return {"method": name, "nfe": nfe, "fid": f, "fid_ratio": f / floor, "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu}


def _pipeline_fid(pipe, args, fid) -> float:
    images = pipe(batch_size=args.n, num_inference_steps=args.steps, output_type="np",
                  generator=torch.Generator().manual_seed(args.seed)).images
    return fid.fid(torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1)


def _auto_rows(args, model, fid, floor: float, rows: list, log) -> float:
    """``ss.sample(solver="auto")`` (unclamped and clamped) and the pipeline with the scheduler's ``auto``."""
    from scoresolve.adapters.diffusers import ScoresolveScheduler

    tag = ", calibrate=False" if args.uncalibrated else ""
    log(f"ss.sample(solver='auto'{tag})")
    start, cpu = time.perf_counter(), time.process_time()
    ref = ss.sample(model, solver="auto", nfe=args.steps, batch_size=args.n, return_result=True,
                    generator=torch.Generator().manual_seed(args.seed),
                    calibrate=False if args.uncalibrated else (args.cache or True))
    for name, x in ((f"ss.sample(solver='auto'{tag})", ref.samples),
                    (f"ss.sample(solver='auto'{tag}), clamped", ref.samples.clamp(-1, 1))):
        rows.append(_row(name, ref.nfe, fid.fid(x), floor, start, cpu))
    log(f"reference FID {rows[-1]['fid']:.4g} (clamped); the pipeline: calibrate, then sample")
    pipe = digits_pipeline(model)
    pipe.scheduler = ScoresolveScheduler.from_scheduler(pipe.scheduler, solver="auto")
    start, cpu = time.perf_counter(), time.process_time()
    if args.uncalibrated:
        pass  # auto's uncalibrated grid (the scheduler warns), as ss.sample(calibrate=False) runs
    elif args.share_grid:
        pipe.scheduler.register_to_config(calibrated_sigmas={str(args.steps): ss.grids.export(ref, model.sde,
                                                                                              final_zero=False)})
    else:
        pipe.scheduler.calibrate(pipe, args.steps, generator=torch.Generator().manual_seed(args.seed + 7))
    f = _pipeline_fid(pipe, args, fid)
    rows.append(_row(f"DDPMPipeline + ScoresolveScheduler(solver='auto'){' uncalibrated' if tag else ''}",
                     pipe.scheduler.nfe, f, floor, start, cpu))
    return f / rows[-2]["fid"] - 1


def _final_rows(args, model, fid, floor: float, rows: list, log) -> None:
    """Our last step against diffusers': ``dpmpp_2m`` with ``final="zero"`` / ``"tweedie"`` on one grid, and
    diffusers' ``DPMSolverMultistepScheduler``, all in the same pipeline from the same noise."""
    import diffusers

    from scoresolve.adapters.diffusers import ScoresolveScheduler

    pipe = digits_pipeline(model)
    source = pipe.scheduler
    for final in ("zero", "tweedie"):
        log(f"DDPMPipeline + ScoresolveScheduler(solver='dpmpp_2m', final={final!r})")
        pipe.scheduler = ScoresolveScheduler.from_scheduler(source, solver="dpmpp_2m", final=final)
        start, cpu = time.perf_counter(), time.process_time()
        f = _pipeline_fid(pipe, args, fid)
        rows.append(_row(f"DDPMPipeline + ScoresolveScheduler(solver='dpmpp_2m', final='{final}')",
                         pipe.scheduler.nfe, f, floor, start, cpu))
    log("DDPMPipeline + DPMSolverMultistepScheduler")
    pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(source.config)
    calls = []
    unet_forward = pipe.unet.forward

    def counted(*a, **k):
        calls.append(1)
        return unet_forward(*a, **k)

    pipe.unet.forward = counted
    start, cpu = time.perf_counter(), time.process_time()
    f = _pipeline_fid(pipe, args, fid)
    rows.append(_row("DDPMPipeline + DPMSolverMultistepScheduler (diffusers' defaults)", len(calls), f, floor,
                     start, cpu))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="samples per method (default 2000)")
    ap.add_argument("--steps", type=int, default=10, help="network calls (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="output folder (default bench_out/diffusers_scheduler/)")
    ap.add_argument("--share-grid", action="store_true",
                    help="give the scheduler ss.sample's calibrated grid (ss.grids.export) instead of calibrating "
                    "it again through the pipeline (half the cost)")
    ap.add_argument("--cache", default=None,
                    help="a calibration cache file for ss.sample's auto (kept across runs; default: in memory)")
    ap.add_argument("--uncalibrated", action="store_true",
                    help="auto without calibration on both sides (its default grid): the pipeline route alone")
    ap.add_argument("--part", choices=("all", "auto", "final"), default="all",
                    help="auto: the scheduler's auto vs ss.sample; final: our last step vs diffusers' (default all)")
    args = ap.parse_args(argv)
    out = prepare_out_dir(args.out, NAME)
    torch.set_num_threads(1)

    from scoresolve.metrics.fid import DigitsFID

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    model = ss.load("digits")
    fid = DigitsFID()
    floor, floor_se = fid.floor(args.n, draws=20, seed=args.seed + 1)
    rows = []

    rel = None
    if args.part in ("all", "auto"):
        rel = _auto_rows(args, model, fid, floor, rows, log)
    if args.part in ("all", "final"):
        _final_rows(args, model, fid, floor, rows, log)
    table = markdown_table(rows, [("method", "method"), ("nfe", "network calls"), ("fid", "FID"),
                                  ("fid_ratio", "FID / floor"), ("seconds", "seconds (incl. calibration)"),
                                  ("cpu_seconds", "CPU seconds")])
    summary = f"{table}\nfloor {floor:.4g} ± {floor_se:.2g} (n = {args.n})"
    if rel is not None:
        summary += f"; pipeline auto vs clamped ss.sample auto: {100 * rel:+.1f} %"
    summary += "\n"
    print(summary)
    write_json(out / "results.json", {"args": vars(args), "rows": rows, "floor": floor, "floor_stderr": floor_se,
                                      "relative_difference": rel, "machine": machine_info(), "versions": versions()})
    write_text(out / "results.md", summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
