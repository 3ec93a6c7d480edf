"""The TTT-MLP layer and its gated, bidirectional wrapper (docs/DESIGN.md §3).

Layout conventions: hidden states are ``[B, N, C]`` (C = model width); inside the layer q, k, v
are ``[B, H, N, D]`` as the ``tttgraph::ttt_mlp`` op takes them.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tttgraph.errors import TTTGraphError
from tttgraph.layout import SequenceLayout, in_graph
from tttgraph.ops import ttt_mlp
from tttgraph.rope import apply_rope, split_head_dim, video_rope_angles

INIT_STD = 0.02

# The meaning of a GatedBidirectionalTTT's parameters: which tokens its reverse pass groups with which
# text and how it rotates them (README, "Fidelity to the paper"). Saves and training checkpoints record
# it, and loading refuses another value: the same weights would compute something else.
LAYER_SEMANTICS = 2
LAYER_SEMANTICS_CHANGES = {
    1: "tttgraph 0.1 rotated the reverse pass's tokens by their forward positions and gave the trailing "
       "overlap frames to the last segment's TTT chunk; tttgraph 0.2 follows the paper's code (mirrored "
       "positions in the reverse pass, the extra frames in the first chunk)",
}


def semantics_mismatch(saved: int, what: str) -> str | None:
    """None if ``saved`` is this tttgraph's LAYER_SEMANTICS, else one sentence: why ``what`` can't load."""
    if saved == LAYER_SEMANTICS:
        return None
    why = LAYER_SEMANTICS_CHANGES.get(saved, f"semantics {saved} is unknown to this tttgraph")
    return (
        f"{what} holds TTT layers of semantics {saved}, this tttgraph computes semantics {LAYER_SEMANTICS} and "
        f"would silently change what they compute ({why}); load it with the tttgraph that wrote it, or "
        "transform the base model again and fine-tune from there"
    )


class TTTMLP(nn.Module):
    """TTT-MLP sequence layer: q/k/v projections, an inner MLP per head trained while reading.

    Args:
        width: C, model width (input and output features).
        num_heads: H.
        head_dim: D (default C / H).
        mlp_expansion: inner MLP hidden size F = mlp_expansion * D (default 4).
        mini_batch_size: tokens per inner gradient step (default 64).
        base_lr: inner learning rate scale; eta_t = base_lr / D * sigmoid(x_t . w_h + c_h) / b.
        eps: LayerNorm epsilon of the inner model (inside the sqrt), passed to the op (default 1e-6).
        backend: ``tttgraph::ttt_mlp`` backend ("auto", "reference", "triton", "cuda_sm90").

    ``forward(x, rope=None)``: x [B, N, C] in TTT order; rope an optional ``(cos, sin)`` pair of
    [N, D/2] tensors aligned with the tokens (identity rows for text). Returns [B, N, C].
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        head_dim: int | None = None,
        mlp_expansion: int = 4,
        mini_batch_size: int = 64,
        base_lr: float = 0.1,
        eps: float = 1e-6,
        backend: str = "auto",
    ):
        super().__init__()
        if head_dim is None:
            if width % num_heads:
                raise TTTGraphError(
                    f"width={width} is not divisible by num_heads={num_heads}; pass head_dim explicitly"
                )
            head_dim = width // num_heads
        self.width, self.num_heads, self.head_dim = width, num_heads, head_dim
        self.hidden_dim = mlp_expansion * head_dim
        self.mini_batch_size, self.base_lr, self.eps, self.backend = mini_batch_size, base_lr, eps, backend
        inner = num_heads * head_dim
        self.wq, self.wk, self.wv = (nn.Linear(width, inner) for _ in range(3))
        self.wo = nn.Linear(inner, width)
        self.learnable_lr = nn.Linear(width, num_heads)
        self.ttt_norm_weight = nn.Parameter(torch.ones(num_heads, head_dim))
        self.ttt_norm_bias = nn.Parameter(torch.zeros(num_heads, head_dim))
        self.w1 = nn.Parameter(torch.empty(num_heads, head_dim, self.hidden_dim))
        self.b1 = nn.Parameter(torch.zeros(num_heads, self.hidden_dim))
        self.w2 = nn.Parameter(torch.empty(num_heads, self.hidden_dim, head_dim))
        self.b2 = nn.Parameter(torch.zeros(num_heads, head_dim))
        self.post_norm = nn.LayerNorm(inner, eps=1e-6)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialisation of the reference: N(0, 0.02) weights, zero biases, LayerNorms at 1/0."""
        for lin in (self.wq, self.wk, self.wv, self.wo, self.learnable_lr):
            nn.init.normal_(lin.weight, std=INIT_STD)
            nn.init.zeros_(lin.bias)
        for w in (self.w1, self.w2):
            nn.init.normal_(w, std=INIT_STD)
        for b in (self.b1, self.b2, self.ttt_norm_bias):
            nn.init.zeros_(b)
        nn.init.ones_(self.ttt_norm_weight)
        self.post_norm.reset_parameters()

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # [B, H, N, D]

    def scan_inputs(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, ...]:
        """q, k, v [B, H, N, D] (one dtype) and eta [B, H, N] of the scan, from x [B, N, width]."""
        q = self._heads(self.wq(x))
        dtype = q.dtype  # the projections' dtype: the parameters', or autocast's (e.g. bf16)
        q = F.normalize(q, dim=-1)
        k = F.normalize(self._heads(self.wk(x)), dim=-1)
        v = self._heads(self.wv(x))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        # Reconstruction target v' = k + LN(v - k): unbiased std, eps added to the std (reference).
        gamma, beta = self.ttt_norm_weight[:, None], self.ttt_norm_bias[:, None]
        d = v - k
        d = (d - d.mean(-1, keepdim=True)) / (d.std(-1, keepdim=True) + 1e-8)
        v = k + gamma * d + beta
        # Under autocast normalize, RoPE and the LayerNorm run in float32 while the projections give
        # bf16: the op takes q, k, v in one dtype, the projections' (a no-op without autocast).
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        lr = torch.sigmoid(self.learnable_lr(x)).transpose(1, 2)  # [B, H, N]
        eta = (self.base_lr / self.head_dim / self.mini_batch_size) * lr
        return q, k, v, eta

    def scan(self, q: Tensor, k: Tensor, v: Tensor, eta: Tensor, heads: slice | None = None) -> Tensor:
        """The TTT-MLP scan, over all heads or the slice ``heads``: [B, h, N, D] for those heads."""
        params = (self.ttt_norm_weight, self.ttt_norm_bias, self.w1, self.b1, self.w2, self.b2)
        if heads is not None:  # a head-parallel rank's share (generate/distributed.py)
            q, k, v, eta = (t[:, heads].contiguous() for t in (q, k, v, eta))
            params = tuple(p[heads] for p in params)
        return ttt_mlp(q, k, v, eta, *params, mini_batch_size=self.mini_batch_size, eps=self.eps,
                       backend=self.backend)

    def finish(self, out: Tensor) -> Tensor:
        """Scan output [B, H, N, D] of all heads -> the layer's output [B, N, width]."""
        return self.wo(self.post_norm(out.transpose(1, 2).flatten(-2)))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        return self.finish(self.scan(*self.scan_inputs(x, rope)))

    def extra_repr(self) -> str:
        return (
            f"width={self.width}, heads={self.num_heads}, head_dim={self.head_dim}, hidden={self.hidden_dim}, "
            f"mini_batch={self.mini_batch_size}, base_lr={self.base_lr}, eps={self.eps}, backend={self.backend!r}"
        )


