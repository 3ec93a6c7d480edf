"""The layer computes what the paper's code computes (test-time-training/ttt-video-dit).

The references here are written from the paper code's definitions, not from tttgraph's layout:
- ``SeqModelingBlock._ssm_forward``: the reverse pass flips the video tokens as a whole and the
  order of the text chunks (tokens inside a chunk keep their order), runs the *same* TTT module on
  that sequence and flips the result back;
- ``TTTBase.process_input``: the TTT module rotates the video part of whatever sequence it receives
  by position in that sequence (3D RoPE over (t, h, w)), the text not at all;
- ``get_interleave_offsets`` / ``TTTBase.interleave``: the sequence ``[txt_0 | vid_0 | txt_1 | ...]``
  with ``frames_per_chunk = F // n`` frames per video chunk and the remainder ``F % frames_per_chunk``
  in the first chunk.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tttgraph import GatedBidirectionalTTT, SequenceLayout
from tttgraph.rope import video_rope_angles


def paper_chunk_frames(num_frames: int, num_chunks: int) -> list[int]:
    """Video frames of each chunk of the paper's interleaved sequence (``get_interleave_offsets``)."""
    per_chunk = num_frames // num_chunks
    return [per_chunk + num_frames % per_chunk] + [per_chunk] * (num_chunks - 1)


def paper_interleave_index(num_chunks: int, text_len: int, tokens_per_frame: int, chunk_frames: list[int]):
    """[N] indices into ``[all text | all video]`` in the order ``[txt_0 | vid_0 | txt_1 | vid_1 | ...]``."""
    parts, video_start = [], num_chunks * text_len
    for i, frames in enumerate(chunk_frames):
        parts += [torch.arange(i * text_len, (i + 1) * text_len),
                  torch.arange(video_start, video_start + frames * tokens_per_frame)]
        video_start += frames * tokens_per_frame
    return torch.cat(parts)


def paper_reverse(x: torch.Tensor, num_chunks: int, text_len: int) -> torch.Tensor:
    """``_ssm_forward``'s flip of ``[text | video]`` [B, N, C]: text chunks reversed, video flipped."""
    text, video = x[:, : num_chunks * text_len], x[:, num_chunks * text_len :]
    text = text.unflatten(1, (num_chunks, text_len)).flip(1).flatten(1, 2)
    return torch.cat([text, video.flip(1)], dim=1)


def paper_rope_angles(head_dim: int, grid: tuple[int, int], frames: int, theta: float = 1e4) -> torch.Tensor:
    """[frames*h*w, head_dim/2] angles of ``precompute_freqs_cis_3d``: D/4 for t, 3D/8 each for h and w."""
    dims = (head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3)
    freqs = [1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64)[: d // 2] / d) for d in dims]
    t, h, w = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in (frames, *grid)), indexing="ij")
    return torch.cat([pos.reshape(-1, 1) * f for pos, f in zip((t, h, w), freqs, strict=True)], dim=-1)


def paper_rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """``apply_rotary_emb``: consecutive pairs as complex numbers times exp(i * angle). x [B, N, H, D].

    The rotations are rounded to complex64 as the paper's ``freqs_cis`` table is (tttgraph's cos/sin
    tables are float32 too); the rest runs in x's dtype."""
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    rotation = torch.polar(torch.ones_like(angles), angles).to(torch.complex64).to(z.dtype)
    return torch.view_as_real(z * rotation[:, None]).flatten(-2)


def paper_layer_norm(x, gamma, beta, eps):
    """``ln_fwd``: biased variance, eps inside the square root."""
    return gamma * (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps) + beta


def paper_scan(xq, xk, xv, eta, gamma, beta, w1, b1, w2, b2, mini_batch: int, eps: float) -> torch.Tensor:
    """``compute_mini_batch`` over the mini-batches: one gradient step of the inner MLP on each, its
    output from the updated weights. x* [B, H, N, D]; eta [B, H, N] per token."""
    gamma, beta = gamma[:, None], beta[:, None]
    w1, b1, w2, b2 = (p.expand(xq.shape[0], *p.shape) for p in (w1, b1[:, None], w2, b2[:, None]))
    outs = []
    for start in range(0, xq.shape[2], mini_batch):
        sl = slice(start, start + mini_batch)
        q, k, v, e = xq[:, :, sl], xk[:, :, sl], xv[:, :, sl], eta[:, :, sl, None]
        z1 = k @ w1 + b1
        x2 = F.gelu(z1, approximate="tanh")
        z2 = x2 @ w2 + b2
        with torch.enable_grad():  # d(0.5 ||LN(z2) - (v - k)||^2) / dz2, by autograd here
            z2_ = z2.detach().requires_grad_(True)
            loss = 0.5 * (paper_layer_norm(z2_, gamma, beta, eps) - (v - k)).square().sum()
            g2 = torch.autograd.grad(loss, z2_)[0]
            z1_ = z1.detach().requires_grad_(True)
            g1 = torch.autograd.grad(F.gelu(z1_, approximate="tanh"), z1_, g2 @ w2.transpose(-1, -2))[0]
        w1 = w1 - (e * k).transpose(-1, -2) @ g1
        b1 = b1 - (e * g1).sum(-2, keepdim=True)
        w2 = w2 - (e * x2).transpose(-1, -2) @ g2
        b2 = b2 - (e * g2).sum(-2, keepdim=True)
        outs.append(q + paper_layer_norm(F.gelu(q @ w1 + b1, approximate="tanh") @ w2 + b2, gamma, beta, eps))
    return torch.cat(outs, dim=2)


