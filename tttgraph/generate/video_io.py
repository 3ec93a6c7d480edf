"""Video output: MP4 (H.264 through imageio-ffmpeg) and a PNG contact sheet.

Frames are uint8 ``[T, H, W, 3]`` (RGB). Both writers write to a temporary file next to the
target and rename it, so a reader never sees a half-written video. The PNG encoder is a few lines
of zlib (no imaging library needed). The MP4 is bit-exact for the same frames (ffmpeg's
``bitexact`` flags keep version strings and timestamps out of the file).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from tttgraph.config import atomic_path
from tttgraph.errors import TTTGraphError

DEFAULT_FPS = 16


def _imageio_ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError:
        raise TTTGraphError(
            "writing MP4 needs imageio-ffmpeg (it bundles an ffmpeg binary): pip install 'tttgraph[video]'"
        ) from None
    return imageio_ffmpeg


def require_mp4_writer() -> None:
    """Raise the error :func:`write_mp4` would, now: for jobs that write their videos only after long work."""
    _imageio_ffmpeg()


def _atomic_path(path: Path):
    """A temporary path beside ``path`` with its suffix (ffmpeg and PNG writers go by it), readable
    like any new file, that replaces ``path`` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_path(path, suffix=path.suffix)


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise TTTGraphError(
            f"frames must be a uint8 array [T, H, W, 3], got {getattr(frames, 'dtype', type(frames))} "
            f"{getattr(frames, 'shape', '')}"
        )
    if frames.shape[0] < 1:
        raise TTTGraphError("no frames to write")


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: int = DEFAULT_FPS, quality: int = 8) -> Path:
    """Write uint8 [T, H, W, 3] frames as an H.264 MP4 (yuv420p) at ``fps``; returns the path.

    H and W must be even (yuv420p stores colour at half resolution).
    """
    _check_frames(frames)
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise TTTGraphError(f"MP4 (yuv420p) needs even frame sizes, got {w}x{h}; choose an even --height/--width")
    path = Path(path)
    ffmpeg = _imageio_ffmpeg()
    with _atomic_path(path) as tmp:
        writer = ffmpeg.write_frames(
            str(tmp), (w, h), fps=fps, codec="libx264", quality=quality, macro_block_size=2,
            output_params=["-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1"],
        )  # fmt: skip
        writer.send(None)  # start ffmpeg
        try:
            for frame in frames:
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()
    return path


def read_mp4(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """(uint8 frames [T, H, W, 3], fps) of a video file; a missing or damaged file raises TTTGraphError."""
    from tttgraph.safe_read import check_file

    fix = "write the video again (tttgraph generate), or pass another file"
    check_file(Path(path), "video", fix, TTTGraphError)
    ffmpeg = _imageio_ffmpeg()
    try:
        reader = ffmpeg.read_frames(str(path))
        meta = next(reader)
        w, h = meta["size"]
        frames = [np.frombuffer(buf, np.uint8).reshape(h, w, 3) for buf in reader]
    except (RuntimeError, OSError, StopIteration, ValueError, KeyError) as err:  # ffmpeg's view of a bad file
        raise TTTGraphError(f"video {path} can't be decoded ({type(err).__name__}: {str(err)[:200]}); {fix}") from None
    if not frames:
        raise TTTGraphError(f"video {path} holds no frames; {fix}")
    return np.stack(frames), float(meta["fps"])


def write_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 [H, W, 3] RGB image as a PNG (atomically); returns the path."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise TTTGraphError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + np.ascontiguousarray(row).tobytes() for row in image)  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    path = Path(path)
    with _atomic_path(path) as tmp:
        tmp.write_bytes(png)
    return path


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Read back a PNG written by :func:`write_png` (8-bit RGB, no interlace) as uint8 [H, W, 3]."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise TTTGraphError(f"{path} is not a PNG file")
    try:
        return _decode_png(data, path)
    except TTTGraphError:
        raise
    except (struct.error, zlib.error, ValueError, TypeError) as err:
        raise TTTGraphError(f"{path} is a damaged PNG ({type(err).__name__}: {err}); write it again") from None


def _decode_png(data: bytes, path) -> np.ndarray:
    """The pixels of PNG ``data`` (its signature checked); a cut-off file fails in struct or zlib."""
    pos, idat, size = 8, b"", None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            w, h, depth, colour = struct.unpack(">IIBB", body[:10])
            if (depth, colour) != (8, 2):
                raise TTTGraphError(f"{path}: only 8-bit RGB PNGs are read here")
            size = (h, w)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    h, w = size
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 3 * w)
    if rows[:, 0].any():
        raise TTTGraphError(f"{path}: PNG row filters other than 'none' are not read here")
    return rows[:, 1:].reshape(h, w, 3).copy()


