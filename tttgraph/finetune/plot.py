"""A loss-curve PNG without plotting libraries: numpy rasterisation, Pillow's font, a zlib PNG writer.

The picture has a title, a grid, round-numbered ticks on both axes, the axis names (step, loss),
the raw per-step loss drawn light, its moving average (:func:`smooth`) drawn dark, and a legend.
Text needs Pillow (:mod:`tttgraph.drawing`); without it the curves and grid are drawn alone.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np

from tttgraph.config import write_atomic

_RAW, _SMOOTH = (160, 185, 230), (20, 60, 160)
_AXIS, _GRID, _TEXT = (60, 60, 60), (228, 228, 228), (30, 30, 30)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode uint8 RGB ``[H, W, 3]`` as a PNG file."""
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _line(img: np.ndarray, xs: np.ndarray, ys: np.ndarray, colour, width: int = 1) -> None:
    for (x0, y0), (x1, y1) in zip(zip(xs[:-1], ys[:-1], strict=True), zip(xs[1:], ys[1:], strict=True), strict=True):
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        px = np.rint(np.linspace(x0, x1, n)).astype(int)
        py = np.rint(np.linspace(y0, y1, n)).astype(int)
        for d in range(width):
            img[np.clip(py + d, 0, img.shape[0] - 1), np.clip(px, 0, img.shape[1] - 1)] = colour


def smooth(values, window: int) -> np.ndarray:
    """Trailing moving average: point i is the mean of values[i - window + 1 .. i] (fewer at the start,
    so the smoothed curve covers every step)."""
    values = np.asarray(values, dtype=np.float64)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    sums = np.cumsum(np.concatenate([[0.0], values]))
    i = np.arange(1, len(values) + 1)
    lo = np.maximum(0, i - window)
    return (sums[i] - sums[lo]) / (i - lo)


def default_window(n: int) -> int:
    """The moving-average window for ``n`` steps: 1/20 of the run, 1 to 50 steps."""
    return max(1, min(50, n // 20))


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart) from <= ``lo`` to >= ``hi``."""
    if not hi > lo:  # one value: a range around it
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    if integer:
        step = max(1.0, round(step))
    first, last = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    return [first + k * step for k in range(int(round((last - first) / step)) + 1)]


def _tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
    return f"{value:.{decimals}f}"


def loss_curve_png(steps, losses, path: str | Path, *, width: int = 800, height: int = 480,
                   smooth_window: int | None = None, title: str = "training loss") -> Path:
    """Write the loss curve of ``steps`` / ``losses`` to ``path`` (atomically); returns the path.

    ``smooth_window``: steps of the moving average (default :func:`default_window`).
    """
    from tttgraph.drawing import draw_on, get_font, text_width

    steps = np.asarray(steps, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    keep = np.isfinite(losses)  # a NaN or inf step (a diverged run) has no place on the axes
    steps, losses = steps[keep], losses[keep]
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 72, 24, 48, 56
    pw, ph = width - left - right, height - top - bottom
    font, small = get_font(16), get_font(13)
    x_ticks = nice_ticks(float(steps.min()) if len(steps) else 0.0, float(steps.max()) if len(steps) else 1.0,
                         6, integer=True)
    y_ticks = nice_ticks(float(losses.min()) if len(losses) else 0.0, float(losses.max()) if len(losses) else 1.0, 6)
    (x0, x1), (y0, y1) = (x_ticks[0], x_ticks[-1]), (y_ticks[0], y_ticks[-1])

    def px(v):
        return left + (np.asarray(v) - x0) / (x1 - x0) * pw

    def py(v):
        return top + (y1 - np.asarray(v)) / (y1 - y0) * ph

    for t in x_ticks:  # grid
        img[top:top + ph, int(round(px(t)))] = _GRID
    for t in y_ticks:
        img[int(round(py(t))), left:left + pw] = _GRID
    window = smooth_window or default_window(len(losses))
    legend = [(_RAW, 1, "loss per step")]
    if len(steps) == 1:  # a line needs two points: mark the one
        x, y = int(round(px(steps[0]))), int(round(py(losses[0])))
        img[max(0, y - 2):y + 3, max(0, x - 2):x + 3] = _SMOOTH
    elif len(steps):
        _line(img, px(steps), py(losses), _RAW)
        if window > 1:
            _line(img, px(steps), py(smooth(losses, window)), _SMOOTH, width=2)
            legend.append((_SMOOTH, 2, f"mean of the last {window} steps"))
    img[top:top + ph + 1, left] = _AXIS
    img[top + ph, left:left + pw + 1] = _AXIS
    with draw_on(img) as draw:
        if draw is not None:
            draw.text((left, 14), title, fill=_TEXT, font=font)
            x_step, y_step = x_ticks[1] - x_ticks[0], y_ticks[1] - y_ticks[0]
            for t in x_ticks:
                draw.line([(px(t), top + ph), (px(t), top + ph + 5)], fill=_AXIS)
                draw.text((px(t), top + ph + 8), _tick_label(t, x_step), fill=_TEXT, font=small, anchor="mt")
            for t in y_ticks:
                draw.line([(left - 5, py(t)), (left, py(t))], fill=_AXIS)
                draw.text((left - 8, py(t)), _tick_label(t, y_step), fill=_TEXT, font=small, anchor="rm")
            draw.text((left + pw / 2, height - 10), "step", fill=_TEXT, font=font, anchor="ms")
            draw.text((left - 8, top - 8), "loss", fill=_TEXT, font=font, anchor="rs")
            _legend(draw, small, left + pw - 12, top + 10, legend, text_width)
    path = Path(path)
    write_atomic(path, png_bytes(img))
    return path


def _legend(draw, font, right: float, top: float, entries, text_width) -> None:
    """A boxed legend whose top-right corner is (right, top): a line sample and a label per entry."""
    sample, pad, row = 28, 8, 20
    inner = sample + 8 + max(text_width(label, font) for _, _, label in entries)
    box = (right - inner - 2 * pad, top, right, top + 2 * pad + row * len(entries) - 6)
    draw.rectangle(box, fill=(255, 255, 255), outline=(190, 190, 190))
    for k, (colour, w, label) in enumerate(entries):
        y = top + pad + 7 + k * row
        draw.line([(box[0] + pad, y), (box[0] + pad + sample, y)], fill=colour, width=w)
        draw.text((box[0] + pad + sample + 8, y), label, fill=_TEXT, font=font, anchor="lm")
