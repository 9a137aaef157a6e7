"""diffusers interop, offline in well under a minute: a tiny randomly initialised UNet2DModel is saved with
`save_pretrained` (as a Hub repo would hold it), loaded back with `from_diffusers`, and sampled with
scoresolve; then the one-line drop-in `sample_pipeline` for a pipeline's `pipe(...)`.

With a real model the same lines read `from_diffusers("google/ddpm-cifar10-32")` or
`from_diffusers("google/ncsnpp-celebahq-256")` (downloaded once into the Hub cache).

Run: python examples/adapter_diffusers.py   (needs `pip install diffusers`)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

try:
    from diffusers import DDPMScheduler, ScoreSdeVeScheduler, UNet2DModel
except ImportError:  # optional dependency: nothing to show without it
    print("this example needs diffusers: pip install diffusers")
    raise SystemExit(0) from None

import scoresolve as ss
from scoresolve.adapters.diffusers import from_diffusers, sample_pipeline

torch.set_num_threads(1)
torch.manual_seed(0)


def tiny_unet(fourier: bool) -> UNet2DModel:
    return UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        time_embedding_type="fourier" if fourier else "positional",
    )


with tempfile.TemporaryDirectory() as tmp:
    # a DDPM-style repo: config.json + weights + scheduler_config.json (google/ddpm-cifar10-32's layout)
    ddpm_dir = Path(tmp) / "ddpm"
    tiny_unet(fourier=False).save_pretrained(ddpm_dir)
    DDPMScheduler(num_train_timesteps=1000, clip_sample=False).save_pretrained(ddpm_dir)

    model = from_diffusers(ddpm_dir)  # VPSDE(0.1, 20) + exact timestep map, eps parameterisation
    print("(random weights: the samples are noise, the plumbing is the point)")
    print(model, "| timestep at t=0.5:", float(model.metadata["time_map"](torch.tensor([0.5]))))
    for solver, budget in (("dpmpp_2m", {"nfe": 10}), ("pc", {"steps": 20})):
        res = ss.sample(
            model,
            solver=solver,
            **budget,
            batch_size=4,
            return_result=True,
            generator=torch.Generator().manual_seed(0),
        )
        print(
            f"{solver:9s} {budget}: NFE={res.nfe}, samples {tuple(res.samples.shape)}, "
            f"range [{float(res.samples.min()):.2f}, {float(res.samples.max()):.2f}]"
        )

# a VE score model (the google/ncsnpp-* convention: timestep = sigma, output = score) inside a "pipeline"
pipe = type(
    "Pipe",
    (),
    {
        "unet": tiny_unet(fourier=True),
        "scheduler": ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0, num_train_timesteps=100),
    },
)()
# instead of `images = pipe(batch_size=2, generator=g).images`:
images = sample_pipeline(pipe, "pc", 50, batch_size=2, generator=torch.Generator().manual_seed(0)).images
print("sample_pipeline ->", len(images), "PIL images of size", images[0].size)
