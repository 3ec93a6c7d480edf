"""Segment-local attention against a per-segment loop written independently here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tttgraph.layout import SequenceLayout
from tttgraph.segment_attention import cross_attention_index, segment_sdpa, self_attention_index


def _loop_self_attention(q, k, v, layout, frames):
    """Per segment: slice its text chunk and window frames, attend, average shared tokens."""
    lt, tpf = layout.text_tokens_per_segment, layout.video_tokens_per_frame
    nt = layout.text_tokens(frames)
    text_at = 0 if layout.text_first else layout.video_tokens(frames)
    video_at = nt if layout.text_first else 0
    out = torch.zeros_like(q)
    hits = torch.zeros(q.shape[2])
    for i, (a, b) in enumerate(layout.attention_windows(frames)):
        idx = [*range(text_at + i * lt, text_at + (i + 1) * lt), *range(video_at + a * tpf, video_at + b * tpf)]
        o = F.scaled_dot_product_attention(q[:, :, idx], k[:, :, idx], v[:, :, idx])
        out[:, :, idx] += o
        hits[idx] += 1
    return out / hits[:, None]


@pytest.mark.parametrize(
    "layout, frames",
    [
        (SequenceLayout(3, 4, frames_per_segment=2, overlap_frames=1), 5),  # 2 full segments
        (SequenceLayout(3, 4, frames_per_segment=2, overlap_frames=1), 6),  # shorter last segment
        (SequenceLayout(2, 3, frames_per_segment=3, text_first=False), 7),
        (SequenceLayout(0, 4, frames_per_segment=2, overlap_frames=1), 4),
        (SequenceLayout(3, 4), 3),
    ],
    ids=["even", "short-last", "video-first", "video-only", "one-segment"],
)
def test_self_attention_matches_loop_and_backward_runs(layout, frames):
    n = layout.total_tokens(frames)
    q, k, v = (torch.randn(2, 3, n, 8, requires_grad=True) for _ in range(3))
    out = segment_sdpa(q, k, v, self_attention_index(layout, frames))
    expected = _loop_self_attention(q, k, v, layout, frames)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(expected, (q, k, v), g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_one_segment_equals_full_attention():
    layout = SequenceLayout(3, 4)
    q, k, v = (torch.randn(1, 2, layout.total_tokens(3), 8) for _ in range(3))
    torch.testing.assert_close(
        segment_sdpa(q, k, v, self_attention_index(layout, 3)), F.scaled_dot_product_attention(q, k, v)
    )


def test_segments_do_not_see_each_other():
    layout = SequenceLayout(2, 3, frames_per_segment=2, overlap_frames=1)
    frames = 5  # windows [0,3), [2,5)
    n = layout.total_tokens(frames)
    q, k, v = (torch.randn(1, 2, n, 8) for _ in range(3))
    index = self_attention_index(layout, frames)
    base = segment_sdpa(q, k, v, index)
    v2 = v.clone()
    v2[:, :, 2:4] += 1.0  # text chunk 1
    v2[:, :, 4 + 4 * 3 :] += 1.0  # frame 4, only in the last window
    changed = segment_sdpa(q, k, v2, index)
    seg0_only = list(range(0, 2)) + list(range(4, 4 + 2 * 3))  # text 0 and frames 0, 1
    assert torch.equal(base[:, :, seg0_only], changed[:, :, seg0_only])
    assert not torch.allclose(base[:, :, 4 + 2 * 3 : 4 + 3 * 3], changed[:, :, 4 + 2 * 3 : 4 + 3 * 3])  # frame 2


def test_cross_attention_each_window_reads_its_own_text_chunk():
    layout = SequenceLayout(2, 3, frames_per_segment=2, overlap_frames=1)
    frames = 5
    q = torch.randn(1, 2, layout.video_tokens(frames), 8)
    k, v = (torch.randn(1, 2, layout.text_tokens(frames), 8) for _ in range(2))
    out = segment_sdpa(q, k, v, cross_attention_index(layout, frames))
    tpf, windows = 3, layout.attention_windows(frames)
    for i, (a, b) in enumerate(windows):
        rows = slice(a * tpf, b * tpf)
        ref = F.scaled_dot_product_attention(q[:, :, rows], k[:, :, 2 * i : 2 * i + 2], v[:, :, 2 * i : 2 * i + 2])
        # Rows of frames in this window only; the shared frame gets the mean of both windows.
        own = [r for r in range(a * tpf, b * tpf) if sum(x <= r // tpf < y for x, y in windows) == 1]
        torch.testing.assert_close(out[:, :, own], ref[:, :, [r - a * tpf for r in own]])
    shared = slice(2 * tpf, 3 * tpf)  # frame 2 is in both windows
    ref0 = F.scaled_dot_product_attention(q[:, :, shared], k[:, :, 0:2], v[:, :, 0:2])
    ref1 = F.scaled_dot_product_attention(q[:, :, shared], k[:, :, 2:4], v[:, :, 2:4])
    torch.testing.assert_close(out[:, :, shared], (ref0 + ref1) / 2)


@pytest.mark.parametrize("mask_shape", [(2, 1, 1, None), (2, 3, None, None), (1, 1, None, None)],
                         ids=["key-padding", "full", "broadcast-batch"])
def test_masks_are_cut_into_segments(mask_shape):
    layout = SequenceLayout(3, 4, frames_per_segment=2, overlap_frames=1)
    frames = 6
    n = layout.total_tokens(frames)
    q, k, v = (torch.randn(2, 3, n, 8) for _ in range(3))
    shape = [n if s is None else s for s in mask_shape]
    mask = torch.rand(shape) > 0.3
    mask[..., : layout.text_tokens(frames)] = True  # keep at least the text keys: no empty rows
    out = segment_sdpa(q, k, v, self_attention_index(layout, frames), attn_mask=mask)
    # Reference: per segment, slice the broadcast mask like q/k.
    full = mask.expand(2, 3, n, n)
    lt, tpf, nt = 3, 4, layout.text_tokens(frames)
    expected, hits = torch.zeros_like(q), torch.zeros(n)
    for i, (a, b) in enumerate(layout.attention_windows(frames)):
        idx = torch.tensor([*range(i * lt, (i + 1) * lt), *range(nt + a * tpf, nt + b * tpf)])
        m = full[:, :, idx][:, :, :, idx]
        expected[:, :, idx] += F.scaled_dot_product_attention(q[:, :, idx], k[:, :, idx], v[:, :, idx], attn_mask=m)
        hits[idx] += 1
    torch.testing.assert_close(out, expected / hits[:, None], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("text_first", [True, False])
def test_video_scope_reads_its_own_text_chunk_and_every_frame(text_first):
    """attention_scope="video": queries are a segment's text chunk + window, keys its text chunk + all frames."""
    from tttgraph.segment_attention import whole_segment_index

    layout = SequenceLayout(3, 4, frames_per_segment=2, overlap_frames=1, text_first=text_first, global_video=True)
    frames = 5
    n, lt, nt, nv = layout.total_tokens(frames), 3, layout.text_tokens(frames), layout.video_tokens(frames)
    text_at, video_at = (0, nt) if text_first else (nv, 0)
    q, k, v = (torch.randn(2, 3, n, 8, requires_grad=True) for _ in range(3))
    expected, hits = torch.zeros(2, 3, n, 8), torch.zeros(n)
    every_frame = list(range(video_at, video_at + nv))
    for i, (a, b) in enumerate(layout.attention_windows(frames)):
        text = list(range(text_at + i * lt, text_at + (i + 1) * lt))
        rows, cols = text + list(range(video_at + a * 4, video_at + b * 4)), text + every_frame
        expected[:, :, rows] += F.scaled_dot_product_attention(q[:, :, rows], k[:, :, cols], v[:, :, cols])
        hits[rows] += 1
    expected = expected / hits[:, None]
    for index in (self_attention_index(layout, frames), whole_segment_index(layout, "self", n)):
        out = segment_sdpa(q, k, v, index)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        g = torch.randn_like(out)
        for a, b in zip(torch.autograd.grad(out, (q, k, v), g),
                        torch.autograd.grad(expected, (q, k, v), g, retain_graph=True), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_video_scope_without_text_is_global_attention():
    from tttgraph.segment_attention import segment_attend

    layout = SequenceLayout(0, 4, frames_per_segment=2, overlap_frames=1, global_video=True)
    q, k, v = (torch.randn(1, 2, layout.total_tokens(5), 8) for _ in range(3))
    torch.testing.assert_close(segment_attend(layout, "self", q, k, v), F.scaled_dot_product_attention(q, k, v))
