"""Text on the uint8 RGB pictures tttgraph writes (the generation contact sheet, the loss curve).

Pillow draws the text with its bundled scalable font (Aileron; Pillow >= 10.1, older ones fall back
to their small bitmap font). Pillow comes with diffusers, which fine-tuning and generation need;
where it is missing the pictures are still written, without their text.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


@functools.lru_cache(maxsize=16)
def get_font(size: int) -> Any:
    """Pillow's default font at ``size`` pixels, or None without Pillow."""
    try:
        from PIL import ImageFont
    except ImportError:
        return None
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def text_width(text: str, font: Any) -> float:
    """Width in pixels of ``text`` in ``font`` (0 without a font)."""
    return float(font.getlength(text)) if font is not None else 0.0


def line_height(font: Any) -> int:
    """Pixels from one line of ``font`` to the next."""
    if font is None:
        return 0
    ascent, descent = font.getmetrics()
    return int(ascent + descent + max(2, (ascent + descent) // 5))


def _ellipsize(text: str, font: Any, width: float) -> str:
    if text_width(text, font) <= width:
        return text
    while text and text_width(text + "…", font) > width:
        text = text[:-1]
    return text.rstrip() + "…"


def wrap(text: str, font: Any, width: float, max_lines: int) -> list[str]:
    """``text`` broken at spaces into at most ``max_lines`` lines of at most ``width`` pixels, the
    last one cut with an ellipsis if the text does not fit."""
    words, lines, current = text.split(), [], ""
    for word in words:
        candidate = f"{current} {word}".strip()
        if text_width(candidate, font) <= width or not current:
            current = candidate
            continue
        lines.append(current)
        current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [" ".join(lines[max_lines - 1:])]
    return [_ellipsize(line, font, width) for line in lines]


@contextmanager
def draw_on(image: np.ndarray) -> Iterator[Any]:
    """An ``ImageDraw.Draw`` on ``image`` (uint8 [H, W, 3]); what it draws is copied into ``image``
    when the block ends. Yields None without Pillow (draw nothing then)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        yield None
        return
    picture = Image.fromarray(image)
    yield ImageDraw.Draw(picture)
    image[...] = np.asarray(picture)
