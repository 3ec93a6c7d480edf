"""SequenceLayout reorderings, the TTT-MLP layer and its gated bidirectional wrapper."""

from __future__ import annotations

import pytest
import torch

from tttgraph import TTTMLP, GatedBidirectionalTTT, SequenceLayout, TTTGraphError
from tttgraph.rope import video_rope_angles

LAYOUTS = {
    "cogvideox-like": SequenceLayout(3, 4, frames_per_segment=2, overlap_frames=1),
    "video-first": SequenceLayout(2, 3, frames_per_segment=3, overlap_frames=0, text_first=False),
    "one-segment": SequenceLayout(5, 4),
    "no-text": SequenceLayout(0, 4, frames_per_segment=2),
}


def test_segments_of_the_reference_63s_video():
    layout = SequenceLayout(226, 1350, frames_per_segment=12, overlap_frames=1)
    assert layout.num_segments(253) == 21
    windows = layout.attention_windows(253)
    assert windows[0] == (0, 13) and windows[1] == (12, 25) and windows[-1] == (240, 253)
    owned = layout.owned_frames(253)
    assert [f for a, b in owned for f in range(a, b)] == list(range(253))
    chunks = layout.ttt_chunk_frames(253)
    assert chunks[0] == (0, 13) and chunks[1] == (13, 25) and chunks[-1] == (241, 253)
    assert layout.total_tokens(253) == 21 * 226 + 253 * 1350


@pytest.mark.parametrize(
    "frames, segments, last", [(13, 1, (0, 13)), (14, 2, (12, 14)), (5, 1, (0, 5)), (26, 3, (24, 26))]
)
def test_short_last_segment_is_not_an_error(frames, segments, last):
    layout = SequenceLayout(2, 1, frames_per_segment=12, overlap_frames=1)
    assert layout.num_segments(frames) == segments
    assert layout.attention_windows(frames)[-1] == last


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("frames", [1, 4, 5])
def test_interleave_round_trips_and_orders_segments(name, frames):
    layout = LAYOUTS[name]
    n = layout.total_tokens(frames)
    x = torch.arange(n, dtype=torch.float32)[None, :, None].expand(2, n, 3)
    for reverse in (False, True):
        seq = layout.interleave(x, frames, reverse=reverse)
        assert torch.equal(layout.deinterleave(seq, frames, reverse=reverse), x)
        assert sorted(seq[0, :, 0].tolist()) == list(range(n))  # a permutation
    assert torch.equal(layout.reverse(layout.reverse(x, frames), frames), x)

    # Forward order [txt_0 | vid_0 | txt_1 | vid_1 ...] and reverse order [txt_{n-1} | flipped video
    # cut into the same chunk sizes | ...], built by hand.
    text, video = layout.split(x, frames)
    lt, tpf = layout.text_tokens_per_segment, layout.video_tokens_per_frame
    chunks = layout.ttt_chunk_frames(frames)
    n = len(chunks)
    flipped = video.flip(1)
    pieces, rev_pieces = [], []
    for i, (a, b) in enumerate(chunks):
        pieces += [text[:, i * lt : (i + 1) * lt], video[:, a * tpf : b * tpf]]
        rev_pieces += [text[:, (n - 1 - i) * lt : (n - i) * lt], flipped[:, a * tpf : b * tpf]]
    assert torch.equal(layout.interleave(x, frames), torch.cat(pieces, 1))
    assert torch.equal(layout.interleave(x, frames, reverse=True), torch.cat(rev_pieces, 1))
    assert torch.equal(layout.interleave(layout.reverse(x, frames), frames), layout.interleave(x, frames, True))


def test_reverse_flips_video_and_text_chunks_but_not_tokens_inside_a_chunk():
    layout = SequenceLayout(2, 1, frames_per_segment=1)
    x = torch.arange(2 * 3 + 3, dtype=torch.float32)[None, :, None]  # 3 frames: text 0..5, video 6..8
    assert layout.reverse(x, 3)[0, :, 0].tolist() == [4, 5, 2, 3, 0, 1, 8, 7, 6]
    # The reverse TTT order is the forward order of the reversed sequence.
    assert torch.equal(layout.interleave(layout.reverse(x, 3), 3), layout.interleave(x, 3, reverse=True))


def test_layout_errors_name_the_problem():
    layout = SequenceLayout(3, 4, frames_per_segment=2)
    with pytest.raises(TTTGraphError, match=r"expected a joint sequence \[B, 22, C\] for 4 frames"):
        layout.split(torch.zeros(1, 24, 2), 4)
    with pytest.raises(TTTGraphError, match="fits no frame count"):
        layout.infer_num_frames(24)
    assert layout.infer_num_frames(22) == 4
    with pytest.raises(TTTGraphError, match="video_tokens_per_frame must be >= 1"):
        SequenceLayout(3, 0)


def _layer(layout, **kw):
    torch.manual_seed(0)
    kw.setdefault("mini_batch_size", 8)
    return GatedBidirectionalTTT(32, 4, layout, **kw)


def test_gates_at_zero_give_the_identity():
    layout = LAYOUTS["cogvideox-like"]
    layer = _layer(layout, rope_grid=(2, 2))
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "gate" in name:
                p.zero_()
    x = torch.randn(2, layout.total_tokens(5), 32)
    assert torch.equal(layer(x), x)


