"""Image grids and the one PNG writer of scoresolve (CLI, training, examples, README pictures).

- :func:`image_grid` tiles samples ``(N, C, H, W)`` (C = 1 or 3) into one ``uint8`` image ``(H', W', C)``.
  **Colour convention** (the same everywhere, as torchvision's ``save_image``): the data range maps
  linearly to black → white, ``low`` is black; values outside are clipped. Tiles are separated by a
  **gutter** of mid-grey pixels (:data:`GUTTER`), distinct from both black and white, so that a grid of
  digits never reads as stripes.
- :func:`write_png` encodes a ``uint8`` image ``(H, W)`` or ``(H, W, C)``: with Pillow when it is
  installed, else with a zlib-only encoder (8-bit grey or RGB, filter type 0). Written atomically.
- :func:`save_grid` = both; :func:`read_png` decodes a PNG to a ``uint8`` tensor (Pillow, else
  zlib with the five PNG row filters), for tests that compare pixels rather than bytes (the two encoders
  write different bytes for the same pixels).
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["image_grid", "write_png", "save_grid", "read_png", "GUTTER"]

#: grey level of the gutter between tiles
GUTTER = 128
_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_grid(
    samples: Any, nrow: int | None = None, pad: int = 1, data_range: Sequence[float] = (-1.0, 1.0), scale: int = 1,
) -> Tensor:
    """Tile ``samples`` ``(N, C, H, W)`` into one ``uint8`` image ``(H', W', C)``.

    Args:
        samples: tensor or array, C = 1 (grey) or 3 (RGB).
        nrow: tiles per row (default ``ceil(sqrt(N))``).
        pad: gutter width in output pixels (around and between tiles, after scaling).
        data_range: ``(low, high)`` mapped to 0 (black) … 255 (white).
        scale: each pixel repeated ``scale`` × ``scale`` times (8×8 digits are easier to see at 4×).
    """
    x = torch.as_tensor(samples).detach().cpu()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"an image grid needs image samples (N, 1 or 3, H, W), got shape {tuple(x.shape)}")
    lo, hi = (float(v) for v in data_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"data_range must be (low, high) with low < high, got {tuple(data_range)}")
    for name, v in (("nrow", nrow), ("pad", pad), ("scale", scale)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "pad" else 1)):
            raise ValueError(f"{name} must be an integer >= {0 if name == 'pad' else 1}, got {v!r}")
    x = ((x.to(torch.float64) - lo) / (hi - lo) * 255.0).nan_to_num(0.0).round().clamp(0, 255).to(torch.uint8)
    if scale > 1:
        x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    n, c, h, w = x.shape
    cols = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    grid = torch.full((c, rows * (h + pad) + pad, cols * (w + pad) + pad), GUTTER, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top: top + h, left: left + w] = x[i]
    return grid.permute(1, 2, 0).contiguous()


def _check_image(img: Any) -> Tensor:
    a = torch.as_tensor(img)
    a = a[..., None] if a.ndim == 2 else a
    if a.dtype != torch.uint8 or a.ndim != 3 or a.shape[-1] not in (1, 3) or min(a.shape[:2]) < 1:
        raise ValueError(f"a PNG image must be uint8 of shape (H, W), (H, W, 1) or (H, W, 3), got {a.dtype} "
                         f"{tuple(torch.as_tensor(img).shape)}")
    return a.contiguous()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _encode_zlib(a: Tensor) -> bytes:
    h, w, c = a.shape
    pix = a.numpy()
    raw = b"".join(b"\x00" + pix[i].tobytes() for i in range(h))
    head = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", head) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def _encode_pillow(a: Tensor) -> bytes | None:
    try:
        from PIL import Image
    except ImportError:
        return None
    import io

    arr = a.numpy()
    img = Image.fromarray(arr[..., 0], mode="L") if arr.shape[-1] == 1 else Image.fromarray(arr, mode="RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_png(path: str | os.PathLike[str], img: Any, scale: int = 1) -> Path:
    """Write a ``uint8`` image ``(H, W)`` / ``(H, W, 1)`` / ``(H, W, 3)`` as PNG, each pixel repeated
    ``scale`` times in both directions; Pillow when installed, else zlib. Atomic (a temporary file, then
    a rename); creates the parent folder. Returns the path."""
    a = _check_image(img)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    if scale > 1:
        a = a.repeat_interleave(scale, 0).repeat_interleave(scale, 1).contiguous()
    data = _encode_pillow(a) or _encode_zlib(a)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def save_grid(
    samples: Any, path: str | os.PathLike[str], nrow: int | None = None, pad: int = 2,
    data_range: Sequence[float] = (-1.0, 1.0), scale: int = 4,
) -> Path:
    """Tile ``samples`` ``(N, C, H, W)`` (:func:`image_grid`) and write the PNG (:func:`write_png`)."""
    return write_png(path, image_grid(samples, nrow=nrow, pad=pad, data_range=data_range, scale=scale))


def _unfilter(raw: bytes, h: int, w: int, c: int) -> Tensor:
    import numpy as np

    stride = w * c
    out = np.zeros((h, stride), dtype=np.int32)
    data = np.frombuffer(raw, dtype=np.uint8).reshape(h, stride + 1)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(h):
        f, line = int(data[y, 0]), data[y, 1:].astype(np.int32)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) & 0xFF
        elif f in (1, 3, 4):
            cur = np.zeros(stride, dtype=np.int32)
            for i in range(stride):
                left = int(cur[i - c]) if i >= c else 0
                up, ul = int(prev[i]), (int(prev[i - c]) if i >= c else 0)
                if f == 1:
                    pred = left
                elif f == 3:
                    pred = (left + up) // 2
                else:
                    pa, pb, pc = abs(up - ul), abs(left - ul), abs(left + up - 2 * ul)
                    pred = left if pa <= pb and pa <= pc else (up if pb <= pc else ul)
                cur[i] = (int(line[i]) + pred) & 0xFF
        else:
            raise ValueError(f"PNG row {y} has an unknown filter type {f}")
        out[y], prev = cur, cur
    return torch.from_numpy(out.astype(np.uint8).reshape(h, w, c))


def read_png(path: str | os.PathLike[str]) -> Tensor:
    """Decode an 8-bit grey or RGB PNG (non-interlaced) to ``uint8`` ``(H, W, C)``."""
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        import numpy as np

        with Image.open(path) as im:
            arr = np.asarray(im if im.mode in ("L", "RGB") else im.convert("RGB"))
        arr = arr[..., None] if arr.ndim == 2 else arr
        return torch.from_numpy(arr.copy())
    data = Path(path).read_bytes()
    if not data.startswith(_SIGNATURE):
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, head = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos: pos + 4])
        tag, body = data[pos + 4: pos + 8], data[pos + 8: pos + 8 + n]
        if tag == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    if head is None or head[2] != 8 or head[3] not in (0, 2) or head[6] != 0:
        raise ValueError(f"{path}: only 8-bit grey or RGB, non-interlaced PNGs are read here")
    w, h, c = head[0], head[1], 1 if head[3] == 0 else 3
    return _unfilter(zlib.decompress(idat), h, w, c)
