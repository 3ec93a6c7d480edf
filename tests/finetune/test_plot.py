"""loss.png a person can read: title, axis names, round ticks, grid, raw and smoothed curves, legend."""

from __future__ import annotations

import numpy as np
import pytest

from tttgraph.finetune.plot import _GRID, _RAW, _SMOOTH, default_window, loss_curve_png, nice_ticks, smooth
from tttgraph.generate.video_io import read_png


def test_smooth_is_a_trailing_mean_over_every_step():
    np.testing.assert_allclose(smooth([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(smooth([1, 2, 3, 4], 10), [1, 1.5, 2, 2.5])  # the window is cut at the start
    np.testing.assert_allclose(smooth([0.5, 0.25], 1), [0.5, 0.25])
    assert [default_window(n) for n in (6, 300, 5000)] == [1, 15, 50]
    with pytest.raises(ValueError, match="window must be >= 1"):
        smooth([1.0], 0)


def test_ticks_are_round_and_cover_the_range():
    assert nice_ticks(1, 300, 6, integer=True) == [0, 100, 200, 300]
    np.testing.assert_allclose(nice_ticks(0.173, 0.914, 6), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(1, 6, 6, integer=True) == [1, 2, 3, 4, 5, 6]
    assert nice_ticks(1, 1, 6, integer=True) == [0, 1, 2]  # one step: a range around it


def _dark(region: np.ndarray) -> int:
    return int((region.astype(int).sum(axis=-1) < 3 * 110).sum())


def test_the_plot_has_title_ticks_axis_names_grid_curves_and_legend(tmp_path):
    pytest.importorskip("PIL")  # the text is drawn with Pillow
    rng = np.random.default_rng(0)
    steps = np.arange(1, 301)
    losses = 0.2 + 0.7 * np.exp(-steps / 40) + rng.uniform(-0.05, 0.2, 300) * np.exp(-steps / 400)
    path = loss_curve_png(steps, losses, tmp_path / "loss.png", title="stage 3s: training loss")
    img = read_png(path)
    assert img.shape == (480, 800, 3)
    left, top, pw, ph = 72, 48, 800 - 72 - 24, 480 - 48 - 56
    assert _dark(img[:top - 12, left:]) > 100  # the title
    assert _dark(img[top + ph + 8:top + ph + 26, left - 10:left + pw + 10]) > 60  # x tick labels 0 100 200 300
    assert _dark(img[top - 8:top + ph + 8, :left - 6]) > 60  # y tick labels
    assert _dark(img[480 - 26:, left + pw // 2 - 30:left + pw // 2 + 30]) > 20  # "step"
    assert _dark(img[top - 26:top - 6, :left]) > 20  # "loss"
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert {_GRID, _RAW, _SMOOTH} <= colours
    grid_rows = [y for y in range(top, top + ph) if (img[y, left + 1:left + pw] == _GRID).all(-1).mean() > 0.5]
    assert len(grid_rows) >= 4  # horizontal grid lines at the loss ticks
    legend = img[top + 10:top + 70, left + pw - 260:left + pw - 12]
    assert (legend == _SMOOTH).all(-1).sum() > 40 and _dark(legend) > 60  # line samples and their labels


def test_short_and_degenerate_runs_still_give_a_picture(tmp_path):
    for steps, losses in (([1], [0.9]), ([1, 2, 3], [0.5, float("nan"), 0.4]), ([], [])):
        img = read_png(loss_curve_png(steps, losses, tmp_path / "loss.png", width=400, height=300))
        assert img.shape == (300, 400, 3)
