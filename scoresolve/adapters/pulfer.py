"""Brian Pulfer's small MNIST / Fashion-MNIST DDPM (MIT licence), read from its ``state_dict`` file.

The network (about 0.6 M parameters) is a three-level U-Net without attention with a stored sinusoidal timestep
embedding; it predicts ε of the DDPM with 1000 linear betas from 1e-4 to 0.02 (Ho et al. 2020, arXiv:2006.11239)
on data in ``[-1, 1]``. :func:`load_pulfer_ddpm` rebuilds it here (``torch.load(weights_only=True)``, every
expected name and shape checked) and wraps it as a :class:`~scoresolve.ScoreModel` of the continuous VP SDE that
spans the discrete schedule (:func:`~scoresolve.adapters.diffusers.vp_sde_for_alphas_cumprod`), time mapped to
the nearest trained timestep. Known defect: its input LayerNorm removes the global brightness, so deterministic
samplers drift to blank images; use it with clipped ancestral sampling (``clip_x0=True``). Layers and usage:
docs/adapters.md ("Brian Pulfer's MNIST DDPM")."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from ..io.checkpoint import CheckpointError, torch_load_safe
from ..models import ScoreModel
from .diffusers import DiscreteTimeMap, vp_sde_for_alphas_cumprod

__all__ = ["PulferUNet", "load_pulfer_ddpm", "is_pulfer_state_dict", "BETA_START", "BETA_END", "N_STEPS"]

N_STEPS, BETA_START, BETA_END = 1000, 1e-4, 0.02
_PREFIX = "network."


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, size: int, norm: bool = True) -> None:
        super().__init__()
        self.ln = nn.LayerNorm((cin, size, size))
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln(x) if self.norm else x
        return nn.functional.silu(self.conv2(nn.functional.silu(self.conv1(h))))


def _blocks(channels: tuple[int, ...], size: int, last_norm: bool = True) -> nn.Sequential:
    n = len(channels) - 1
    return nn.Sequential(*(_Block(channels[i], channels[i + 1], size, last_norm or i < n - 1) for i in range(n)))


def _time_mlp(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, out), nn.SiLU(), nn.Linear(out, out))


class PulferUNet(nn.Module):
    """The network; ``forward(x, timestep)`` with integer (or integral float) timesteps ``(B,)`` → ε."""

    def __init__(self, n_steps: int = N_STEPS, time_dim: int = 100) -> None:
        super().__init__()
        self.time_embed = nn.Embedding(n_steps, time_dim)
        self.time_embed.requires_grad_(False)
        te = {"te1": 1, "te2": 10, "te3": 20, "te_mid": 40, "te4": 80, "te5": 40, "te_out": 20}
        for name, c in te.items():
            setattr(self, name, _time_mlp(time_dim, c))
        self.b1 = _blocks((1, 10, 10, 10), 28)
        self.down1 = nn.Conv2d(10, 10, 4, 2, 1)
        self.b2 = _blocks((10, 20, 20, 20), 14)
        self.down2 = nn.Conv2d(20, 20, 4, 2, 1)
        self.b3 = _blocks((20, 40, 40, 40), 7)
        self.down3 = nn.Sequential(nn.Conv2d(40, 40, 2, 1), nn.SiLU(), nn.Conv2d(40, 40, 4, 2, 1))
        self.b_mid = _blocks((40, 20, 20, 40), 3)
        self.up1 = nn.Sequential(nn.ConvTranspose2d(40, 40, 4, 2, 1), nn.SiLU(), nn.ConvTranspose2d(40, 40, 2, 1))
        self.b4 = _blocks((80, 40, 20, 20), 7)
        self.up2 = nn.ConvTranspose2d(20, 20, 4, 2, 1)
        self.b5 = _blocks((40, 20, 10, 10), 14)
        self.up3 = nn.ConvTranspose2d(10, 10, 4, 2, 1)
        self.b_out = _blocks((20, 10, 10, 10), 28, last_norm=False)
        self.conv_out = nn.Conv2d(10, 1, 3, 1, 1)

    def forward(self, x: Tensor, timestep: Tensor) -> Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"PulferUNet expects x of shape (B, 1, 28, 28), got {tuple(x.shape)}")
        idx = timestep.reshape(-1).round().long().clamp(0, self.time_embed.num_embeddings - 1)
        emb = self.time_embed(idx.expand(x.shape[0]) if idx.numel() == 1 else idx)

        def t(mlp: nn.Module) -> Tensor:
            return mlp(emb)[:, :, None, None]

        h1 = self.b1(x + t(self.te1))
        h2 = self.b2(self.down1(h1) + t(self.te2))
        h3 = self.b3(self.down2(h2) + t(self.te3))
        h = self.b_mid(self.down3(h3) + t(self.te_mid))
        h = self.b4(torch.cat([h3, self.up1(h)], 1) + t(self.te4))
        h = self.b5(torch.cat([h2, self.up2(h)], 1) + t(self.te5))
        h = self.b_out(torch.cat([h1, self.up3(h)], 1) + t(self.te_out))
        return self.conv_out(h)


def is_pulfer_state_dict(state: Any) -> bool:
    """Whether ``state`` looks like this network's state dict (by its time-embedding table's name)."""
    return isinstance(state, dict) and f"{_PREFIX}time_embed.weight" in state and f"{_PREFIX}b_mid.0.ln.weight" in state


def load_pulfer_ddpm(
    path: str | os.PathLike[str], *, clip_x0: bool = False, device: torch.device | str | None = None
) -> ScoreModel:
    """Load the DDPM at ``path`` (its ``state_dict``, keys ``network.*``) as a :class:`~scoresolve.ScoreModel`.

    Args:
        path: the ``.pt`` file.
        clip_x0: clamp Tweedie's :math:`\\hat x_0` to ``[-1, 1]`` and rebuild the score from it (what makes
            its ancestral samples digits; see the module docstring).
        device: where to put the network.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is not this network's state dict (names the missing/unexpected keys or
            the mismatched shapes), or it needs unsafe unpickling.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_pulfer_ddpm: no file at {os.fspath(path)!r}")
    state = torch_load_safe(path)
    if not is_pulfer_state_dict(state):
        raise CheckpointError(f"{os.fspath(path)}: not a Pulfer DDPM state dict (no '{_PREFIX}time_embed.weight')")
    sd = {k[len(_PREFIX):]: v for k, v in state.items() if k.startswith(_PREFIX)}
    n_steps, time_dim = sd["time_embed.weight"].shape
    net = PulferUNet(n_steps, time_dim)
    mine = net.state_dict()
    bad = [f"{k}: file {tuple(v.shape)}, network {tuple(mine[k].shape)}" for k, v in sd.items()
           if k in mine and tuple(v.shape) != tuple(mine[k].shape)]
    missing, unexpected = sorted(set(mine) - set(sd)), sorted(set(sd) - set(mine))
    if bad or missing or unexpected:
        raise CheckpointError(f"{os.fspath(path)}: does not match the Pulfer DDPM network: shapes {bad}, "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    net.load_state_dict(sd)
    net.eval().requires_grad_(False)
    if device is not None:
        net.to(device)
    betas = torch.linspace(BETA_START, BETA_END, n_steps, dtype=torch.float64)
    acp = torch.cumprod(1 - betas, 0)
    sde = vp_sde_for_alphas_cumprod(acp, "linear", BETA_START, BETA_END)
    time_map = DiscreteTimeMap(acp, sde, mode="nearest")
    meta = {"source": os.fspath(path), "time_map": time_map, "network": net, "licence": "MIT (Brian Pulfer)"}
    base = ScoreModel(net, sde, (1, 28, 28), parameterization="eps", data_range=(-1.0, 1.0), time_fn=time_map,
                      **meta)
    if not clip_x0:
        return base

    def clipped_x0(x: Tensor, t: Tensor) -> Tensor:
        return base.x0(x, t).clamp(-1.0, 1.0)

    return ScoreModel(clipped_x0, sde, (1, 28, 28), parameterization="x0", data_range=(-1.0, 1.0), **meta)