class GatedBidirectionalTTT(nn.Module):
    """``Z = X + tanh(alpha) * TTT(X)``, then ``Z' = Z + tanh(beta) * rev(TTT(rev(Z)))``.

    The same :class:`TTTMLP` runs both directions. Gates are width-vectors, separate for text and
    video tokens (no text gates when the layout has no text), initialised to ``gate_init`` (0.1).
    The TTT reads the segment-interleaved order
    ``[txt_0 | vid_0 | txt_1 | vid_1 | ...]`` of :class:`SequenceLayout`; the result comes back in
    the model's joint order.

    Args:
        width, num_heads, head_dim, mlp_expansion, mini_batch_size, base_lr, eps, backend: as TTTMLP.
        layout: where the text and video tokens are.
        rope_grid: (height, width) of a frame's patch grid for 3D RoPE of q and k over video tokens
            with global positions (theta 1e4); None for no RoPE.
        gate_init: initial value of every gate (tanh is applied on use).
        bidirectional: add the reverse pass (default True).

    ``forward(x, num_frames=None)``: x [B, N, C] joint sequence; num_frames inferred from N if None.
    Returns [B, N, C].
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        layout: SequenceLayout,
        *,
        head_dim: int | None = None,
        mlp_expansion: int = 4,
        mini_batch_size: int = 64,
        base_lr: float = 0.1,
        eps: float = 1e-6,
        backend: str = "auto",
        rope_grid: tuple[int, int] | None = None,
        rope_theta: float = 1e4,
        gate_init: float = 0.1,
        bidirectional: bool = True,
        fold: str | None = None,
        fold_batch: int = 1,
    ):
        super().__init__()
        if fold not in (None, "hw", "t"):
            raise TTTGraphError(f"fold must be None, 'hw' or 't', got {fold!r}")
        if fold and layout.text_tokens_per_segment:
            raise TTTGraphError("a folded video sequence (fold='hw' or 't') carries no text; use a layout without text")
        self.fold, self.fold_batch = fold, fold_batch
        self.layout = layout
        self.ttt = TTTMLP(width, num_heads, head_dim, mlp_expansion, mini_batch_size, base_lr, eps, backend)
        if rope_grid is not None:
            split_head_dim(self.ttt.head_dim)  # fail at construction, not at the first forward
            if rope_grid[0] * rope_grid[1] != layout.video_tokens_per_frame:
                raise TTTGraphError(
                    f"rope_grid={rope_grid} has {rope_grid[0] * rope_grid[1]} tokens per frame but the layout "
                    f"has video_tokens_per_frame={layout.video_tokens_per_frame}"
                )
        self.rope_grid, self.rope_theta = rope_grid, rope_theta
        self.bidirectional = bidirectional
        self.gate_init = gate_init

        directions = ("forward", "backward") if bidirectional else ("forward",)
        kinds = ("text", "video") if layout.text_tokens_per_segment else ("video",)
        for direction in directions:
            for kind in kinds:
                gate = nn.Parameter(torch.full((width,), float(gate_init)))
                self.register_parameter(f"{direction}_gate_{kind}", gate)

    def _rope(self, layout: SequenceLayout, num_frames: int, grid, device) -> tuple[Tensor, Tensor] | None:
        """(cos, sin) [N, D/2] in TTT order, the same for both directions; text rows are the identity."""
        if grid is None:
            return None
        table = _rope_table.__wrapped__ if in_graph(num_frames) else _rope_table  # symbolic sizes don't hash
        return table(layout, num_frames, tuple(grid), self.ttt.head_dim, self.rope_theta, torch.device(device))

    def gate(self, direction: str, num_frames: int, layout: SequenceLayout | None = None) -> Tensor:
        """[N, C] tanh-gate of each joint-sequence token for the "forward" or "backward" direction."""
        layout = self.layout if layout is None else layout
        video_gate = getattr(self, f"{direction}_gate_video")
        if not layout.text_tokens_per_segment:
            return torch.tanh(video_gate).expand(layout.total_tokens(num_frames), -1)
        mask = layout.video_mask(num_frames).to(video_gate.device)[:, None]
        return torch.tanh(torch.where(mask, video_gate, getattr(self, f"{direction}_gate_text")))

    def _direction(self, x: Tensor, layout: SequenceLayout, num_frames: int, rope, reverse: bool) -> Tensor:
        """TTT over the (reversed) interleaved order, returned in joint order. x: [B, N, C].

        ``rope`` is already in TTT order: both directions rotate by position in the sequence read.
        """
        idx = layout.interleave_index(num_frames, x.device, reverse)
        inv = layout.deinterleave_index(num_frames, x.device, reverse)
        return self.ttt(x.index_select(1, idx), rope).index_select(1, inv)

    def forward(self, x: Tensor, num_frames: int | None = None, *, layout: SequenceLayout | None = None,
                grid: tuple[int, int] | None = None) -> Tensor:
        """``layout`` and ``grid`` override the ones built in for this call (another resolution or text length)."""
        layout = self.layout if layout is None else layout
        grid = None if self.rope_grid is None else (self.rope_grid if grid is None else grid)
        if grid is not None and grid[0] * grid[1] != layout.video_tokens_per_frame and self.fold != "t":
            raise TTTGraphError(f"rope grid {grid} does not match the layout's {layout.video_tokens_per_frame} "
                                "tokens per frame")
        if self.fold is not None:
            return self._folded(x, layout, grid)
        return self._joint(x, num_frames, layout, grid)

    def _joint(self, x: Tensor, num_frames: int | None, layout: SequenceLayout, grid) -> Tensor:
        if num_frames is None:
            num_frames = layout.infer_num_frames(x.shape[1])
        layout._check_tokens(x, num_frames)
        rope = self._rope(layout, num_frames, grid, x.device)
        gate = self.gate("forward", num_frames, layout).to(x.dtype)
        z = x + gate * self._direction(x, layout, num_frames, rope, reverse=False)
        if not self.bidirectional:
            return z
        gate = self.gate("backward", num_frames, layout).to(x.dtype)
        return z + gate * self._direction(z, layout, num_frames, rope, reverse=True)

    def _folded(self, x: Tensor, layout: SequenceLayout, grid) -> Tensor:
        """Video whose frames ("hw": [B*F, hw, C]) or patches ("t": [B*hw, F, C]) sit in the batch dim
        (Latte's spatial and temporal blocks): unfold to the frame-major [B, F*hw, C], run, fold back."""
        b = self.fold_batch
        outer, inner, width = x.shape
        if outer % b:
            raise TTTGraphError(f"folded input {tuple(x.shape)} does not split into batch {b}")
        if self.fold == "hw":
            frames = outer // b
            return self._joint(x.reshape(b, frames * inner, width), frames, layout, grid).reshape(outer, inner, width)
        frames, patches = inner, outer // b
        flat = x.reshape(b, patches, frames, width).transpose(1, 2).reshape(b, frames * patches, width)
        out = self._joint(flat, frames, layout, grid)
        return out.reshape(b, frames, patches, width).transpose(1, 2).reshape(outer, inner, width)

    def extra_repr(self) -> str:
        fold = f", fold={self.fold!r}, fold_batch={self.fold_batch}" if self.fold else ""
        return f"layout={self.layout}, rope_grid={self.rope_grid}, bidirectional={self.bidirectional}{fold}"


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.lru_cache(maxsize=16)
def _rope_table(layout: SequenceLayout, num_frames: int, grid: tuple[int, int], head_dim: int, theta: float,
                device: torch.device) -> tuple[Tensor, Tensor]:
    """(cos, sin) in TTT order, shared by every layer of a model (one per frame count and device)."""
    angles = video_rope_angles(num_frames, grid, head_dim, theta)
    text = torch.zeros(layout.text_tokens(num_frames), angles.shape[1], dtype=angles.dtype)
    angles = torch.cat([text, angles] if layout.text_first else [angles, text])[layout.rope_order(num_frames)]
    return angles.cos().float().to(device), angles.sin().float().to(device)
