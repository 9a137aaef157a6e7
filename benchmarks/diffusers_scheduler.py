"""``ScoresolveScheduler(solver="auto")`` inside a diffusers ``DDPMPipeline`` vs ``ss.sample(solver="auto")``.

The bundled digits network (``ss.load("digits")``, a continuous-time VP score model) is wrapped as a diffusers
``ModelMixin`` that predicts the noise at a (fractional) timestep of ``DDPMScheduler``'s linear 1000-step
schedule (the time with the same log-SNR on the network's own SDE), put in a ``DDPMPipeline``, and sampled
with ``ScoresolveScheduler.from_scheduler(pipe.scheduler, solver="auto")`` after ``scheduler.calibrate(pipe,
steps)`` at ``--steps`` network calls. The reference is ``ss.sample(model, solver="auto", nfe=...)`` on the
network itself. Both are scored by the benchmark's classifier-feature FID against the held-out digits
(``benchmarks/nfe_vs_fid.py --model bundled``); the pipeline clamps its images to [-1, 1], so the reference
is scored clamped too (and unclamped, for the record).

Usage::

    python benchmarks/diffusers_scheduler.py                 # n = 2000, 10 calls
    python benchmarks/diffusers_scheduler.py --share-grid    # one calibration: ss.sample's grid, exported
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="samples per method (default 2000)")
    ap.add_argument("--steps", type=int, default=10, help="network calls (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="output folder (default bench_out/diffusers_scheduler/)")
    ap.add_argument("--share-grid", action="store_true",
                    help="give the scheduler ss.sample's calibrated grid (ss.grids.export) instead of calibrating "
                    "it again through the pipeline (half the cost)")
    args = ap.parse_args(argv)
    out = prepare_out_dir(args.out, NAME)
    torch.set_num_threads(1)

    from scoresolve.adapters.diffusers import ScoresolveScheduler
    from scoresolve.metrics.fid import DigitsFID

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    model = ss.load("digits")
    fid = DigitsFID()
    floor, floor_se = fid.floor(args.n, draws=20, seed=args.seed + 1)
    rows = []

    log("ss.sample(solver='auto') (calibrates its grid first)")
    start = time.perf_counter()
    ref = ss.sample(model, solver="auto", nfe=args.steps, batch_size=args.n, return_result=True,
                    generator=torch.Generator().manual_seed(args.seed))
    sec = time.perf_counter() - start
    for name, x in (("ss.sample(solver='auto')", ref.samples), ("ss.sample(solver='auto'), clamped",
                                                                 ref.samples.clamp(-1, 1))):
        f = fid.fid(x)
        rows.append({"method": name, "nfe": ref.nfe, "fid": f, "fid_ratio": f / floor, "seconds": sec})

    log(f"reference FID {rows[1]['fid']:.4g} (clamped); the pipeline: calibrate, then sample")
    pipe = digits_pipeline(model)
    pipe.scheduler = ScoresolveScheduler.from_scheduler(pipe.scheduler, solver="auto")
    start = time.perf_counter()
    if args.share_grid:
        pipe.scheduler.register_to_config(calibrated_sigmas={str(args.steps): ss.grids.export(ref, model.sde,
                                                                                              final_zero=False)})
    else:
        pipe.scheduler.calibrate(pipe, args.steps, generator=torch.Generator().manual_seed(args.seed + 7))
    images = pipe(batch_size=args.n, num_inference_steps=args.steps, output_type="np",
                  generator=torch.Generator().manual_seed(args.seed)).images
    sec = time.perf_counter() - start
    x = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1
    f = fid.fid(x)
    rows.append({"method": "DDPMPipeline + ScoresolveScheduler(solver='auto')", "nfe": pipe.scheduler.nfe,
                 "fid": f, "fid_ratio": f / floor, "seconds": sec})
    rel = f / rows[1]["fid"] - 1
    table = markdown_table(rows, [("method", "method"), ("nfe", "network calls"), ("fid", "FID"),
                                  ("fid_ratio", "FID / floor"), ("seconds", "seconds (incl. calibration)")])
    summary = (f"{table}\nfloor {floor:.4g} ± {floor_se:.2g} (n = {args.n}); pipeline vs clamped reference: "
               f"{100 * rel:+.1f} %\n")
    print(summary)
    write_json(out / "results.json", {"args": vars(args), "rows": rows, "floor": floor, "floor_stderr": floor_se,
                                      "relative_difference": rel, "machine": machine_info(), "versions": versions()})
    write_text(out / "results.md", summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