def test_gate_init_and_parameter_count_of_cogvideox_5b_layer():
    with torch.device("meta"):
        layer = GatedBidirectionalTTT(3072, 48, SequenceLayout(226, 1350, 12, 1), rope_grid=(30, 45))
    n = sum(p.numel() for p in layer.parameters())
    assert 39.4e6 < n < 39.6e6  # docs/DESIGN.md §3: ~39.5M per CogVideoX-5B layer
    assert layer.ttt.hidden_dim == 256 and layer.ttt.head_dim == 64


def test_unidirectional_is_causal_over_mini_batches_and_bidirectional_is_not():
    layout = LAYOUTS["cogvideox-like"]
    frames = 5
    n = layout.total_tokens(frames)
    x = torch.randn(1, n, 32)
    x2 = x.clone()
    last = layout.interleave_index(frames)[-1]  # the last token the TTT reads
    x2[:, last] += 1.0
    first_tokens = layout.interleave_index(frames)[:8]  # first mini-batch (8 tokens)
    uni = _layer(layout, bidirectional=False)
    assert torch.equal(uni(x)[:, first_tokens], uni(x2)[:, first_tokens])
    bi = _layer(layout)
    assert not torch.allclose(bi(x)[:, first_tokens], bi(x2)[:, first_tokens])


def test_every_parameter_gets_a_gradient_and_input_too():
    layout = LAYOUTS["video-first"]
    layer = _layer(layout, rope_grid=(1, 3))
    x = torch.randn(2, layout.total_tokens(5), 32, requires_grad=True)
    layer(x).square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_ttt_mlp_layer_eta_and_shapes():
    torch.manual_seed(0)
    layer = TTTMLP(24, 3, mini_batch_size=16, base_lr=0.1)
    assert layer.head_dim == 8 and layer.hidden_dim == 32
    y = layer(torch.randn(2, 37, 24))
    assert y.shape == (2, 37, 24) and torch.isfinite(y).all()
    with pytest.raises(TTTGraphError, match="width=25 is not divisible by num_heads=3"):
        TTTMLP(25, 3)


def test_rope_rotates_video_tokens_only_and_by_position():
    angles = video_rope_angles(2, (2, 3), 16)
    assert angles.shape == (12, 8)
    assert torch.equal(angles[0], torch.zeros(8))  # frame 0, row 0, col 0
    assert not torch.equal(angles[6], angles[0])  # frame 1
    layer = _layer(SequenceLayout(3, 6, frames_per_segment=1), rope_grid=(2, 3))
    # TTT order [txt_0 | vid_0 | txt_1 | vid_1]: text rows are identities
    cos, sin = layer._rope(layer.layout, 2, layer.rope_grid, "cpu")
    text_rows = torch.tensor([0, 1, 2, 9, 10, 11])
    assert torch.equal(cos[text_rows], torch.ones(6, 4)) and torch.equal(sin[text_rows], torch.zeros(6, 4))
    video = video_rope_angles(2, (2, 3), 8).cos().float()  # the layer's head dim: 32 / 4
    assert torch.equal(cos[3:9], video[:6]) and torch.equal(cos[12:], video[6:])
    with pytest.raises(TTTGraphError, match=r"rope_grid=\(2, 2\) has 4 tokens per frame"):
        _layer(SequenceLayout(3, 6), rope_grid=(2, 2))


@pytest.mark.parametrize("fold", ["hw", "t"])
def test_folded_video_equals_the_unfolded_layer(fold):
    layout = SequenceLayout(0, 6, frames_per_segment=2)
    b, frames, patches = 2, 4, 6
    folded = _layer(layout, rope_grid=(2, 3), fold=fold, fold_batch=b)
    plain = _layer(layout, rope_grid=(2, 3))
    plain.load_state_dict(folded.state_dict())
    video = torch.randn(b, frames, patches, 32)  # frame-major video
    if fold == "hw":
        x = video.reshape(b * frames, patches, 32)
    else:
        x = video.transpose(1, 2).reshape(b * patches, frames, 32)
    expected = plain(video.reshape(b, frames * patches, 32)).reshape(b, frames, patches, 32)
    got = folded(x)
    got = got.reshape(b, frames, patches, 32) if fold == "hw" else got.reshape(b, patches, frames, 32).transpose(1, 2)
    torch.testing.assert_close(got, expected)
    with pytest.raises(TTTGraphError, match="carries no text"):
        _layer(SequenceLayout(2, 6), fold=fold)


def _recall_after_training(with_value: bool, steps: int = 60) -> float:
    """benchmarks/ttt_recall.py's task at small sizes (3 noise mini-batches of 16 between key + value and the
    key's second appearance), trained ``steps`` steps; with ``with_value=False`` the value is never shown."""
    from tests.benchmark_scripts import load_benchmark

    task = load_benchmark("ttt_recall").RecallTask(64, 2, 16, 3)
    if not with_value:
        task.values.zero_()
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        task.step(gen)
    return task.recall(*task.sample(256, torch.Generator().manual_seed(2)))


def test_ttt_learns_to_carry_a_one_shot_association_across_distractor_mini_batches():
    """What the paper asks of the layer across segments: a value read once is recalled three mini-batches of
    noise later (the inner model's weights are the only path), and is not without the value (the control)."""
    assert _recall_after_training(with_value=True) > 0.9
    assert _recall_after_training(with_value=False) < 0.4
