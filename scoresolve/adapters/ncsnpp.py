r"""NCSN++ / DDPM++ (Song et al. 2021, arXiv:2011.13456, Sec. 4.4 and App. H), written for scoresolve from the
paper's description and the parameter names and shapes of the released ``checkpoint_*.pth`` files.

:class:`NCSNpp` builds its modules in the order of the checkpoints' flat ``all_modules`` list, so those files
load by name: a Fourier (VE) or sinusoidal (DDPM++) noise embedding, a down path and an up path of BigGAN-style
residual blocks with single-head attention at ``attn_resolutions``, FIR or plain resampling, and a final
``GroupNorm`` + 3×3 convolution (VE models divide the output by :math:`\sigma`). Covered: the CIFAR-10 / CelebA
64×64 / church configurations (``cifar10_ncsnpp[_deep]_continuous``, ``cifar10_ddpmpp[_deep]_continuous`` and
their sub-VP variants). Not covered: ``progressive="output_skip"`` / ``"input_skip"`` (the 256–1024 px
CelebA-HQ/FFHQ models) and ``resblock_type="ddpm"``; these raise :class:`NotImplementedError`. Module order,
blocks and options in detail: docs/adapters.md ("Official score_sde checkpoints")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NCSNppConfig", "NCSNpp", "upfirdn2d", "timestep_embedding"]


@dataclass
class NCSNppConfig:
    """Hyper-parameters of :class:`NCSNpp` (names as in the released ``config.model`` / ``config.data``)."""

    image_size: int = 32
    num_channels: int = 3
    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    fir: bool = True
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "residual"
    progressive_combine: str = "sum"
    attention_type: str = "ddpm"
    embedding_type: str = "fourier"
    fourier_scale: float = 16.0
    scale_by_sigma: bool = True
    centered: bool = False
    conv_size: int = 3
    # noise levels of the discrete VE model (the `sigmas` buffer of the checkpoint)
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------
# FIR resampling (Karras et al. 2019's upfirdn: upsample by zero insertion, pad, filter, downsample)


def _fir_kernel(k: Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
    k1 = torch.as_tensor(list(k), dtype=dtype, device=device)
    k2 = torch.outer(k1, k1)
    return k2 / k2.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion (factor ``up``), pad ``pad = (before, after)`` on both axes (negative crops),
    correlate with the flipped 2-D ``kernel`` (i.e. convolve), keep every ``down``-th pixel."""
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    if up > 1:
        z = y.new_zeros(b * c, 1, h * up, w * up)
        z[:, :, ::up, ::up] = y
        y = z
    p0, p1 = pad
    y = F.pad(y, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    if p0 < 0 or p1 < 0:
        hh, ww = y.shape[-2:]
        y = y[:, :, max(-p0, 0) : hh - max(-p1, 0), max(-p0, 0) : ww - max(-p1, 0)]
    k = torch.flip(kernel, (0, 1))[None, None].to(y.dtype)
    y = F.conv2d(y, k)
    y = y[:, :, ::down, ::down]
    return y.reshape(b, c, y.shape[-2], y.shape[-1])


def _fir_up(x: Tensor, k: Sequence[int], factor: int = 2) -> Tensor:
    kern = _fir_kernel(k, x.device, x.dtype) * factor**2
    p = kern.shape[0] - factor
    return upfirdn2d(x, kern, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def _fir_down(x: Tensor, k: Sequence[int], factor: int = 2) -> Tensor:
    kern = _fir_kernel(k, x.device, x.dtype)
    p = kern.shape[0] - factor
    return upfirdn2d(x, kern, down=factor, pad=((p + 1) // 2, p // 2))


def _naive_up(x: Tensor, factor: int = 2) -> Tensor:
    return F.interpolate(x, scale_factor=factor, mode="nearest")


def _naive_down(x: Tensor, factor: int = 2) -> Tensor:
    return F.avg_pool2d(x, factor)


def timestep_embedding(t: Tensor, dim: int, max_positions: int = 10000) -> Tensor:
    r"""Sinusoidal embedding (Vaswani et al. 2017; DDPM): :math:`[\sin(t\omega_j), \cos(t\omega_j)]` with
    :math:`\omega_j = \exp(-j\log(\text{max\_positions})/(d/2-1))`."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_positions) / (half - 1) * torch.arange(half, device=t.device, dtype=torch.float32))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


# ----------------------------------------------------------------------------------------------------------
# layers (attribute names are the checkpoint's)


def _groups(ch: int) -> int:
    return min(ch // 4, 32)


class GaussianFourierProjection(nn.Module):
    r"""Random Fourier features :math:`[\sin 2\pi W s, \cos 2\pi W s]` of a scalar :math:`s`; ``W`` is fixed."""

    def __init__(self, embedding_size: int, scale: float) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, s: Tensor) -> Tensor:
        proj = s[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class NIN(nn.Module):
    """A 1x1 convolution stored as ``W`` (in, out) and ``b`` (out)."""

    def __init__(self, in_dim: int, num_units: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(in_dim, num_units) / math.sqrt(in_dim))
        self.b = nn.Parameter(torch.zeros(num_units))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bchw,cd->bdhw", x, self.W) + self.b[None, :, None, None]


class AttnBlockpp(nn.Module):
    """Single-head self-attention over all pixels, residual."""

    def __init__(self, channels: int, skip_rescale: bool) -> None:
        super().__init__()
        self.GroupNorm_0 = nn.GroupNorm(_groups(channels), channels, eps=1e-6)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.GroupNorm_0(x)
        q, k, v = self.NIN_0(y), self.NIN_1(y), self.NIN_2(y)
        att = torch.einsum("bcij,bckl->bijkl", q, k) * c**-0.5
        att = torch.softmax(att.reshape(b, h, w, h * w), dim=-1).reshape(b, h, w, h, w)
        y = self.NIN_3(torch.einsum("bijkl,bckl->bcij", att, v))
        return (x + y) / math.sqrt(2.0) if self.skip_rescale else x + y


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style residual block with a noise-level embedding, optional up/down-sampling."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None,
        temb_dim: int | None,
        cfg: NCSNppConfig,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = nn.GroupNorm(_groups(in_ch), in_ch, eps=1e-6)
        self.Conv_0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        if temb_dim is not None:
            self.Dense_0 = nn.Linear(temb_dim, out_ch)
        self.GroupNorm_1 = nn.GroupNorm(_groups(out_ch), out_ch, eps=1e-6)
        self.Dropout_0 = nn.Dropout(cfg.dropout)
        self.Conv_1 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch or up or down:
            self.Conv_2 = nn.Conv2d(in_ch, out_ch, 1)
        self.up, self.down = up, down
        self.in_ch, self.out_ch = in_ch, out_ch
        self.fir, self.fir_kernel, self.skip_rescale = cfg.fir, tuple(cfg.fir_kernel), cfg.skip_rescale

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return _fir_up(x, self.fir_kernel) if self.fir else _naive_up(x)
        if self.down:
            return _fir_down(x, self.fir_kernel) if self.fir else _naive_down(x)
        return x

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = F.silu(self.GroupNorm_0(x))
        h, x = self._resample(h), self._resample(x)
        h = self.Conv_0(h)
        if temb is not None and hasattr(self, "Dense_0"):
            h = h + self.Dense_0(F.silu(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(F.silu(self.GroupNorm_1(h))))
        if hasattr(self, "Conv_2"):
            x = self.Conv_2(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class PyramidDownsample(nn.Module):
    """Down-sampling 3x3 convolution of the input pyramid (``Conv2d_0`` with FIR, ``Conv_0`` stride 2 without)."""

    def __init__(self, in_ch: int, out_ch: int, cfg: NCSNppConfig) -> None:
        super().__init__()
        self.fir, self.fir_kernel = cfg.fir, tuple(cfg.fir_kernel)
        if cfg.fir:
            self.Conv2d_0 = _FIRConv(in_ch, out_ch)
        else:
            self.Conv_0 = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        if self.fir:
            c = self.Conv2d_0
            kern = _fir_kernel(self.fir_kernel, x.device, x.dtype)
            p = (kern.shape[0] - 2) + (c.weight.shape[-1] - 1)
            x = upfirdn2d(x, kern, pad=((p + 1) // 2, p // 2))
            return F.conv2d(x, c.weight, c.bias, stride=2)
        return self.Conv_0(F.pad(x, (0, 1, 0, 1)))


class _FIRConv(nn.Module):
    """Holds ``weight`` (out, in, 3, 3) and ``bias`` (out) of a FIR-filtered strided convolution."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 3, 3) / math.sqrt(9 * in_ch))
        self.bias = nn.Parameter(torch.zeros(out_ch))


# ----------------------------------------------------------------------------------------------------------


class NCSNpp(nn.Module):
    r"""NCSN++ / DDPM++ score network (see the module docstring for the layout and coverage).

    ``forward(x, cond)``: ``cond`` is :math:`\sigma` for Fourier embeddings (the output is then divided by
    :math:`\sigma` if ``scale_by_sigma``: a score), or the (possibly fractional) timestep for positional
    embeddings (the released VP models are called with :math:`999\,t` and predict :math:`-\sigma_t` times the
    score, i.e. :math:`\varepsilon`).
    """

    def __init__(self, config: NCSNppConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or NCSNppConfig()
        if overrides:
            cfg = NCSNppConfig(**{**cfg.to_dict(), **overrides})
        if cfg.resblock_type != "biggan" or cfg.attention_type != "ddpm" or cfg.progressive != "none":
            raise NotImplementedError(
                "NCSNpp covers resblock_type='biggan', attention_type='ddpm', progressive='none'; got "
                f"{cfg.resblock_type!r}, {cfg.attention_type!r}, {cfg.progressive!r}"
            )
        if cfg.progressive_input not in ("none", "residual"):
            raise NotImplementedError(f"progressive_input={cfg.progressive_input!r} is not covered")
        if cfg.embedding_type not in ("fourier", "positional"):
            raise ValueError(f"embedding_type must be 'fourier' or 'positional', got {cfg.embedding_type!r}")
        if cfg.conv_size != 3:
            raise NotImplementedError("only conv_size=3 is covered")
        self.config = cfg
        nf, nres = cfg.nf, len(cfg.ch_mult)
        self.resolutions = [cfg.image_size // 2**i for i in range(nres)]
        sig = torch.exp(torch.linspace(math.log(cfg.sigma_max), math.log(cfg.sigma_min), cfg.num_scales))
        self.register_buffer("sigmas", sig, persistent=False)  # not in the released state dicts

        mods: list[nn.Module] = []
        if cfg.embedding_type == "fourier":
            mods.append(GaussianFourierProjection(nf, cfg.fourier_scale))
            embed_dim = 2 * nf
        else:
            embed_dim = nf
        mods += [nn.Linear(embed_dim, 4 * nf), nn.Linear(4 * nf, 4 * nf)]
        temb = 4 * nf

        def block(i: int, o: int | None = None, **kw: bool) -> nn.Module:
            return ResnetBlockBigGANpp(i, o, temb, cfg, **kw)

        mods.append(nn.Conv2d(cfg.num_channels, nf, 3, padding=1))
        skips = [nf]
        ch, pyr_ch = nf, cfg.num_channels
        for lvl in range(nres):
            for _ in range(cfg.num_res_blocks):
                mods.append(block(ch, nf * cfg.ch_mult[lvl]))
                ch = nf * cfg.ch_mult[lvl]
                if self.resolutions[lvl] in cfg.attn_resolutions:
                    mods.append(AttnBlockpp(ch, cfg.skip_rescale))
                skips.append(ch)
            if lvl != nres - 1:
                mods.append(block(ch, down=True))
                if cfg.progressive_input == "residual":
                    mods.append(PyramidDownsample(pyr_ch, ch, cfg))
                    pyr_ch = ch
                skips.append(ch)
        mods += [block(ch), AttnBlockpp(ch, cfg.skip_rescale), block(ch)]
        for lvl in reversed(range(nres)):
            for _ in range(cfg.num_res_blocks + 1):
                out = nf * cfg.ch_mult[lvl]
                mods.append(block(ch + skips.pop(), out))
                ch = out
            if self.resolutions[lvl] in cfg.attn_resolutions:
                mods.append(AttnBlockpp(ch, cfg.skip_rescale))
            if lvl != 0:
                mods.append(block(ch, up=True))
        assert not skips
        mods.append(nn.GroupNorm(_groups(ch), ch, eps=1e-6))
        mods.append(nn.Conv2d(ch, cfg.num_channels, 3, padding=1))
        self.all_modules = nn.ModuleList(mods)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        cfg, m = self.config, iter(self.all_modules)
        cond = cond.reshape(-1).expand(x.shape[0]) if cond.numel() == 1 else cond
        if cfg.embedding_type == "fourier":
            sigma = cond
            emb = next(m)(torch.log(cond))
        else:
            sigma = None
            emb = timestep_embedding(cond, cfg.nf)
        emb = next(m)(emb.to(x.dtype))
        emb = next(m)(F.silu(emb))
        if not cfg.centered:
            x = 2 * x - 1.0
        pyramid = x
        hs = [next(m)(x)]
        nres = len(cfg.ch_mult)
        for lvl in range(nres):
            for _ in range(cfg.num_res_blocks):
                h = next(m)(hs[-1], emb)
                if h.shape[-1] in cfg.attn_resolutions:
                    h = next(m)(h)
                hs.append(h)
            if lvl != nres - 1:
                h = next(m)(hs[-1], emb)
                if cfg.progressive_input == "residual":
                    pyramid = next(m)(pyramid)
                    pyramid = (pyramid + h) / math.sqrt(2.0) if cfg.skip_rescale else pyramid + h
                    h = pyramid
                hs.append(h)
        h = hs[-1]
        h = next(m)(h, emb)
        h = next(m)(h)
        h = next(m)(h, emb)
        for lvl in reversed(range(nres)):
            for _ in range(cfg.num_res_blocks + 1):
                h = next(m)(torch.cat([h, hs.pop()], dim=1), emb)
            if h.shape[-1] in cfg.attn_resolutions:
                h = next(m)(h)
            if lvl != 0:
                h = next(m)(h, emb)
        h = F.silu(next(m)(h))
        h = next(m)(h)
        if cfg.scale_by_sigma:
            if sigma is None:  # positional VE: the condition is an index into the sigmas buffer
                sigma = self.sigmas[cond.long()]
            h = h / sigma.reshape(-1, 1, 1, 1).to(h.dtype)
        return h