def paper_ttt_module(layer: GatedBidirectionalTTT, seq: torch.Tensor, num_chunks: int, grid, frames: int):
    """The paper's TTT module (``TTTBase.forward``) as a black box on a ``[text | video]`` sequence
    [B, N, C], written from its code with tttgraph's parameter values: projections, L2 norm, RoPE of
    the video part by position in ``seq``, the target ``k + LN(v - k)``, per-token eta, interleave,
    the scan, undo the interleave, post-norm and ``wo``."""
    ttt = layer.ttt
    heads, d = ttt.num_heads, ttt.head_dim
    nt = num_chunks * layer.layout.text_tokens_per_segment
    q, k, v = (lin(seq).unflatten(-1, (heads, d)) for lin in (ttt.wq, ttt.wk, ttt.wv))  # [B, N, H, D]
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    angles = paper_rope_angles(d, grid, frames)
    q = torch.cat([q[:, :nt], paper_rotate(q[:, nt:], angles)], dim=1)
    k = torch.cat([k[:, :nt], paper_rotate(k[:, nt:], angles)], dim=1)
    diff = v - k
    diff = (diff - diff.mean(-1, keepdim=True)) / (diff.std(-1, keepdim=True) + 1e-8)  # unbiased std + 1e-8
    v = k + ttt.ttt_norm_weight * diff + ttt.ttt_norm_bias
    eta = ttt.base_lr / d * torch.sigmoid(ttt.learnable_lr(seq)) / ttt.mini_batch_size  # [B, N, H]

    lt, tpf = layer.layout.text_tokens_per_segment, grid[0] * grid[1]
    order = paper_interleave_index(num_chunks, lt, tpf, paper_chunk_frames(frames, num_chunks))
    q, k, v = (t[:, order].transpose(1, 2) for t in (q, k, v))
    out = paper_scan(q, k, v, eta[:, order].transpose(1, 2), ttt.ttt_norm_weight, ttt.ttt_norm_bias,
                     ttt.w1, ttt.b1, ttt.w2, ttt.b2, ttt.mini_batch_size, ttt.eps)
    out = torch.empty_like(out).index_copy_(2, order, out)  # undo the interleave
    return ttt.wo(ttt.post_norm(out.transpose(1, 2).flatten(-2)))


def _layer(layout: SequenceLayout, grid, mini_batch: int) -> GatedBidirectionalTTT:
    torch.manual_seed(0)
    # eps 1e-8: the paper's PyTorch path (tttgraph's default 1e-6 is its training kernel's).
    layer = GatedBidirectionalTTT(32, 2, layout, mini_batch_size=mini_batch, rope_grid=grid, eps=1e-8).double()
    with torch.no_grad():  # distinct gates per direction and kind, so a swap would show; inner weights
        for i, (name, p) in enumerate(layer.named_parameters()):  # large enough that LN(MLP) matters
            if "gate" in name:
                p.uniform_(0.2 + 0.1 * i, 0.5 + 0.1 * i)
        layer.ttt.w1.normal_(0, 0.3)
        layer.ttt.w2.normal_(0, 0.3)
        layer.ttt.learnable_lr.weight.normal_(0, 0.3)
    return layer


# (S frames per segment, O overlap, F latent frames, text tokens per segment, mini-batch): F = S*n + O
# with the O extra frames, like the reference's 253 = 21 * 12 + 1; 12n + 5 with O = 5. The paper needs
# a sequence length that is a multiple of the mini-batch, chosen so here.
CASES = [(2, 1, 2 * 4 + 1, 3, 6), (3, 1, 3 * 5 + 1, 2, 6), (12, 5, 12 * 6 + 5, 3, 4), (12, 1, 12 * 2 + 1, 3, 8)]


