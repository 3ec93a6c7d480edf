"""A loss-curve PNG without plotting libraries: numpy rasterisation and a zlib PNG writer.

The raw per-step loss is drawn light, its moving average dark, on axes labelled with the step
range and the loss range (a built-in 3x5 pixel font, scaled up).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from tttgraph.config import write_atomic

_FONT = {  # 3x5 glyphs, rows top to bottom, 3 bits each
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7), "4": (5, 5, 7, 1, 1),
    "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1), "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7),
    ".": (0, 0, 0, 0, 2), "-": (0, 0, 7, 0, 0), "e": (0, 7, 7, 4, 7), "l": (6, 2, 2, 2, 7), "o": (0, 7, 5, 5, 7),
    "s": (0, 7, 6, 1, 7), "t": (2, 7, 2, 2, 3), "p": (0, 7, 5, 7, 4), " ": (0, 0, 0, 0, 0), ":": (0, 2, 0, 2, 0),
}


def png_bytes(image: np.ndarray) -> bytes:
    """Encode uint8 RGB ``[H, W, 3]`` as a PNG file."""
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _text(img: np.ndarray, x: int, y: int, text: str, scale: int = 2, colour=(40, 40, 40)) -> None:
    for ch in text:
        rows = _FONT.get(ch, _FONT[" "])
        for r, bits in enumerate(rows):
            for c in range(3):
                if bits >> (2 - c) & 1:
                    img[y + r * scale:y + (r + 1) * scale, x + c * scale:x + (c + 1) * scale] = colour
        x += 4 * scale


def _line(img: np.ndarray, xs: np.ndarray, ys: np.ndarray, colour, width: int = 1) -> None:
    for (x0, y0), (x1, y1) in zip(zip(xs[:-1], ys[:-1], strict=True), zip(xs[1:], ys[1:], strict=True), strict=True):
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        px = np.rint(np.linspace(x0, x1, n)).astype(int)
        py = np.rint(np.linspace(y0, y1, n)).astype(int)
        for d in range(width):
            img[np.clip(py + d, 0, img.shape[0] - 1), np.clip(px, 0, img.shape[1] - 1)] = colour


def _fmt(v: float) -> str:
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.2e}"


def loss_curve_png(steps, losses, path: str | Path, *, width: int = 720, height: int = 420, smooth: int = 10) -> Path:
    """Write the loss curve of ``steps`` / ``losses`` to ``path`` (atomically); returns the path."""
    steps = np.asarray(steps, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 90, 20, 20, 50
    pw, ph = width - left - right, height - top - bottom
    img[top:top + ph + 1, left] = 0
    img[top + ph, left:left + pw + 1] = 0
    if len(steps):
        lo, hi = float(np.min(losses)), float(np.max(losses))
        hi = hi if hi > lo else lo + 1.0
        s0, s1 = float(steps[0]), float(steps[-1]) if steps[-1] > steps[0] else float(steps[0]) + 1
        xs = left + (steps - s0) / (s1 - s0) * pw
        ys = top + (hi - losses) / (hi - lo) * ph
        _line(img, xs, ys, (170, 190, 230))
        k = max(1, min(smooth, len(losses)))
        avg = np.convolve(losses, np.ones(k) / k, mode="valid")
        _line(img, xs[k - 1:], top + (hi - avg) / (hi - lo) * ph, (20, 60, 160), width=2)
        _text(img, 4, top, _fmt(hi))
        _text(img, 4, top + ph - 10, _fmt(lo))
        _text(img, left, top + ph + 10, f"{int(s0)}")
        label = f"{int(s1)}"
        _text(img, left + pw - 8 * len(label), top + ph + 10, label)
    _text(img, left + pw // 2 - 16, top + ph + 28, "step")
    _text(img, 4, top + ph // 2, "loss")
    path = Path(path)
    write_atomic(path, png_bytes(img))
    return path