LABEL_LINES = 3  # per tile: the first label line, then up to 2 lines for the rest (a wrapped scene title)
TITLE_LINES = 3  # the sheet's title, wrapped where the grid is narrower than it
_TEXT, _TEXT_DIM = (235, 235, 235), (165, 170, 180)


def _label_font_size(tile_width: int) -> int:
    # About 24 characters across a tile: 12 px text under a 144 px tile, 30 px under a 720 px one.
    return max(12, min(30, tile_width // 12))


def contact_sheet(frames: np.ndarray, indices: list[int], columns: int = 7, min_tile_height: int = 96,
                  gap: int = 4, labels: list[list[str]] | None = None, title: str = "") -> np.ndarray:
    """A grid of the frames at ``indices`` (row-major), upscaled by an integer factor (nearest
    neighbour) so that tiny videos are visible; uint8 [H', W', 3] on a dark background.

    ``labels[n]`` (optional) are the lines printed under tile ``n``: the first as is, the others
    wrapped to the tile's width (``LABEL_LINES`` lines in all, cut with an ellipsis beyond).
    ``title`` is printed above the grid, wrapped to ``TITLE_LINES`` lines where the grid is narrow.
    Text needs Pillow (see :mod:`tttgraph.drawing`).
    """
    from tttgraph.drawing import get_font, line_height, wrap

    _check_frames(frames)
    if not indices:
        raise TTTGraphError("a contact sheet needs at least one frame index")
    if labels is not None and len(labels) != len(indices):
        raise TTTGraphError(f"{len(labels)} labels for {len(indices)} tiles; pass one list of lines per tile")
    _, h, w, _ = frames.shape
    scale = max(1, -(-min_tile_height // h))
    th, tw = h * scale, w * scale
    font = get_font(_label_font_size(tw))
    step = line_height(font)
    label_h = LABEL_LINES * step + gap if labels is not None and font is not None else 0
    columns = max(1, min(columns, len(indices)))
    width = columns * tw + (columns + 1) * gap
    title_lines = wrap(title, font, width - 2 * gap, TITLE_LINES) if title and font is not None else []
    title_h = len(title_lines) * step + 2 * gap if title_lines else 0
    rows = -(-len(indices) // columns)
    cell_h = th + label_h
    sheet = np.full((title_h + rows * cell_h + (rows + 1) * gap, width, 3), 24, np.uint8)
    for n, i in enumerate(indices):
        r, c = divmod(n, columns)
        tile = frames[i].repeat(scale, axis=0).repeat(scale, axis=1)
        y, x = title_h + gap + r * (cell_h + gap), gap + c * (tw + gap)
        sheet[y:y + th, x:x + tw] = tile
    if font is not None and (labels is not None or title_lines):
        _draw_labels(sheet, labels or [], columns, (title_h, th, tw, cell_h, gap, step), font, title_lines)
    return sheet


def _draw_labels(sheet: np.ndarray, labels: list[list[str]], columns: int, geometry: tuple[int, ...], font,
                 title_lines: list[str]) -> None:
    from tttgraph.drawing import draw_on, wrap

    title_h, th, tw, cell_h, gap, step = geometry
    with draw_on(sheet) as draw:
        if draw is None:
            return
        for k, text in enumerate(title_lines):
            draw.text((gap, gap + k * step), text, fill=_TEXT, font=font)
        for n, lines in enumerate(labels):
            r, c = divmod(n, columns)
            x, y = gap + c * (tw + gap), title_h + gap + r * (cell_h + gap) + th + gap // 2
            head, rest = (lines[0] if lines else ""), " ".join(lines[1:])
            shown = wrap(head, font, tw, 1) + (wrap(rest, font, tw, LABEL_LINES - 1) if rest else [])
            for k, text in enumerate(shown):
                draw.text((x, y + k * step), text, fill=_TEXT if k == 0 else _TEXT_DIM, font=font)


def segment_frame_indices(num_frames: int, segments: int) -> list[int]:
    """The middle frame of each of ``segments`` equal spans of a ``num_frames`` video (one per 3 s)."""
    return [min(num_frames - 1, int((s + 0.5) * num_frames / segments)) for s in range(segments)]
