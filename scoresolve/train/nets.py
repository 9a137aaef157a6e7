r"""Reference score networks: an MLP for low-dimensional data and a small U-Net for images.

Both map ``(x, t) -> out`` with ``out`` of ``x``'s shape; what ``out`` means (score, ε, x0 or the
denoiser) is set by the :class:`~scoresolve.ScoreModel` that wraps the network
(``parameterization=``), so every conversion of :mod:`scoresolve.models` applies unchanged.

The time input is embedded with Gaussian Fourier features (random fixed frequencies of scale
``fourier_scale``, Tancik et al. 2020, used by NCSN++ in Song et al. 2021, arXiv:2011.13456) or
with the Transformer's sinusoidal embedding of ``time_scale * t`` (DDPM++, Ho et al. 2020,
arXiv:2006.11239). With ``time_transform="log"`` the input is first replaced by its logarithm (use
it when the network receives a noise level σ, as for the ``denoiser`` parameterisation).

Each network records its constructor arguments in :attr:`config` and its registered name in
:attr:`arch_name`; :func:`scoresolve.io.save` stores both, so a checkpoint rebuilds the network
without pickled code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ScoreNet", "MLP", "UNet", "TimeEmbedding", "ARCHITECTURES", "build"]


class TimeEmbedding(nn.Module):
    """Embed a ``(B,)`` time (or noise level) into ``(B, dim)`` features.

    Args:
        dim: output size (even).
        kind: ``"fourier"`` (fixed random frequencies :math:`w \\sim N(0, s^2)`, features
            :math:`[\\sin 2\\pi w t, \\cos 2\\pi w t]`) or ``"sinusoidal"`` (frequencies
            :math:`10000^{-k/(d/2-1)}` applied to ``time_scale * t``).
        fourier_scale: ``s`` above.
        time_scale: multiplier of ``t`` for the sinusoidal embedding (1000 maps [0, 1] to DDPM steps).
        time_transform: ``"identity"`` or ``"log"`` (embed :math:`\\log t`).
        seed: seed of the Fourier frequencies (they are also saved as a buffer).

    The frequencies and the features are computed in at least float32, also in a float16 or bfloat16
    network (``net.half()`` moves them but keeps their precision): rounded to 8 bits of mantissa, a
    frequency times ``time_scale * t`` would be off by radians. The caller casts the features.
    """

    def __init__(
        self,
        dim: int,
        kind: str = "fourier",
        fourier_scale: float = 16.0,
        time_scale: float = 1000.0,
        time_transform: str = "identity",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"TimeEmbedding: dim must be even, got {dim}")
        if kind not in ("fourier", "sinusoidal"):
            raise ValueError(f"TimeEmbedding: kind must be 'fourier' or 'sinusoidal', got {kind!r}")
        if time_transform not in ("identity", "log"):
            raise ValueError(f"TimeEmbedding: time_transform must be 'identity' or 'log', got {time_transform!r}")
        self.kind, self.time_scale, self.time_transform = kind, float(time_scale), time_transform
        half = dim // 2
        if kind == "fourier":
            g = torch.Generator().manual_seed(seed)
            self.register_buffer("freqs", torch.randn(half, generator=g) * fourier_scale)
        else:
            k = torch.arange(half, dtype=torch.float32)
            self.register_buffer("freqs", torch.exp(-math.log(10000.0) * k / max(half - 1, 1)))

    def _apply(self, fn: Any, recurse: bool = True) -> TimeEmbedding:
        exact = self.freqs
        super()._apply(fn, recurse)
        if self.freqs.element_size() < 4:  # a cast to half precision: keep the float32 values, on the new device
            self.freqs = exact.to(device=self.freqs.device, dtype=torch.float32)
        return self

    def forward(self, t: Tensor) -> Tensor:
        t = t.reshape(-1).to(self.freqs.dtype)
        if self.time_transform == "log":
            t = torch.log(t)
        if self.kind == "fourier":
            arg = 2 * math.pi * t[:, None] * self.freqs[None]
        else:
            arg = self.time_scale * t[:, None] * self.freqs[None]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


class ScoreNet(nn.Module):
    """Base class: keeps the constructor arguments (:attr:`config`) and the registered name."""

    arch_name: str = ""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())


class MLP(ScoreNet):
    """Fully connected network with a time embedding added to every hidden layer (residual).

    Args:
        sample_shape: shape of one sample (flattened inside), e.g. ``(2,)``.
        hidden: width; depth: number of residual hidden blocks; embed_dim: time-embedding size.
        embedding, fourier_scale, time_scale, time_transform: see :class:`TimeEmbedding`.
    """

    arch_name = "mlp"

    def __init__(
        self,
        sample_shape: Sequence[int] = (2,),
        hidden: int = 128,
        depth: int = 3,
        embed_dim: int = 64,
        embedding: str = "fourier",
        fourier_scale: float = 16.0,
        time_scale: float = 1000.0,
        time_transform: str = "identity",
    ) -> None:
        shape = [int(s) for s in sample_shape]
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"MLP: sample_shape must be a non-empty shape of positive sizes, got {sample_shape!r}")
        if depth < 1 or hidden < 1:
            raise ValueError(f"MLP: depth and hidden must be >= 1, got depth={depth}, hidden={hidden}")
        super().__init__(
            dict(
                sample_shape=shape, hidden=hidden, depth=depth, embed_dim=embed_dim, embedding=embedding,
                fourier_scale=fourier_scale, time_scale=time_scale, time_transform=time_transform,
            )
        )
        self.sample_shape = tuple(shape)
        d = math.prod(shape)
        self.embed = TimeEmbedding(embed_dim, embedding, fourier_scale, time_scale, time_transform)
        self.t_mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(d, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.t_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, d)
        self.act = nn.SiLU()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        b = x.shape[0]
        temb = self.t_mlp(self.embed(t.expand(b) if t.ndim == 0 else t).to(x.dtype))
        h = self.inp(x.reshape(b, -1))
        for lin, tp in zip(self.blocks, self.t_proj, strict=True):
            h = h + lin(self.act(h + tp(temb)))
        return self.out(self.act(h)).reshape(x.shape)


def _norm(c: int) -> nn.GroupNorm:
    g = math.gcd(c, 32)  # at most 32 groups, dividing c, of at least 4 channels where possible
    while g > 1 and c // g < 4:
        g //= 2
    return nn.GroupNorm(g, c)


class ResBlock(nn.Module):
    """GroupNorm–SiLU–conv, time embedding added, GroupNorm–SiLU–dropout–conv, skip (1×1 if needed)."""

    def __init__(self, cin: int, cout: int, tdim: int, dropout: float) -> None:
        super().__init__()
        self.n1, self.c1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(tdim, cout)
        self.n2, self.c2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.c1(self.act(self.n1(x)))
        h = h + self.t(temb)[:, :, None, None]
        h = self.c2(self.drop(self.act(self.n2(h))))
        return (self.skip(x) + h) / math.sqrt(2.0)


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions, with a residual connection."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = _norm(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        a = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        o = torch.einsum("bij,bcj->bci", a, v).reshape(b, c, h, w)
        return (x + self.proj(o)) / math.sqrt(2.0)


class UNet(ScoreNet):
    """A small U-Net (DDPM/NCSN++ layout, reduced): residual blocks with a time embedding,
    self-attention at the listed resolutions, average-pool downsampling, nearest upsampling.

    Args:
        in_channels, image_size: input ``(in_channels, image_size, image_size)``; ``image_size``
            must be divisible by ``2 ** (len(channel_mults) - 1)``.
        base_channels: channels at full resolution; level ``i`` has ``base_channels * channel_mults[i]``.
        num_res_blocks: residual blocks per level (down path; the up path has one more).
        attn_resolutions: spatial sizes at which attention follows each residual block.
        dropout: dropout inside residual blocks.
        embedding, fourier_scale, time_scale, time_transform: see :class:`TimeEmbedding`.
    """

    arch_name = "unet"

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attn_resolutions: Sequence[int] = (4,),
        dropout: float = 0.0,
        embedding: str = "fourier",
        fourier_scale: float = 16.0,
        time_scale: float = 1000.0,
        time_transform: str = "identity",
    ) -> None:
        mults = [int(m) for m in channel_mults]
        attn = [int(r) for r in attn_resolutions]
        if not mults or image_size % (2 ** (len(mults) - 1)):
            raise ValueError(
                f"UNet: image_size={image_size} must be divisible by 2**(len(channel_mults)-1) "
                f"(channel_mults={mults})"
            )
        super().__init__(
            dict(
                in_channels=in_channels, image_size=image_size, base_channels=base_channels, channel_mults=mults,
                num_res_blocks=num_res_blocks, attn_resolutions=attn, dropout=dropout, embedding=embedding,
                fourier_scale=fourier_scale, time_scale=time_scale, time_transform=time_transform,
            )
        )
        self.sample_shape = (in_channels, image_size, image_size)
        tdim = 4 * base_channels
        self.embed = TimeEmbedding(base_channels, embedding, fourier_scale, time_scale, time_transform)
        self.t_mlp = nn.Sequential(nn.Linear(base_channels, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.inp = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        chans = [base_channels]
        c, res = base_channels, image_size
        for i, m in enumerate(mults):
            for _ in range(num_res_blocks):
                blocks = nn.ModuleList([ResBlock(c, base_channels * m, tdim, dropout)])
                c = base_channels * m
                if res in attn:
                    blocks.append(AttnBlock(c))
                self.down.append(blocks)
                chans.append(c)
            if i < len(mults) - 1:
                self.down.append(nn.ModuleList([nn.AvgPool2d(2)]))
                chans.append(c)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(c, c, tdim, dropout), AttnBlock(c), ResBlock(c, c, tdim, dropout)])
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            for _ in range(num_res_blocks + 1):
                blocks = nn.ModuleList([ResBlock(c + chans.pop(), base_channels * m, tdim, dropout)])
                c = base_channels * m
                if res in attn:
                    blocks.append(AttnBlock(c))
                self.up.append(blocks)
            if i > 0:
                self.up.append(nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest")]))
                res *= 2
        self.out_norm = _norm(c)
        self.out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _run(self, blocks: nn.ModuleList, h: Tensor, temb: Tensor) -> Tensor:
        for blk in blocks:
            h = blk(h, temb) if isinstance(blk, ResBlock) else blk(h)
        return h

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"UNet expects x of shape (B, *{self.sample_shape}), got {tuple(x.shape)}")
        temb = self.t_mlp(self.embed(t.expand(x.shape[0]) if t.ndim == 0 else t).to(x.dtype))
        h = self.inp(x)
        hs = [h]
        for blocks in self.down:
            h = self._run(blocks, h, temb)
            hs.append(h)
        h = self._run(self.mid, h, temb)
        for blocks in self.up:
            if isinstance(blocks[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(blocks, h, temb)
        return self.out(torch.nn.functional.silu(self.out_norm(h)))


ARCHITECTURES: dict[str, type[ScoreNet]] = {"mlp": MLP, "unet": UNet}


def build(arch: str, **kwargs: Any) -> ScoreNet:
    """Build a registered architecture by name (``"mlp"``, ``"unet"``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; registered: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch](**kwargs)
