"""MP4 and PNG writers: read back, exact sizes and fps, bit-exact files, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest

from tttgraph.errors import TTTGraphError
from tttgraph.generate.video_io import (
    contact_sheet,
    read_mp4,
    read_png,
    segment_frame_indices,
    write_mp4,
    write_png,
)


def _frames(t=33, h=32, w=48):
    """Smooth colour gradients drifting over time (what H.264 at yuv420p keeps well)."""
    yy, xx, tt = np.meshgrid(np.arange(h), np.arange(w), np.arange(t), indexing="ij")
    rgb = np.stack([4 * xx + 2 * tt, 6 * yy + tt, 128 + 2 * xx - 2 * yy], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8).transpose(2, 0, 1, 3).copy()


def test_mp4_round_trip_has_the_frames_size_and_fps(tmp_path):
    frames = _frames()
    path = write_mp4(frames, tmp_path / "v.mp4", fps=16)
    back, fps = read_mp4(path)
    assert back.shape == frames.shape and fps == 16.0
    # H.264 is lossy; smooth content comes back close.
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 3
    assert not list(tmp_path.glob(".*"))  # the temporary file was renamed, nothing left behind


def test_mp4_is_bit_exact_for_the_same_frames(tmp_path):
    frames = _frames()
    a, b = write_mp4(frames, tmp_path / "a.mp4"), write_mp4(frames, tmp_path / "b.mp4")
    assert a.read_bytes() == b.read_bytes()


def test_mp4_refuses_bad_frames(tmp_path):
    with pytest.raises(TTTGraphError, match="even frame sizes, got 47x32"):
        write_mp4(_frames(w=47), tmp_path / "v.mp4")
    with pytest.raises(TTTGraphError, match=r"uint8 array \[T, H, W, 3\]"):
        write_mp4(np.zeros((3, 8, 8, 3), np.float32), tmp_path / "v.mp4")
    assert not (tmp_path / "v.mp4").exists()


def test_png_round_trip_and_contact_sheet_layout(tmp_path):
    frames = _frames(t=97)
    idx = segment_frame_indices(97, 2)
    assert idx == [24, 72]
    sheet = contact_sheet(frames, [0, 10, 20, 30, 40, 50, 60, 70, 80], columns=7, min_tile_height=96, gap=4)
    # 32-pixel frames are upscaled 3x to 96x144; 9 tiles in 7 columns -> 2 rows.
    assert sheet.shape == (2 * 96 + 3 * 4, 7 * 144 + 8 * 4, 3)
    assert np.array_equal(sheet[4:100, 4:148], frames[0].repeat(3, 0).repeat(3, 1))
    path = write_png(sheet, tmp_path / "s.png")
    assert np.array_equal(read_png(path), sheet)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_videos_and_pngs_raise_one_clear_error(tmp_path, damage):
    frames = np.random.default_rng(0).integers(0, 255, (9, 16, 24, 3), dtype=np.uint8)
    video, png = write_mp4(frames, tmp_path / "v.mp4"), write_png(frames[0], tmp_path / "p.png")
    for path, read in ((video, read_mp4), (png, read_png)):
        data = path.read_bytes()
        path.write_bytes({"truncated": data[: len(data) // 3], "empty": b"", "garbage": b"\xff" * 500}[damage])
        with pytest.raises(TTTGraphError, match=str(path.name)):
            read(path)
    with pytest.raises(TTTGraphError, match="does not exist"):
        read_mp4(tmp_path / "missing.mp4")


def test_a_missing_mp4_writer_is_named_up_front(monkeypatch):
    """Long jobs that write MP4s only at the end (benchmarks/world_results.py) ask first."""
    import sys

    from tttgraph.generate.video_io import require_mp4_writer

    require_mp4_writer()  # installed here (the dev extra)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if it were not installed
    with pytest.raises(TTTGraphError, match=r"imageio-ffmpeg .*pip install 'tttgraph\[video\]'"):
        require_mp4_writer()