@pytest.mark.parametrize("s, o, frames, text, mini_batch", CASES, ids=lambda v: str(v))
def test_bidirectional_layer_equals_the_papers_block(s, o, frames, text, mini_batch):
    grid = (1, 2)
    layout = SequenceLayout(text, 2, frames_per_segment=s, overlap_frames=o)
    assert layout.total_tokens(frames) % mini_batch == 0
    layer = _layer(layout, grid, mini_batch)
    n = layout.num_segments(frames)
    assert layout.ttt_chunk_frames(frames) == [
        (sum(paper_chunk_frames(frames, n)[:i]), sum(paper_chunk_frames(frames, n)[: i + 1])) for i in range(n)
    ]
    x = torch.randn(2, layout.total_tokens(frames), 32, dtype=torch.float64)

    video_mask = layout.video_mask(frames)[:, None]

    def gate(direction):
        g = torch.where(video_mask, getattr(layer, f"{direction}_gate_video"), getattr(layer, f"{direction}_gate_text"))
        return torch.tanh(g)

    z = x + gate("forward") * paper_ttt_module(layer, x, n, grid, frames)
    back = paper_reverse(paper_ttt_module(layer, paper_reverse(z, n, text), n, grid, frames), n, text)
    expected = z + gate("backward") * back
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_reverse_pass_rotates_a_token_as_if_it_sat_at_the_mirrored_position():
    """A video token at latent (t, h, w) is rotated as (T-1-t, H-1-h, W-1-w) in the reverse pass."""
    layout = SequenceLayout(2, 6, frames_per_segment=2, overlap_frames=1)
    frames, grid = 5, (2, 3)
    layer = _layer(layout, grid, 8)
    cos, _ = layer._rope(layer.layout, frames, layer.rope_grid, "cpu")  # TTT order, both directions
    angles = video_rope_angles(frames, grid, layer.ttt.head_dim)
    nt = layout.text_tokens(frames)
    for reverse in (False, True):
        order = layout.interleave_index(frames, reverse=reverse)
        for pos, joint in enumerate(order.tolist()):
            if joint < nt:
                assert torch.equal(cos[pos], torch.ones_like(cos[pos]))
                continue
            token = joint - nt  # (t, h, w) of this video token, flattened
            rotated_as = (frames * 6 - 1 - token) if reverse else token  # its mirror in the flipped video
            assert torch.allclose(cos[pos], angles[rotated_as].cos().float()), (reverse, pos)


@pytest.mark.parametrize(
    "frames, chunks, reverse_first_chunk",
    [
        (12 * 21 + 1, [13] + [12] * 20, (240, 253)),  # the reference's 63 s: the extra frame leads
        (12 * 2 + 1, [13, 12], (12, 25)),
        # O = 1: a third, shorter segment of 5 frames. The paper's code has no such case; the reverse
        # pass still reads the flipped video in the forward chunk sizes (so its first chunk is 12 frames).
        (12 * 2 + 5, [12, 12, 5], (17, 29)),
    ],
)
def test_ttt_chunks_give_the_extra_frames_to_the_first_chunk_and_keep_a_short_last_one(frames, chunks,
                                                                                      reverse_first_chunk):
    layout = SequenceLayout(2, 1, frames_per_segment=12, overlap_frames=1)
    got = layout.ttt_chunk_frames(frames)
    assert [b - a for a, b in got] == chunks
    assert got[0][0] == 0 and got[-1][1] == frames
    # The reverse order: the last segment's text chunk, then the flipped video cut with the same sizes.
    order = layout.interleave_index(frames, reverse=True).tolist()
    nt = layout.text_tokens(frames)
    assert order[:2] == [nt - 2, nt - 1]
    first_video = order[2 : 2 + chunks[0]]
    assert first_video == [nt + f for f in reversed(range(frames - chunks[0], frames))]
    assert (frames - chunks[0], frames) == reverse_first_chunk


def test_twelve_n_plus_five_with_five_overlap_frames_matches_the_paper_offsets():
    layout = SequenceLayout(2, 1, frames_per_segment=12, overlap_frames=5)
    frames = 12 * 6 + 5
    assert [b - a for a, b in layout.ttt_chunk_frames(frames)] == paper_chunk_frames(frames, 6) == [17] + [12] * 5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda_sm90"])
def test_every_backend_computes_the_same_layer(backend):
    """The layer's semantics live above the op: each backend, fed the same TTT sequences in both
    directions, gives the reference backend's layer output and gradients (the same precision for
    both, so only the scan differs: bf16 autocast for the bf16-only cuda_sm90, float32 for Triton;
    CogVideoX's D = 64, F = 256)."""
    layout = SequenceLayout(7, 12, frames_per_segment=2, overlap_frames=1)
    frames = 2 * 5 + 1
    torch.manual_seed(0)
    layer = GatedBidirectionalTTT(128, 2, layout, mini_batch_size=64, rope_grid=(3, 4), gate_init=0.5).cuda()
    x = torch.randn(2, layout.total_tokens(frames), 128, device="cuda", requires_grad=True)
    results = {}
    for name in ("reference", backend):
        layer.ttt.backend = name
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=backend == "cuda_sm90"):
            out = layer(x)
            results[name] = (out, torch.autograd.grad(out.float().square().sum(), [x, *layer.parameters()]))
    (expected, expected_grads), (got, grads) = results["reference"], results[backend]
    assert _rel(got, expected) < 1e-2
    for (name, _), g, e in zip([("x", x), *layer.named_parameters()], grads, expected_grads, strict=True):
        assert _rel(g, e) < 3e-2, (name, _rel(g, e))
