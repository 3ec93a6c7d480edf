"""What a generation will cost, from the transformer's config alone (printed before any compute).

Counts are analytic (no model is built): parameters, tokens, forward FLOPs per denoising step and
a rough peak-memory figure. FLOPs count multiply-adds as 2 and cover the transformer only (T5 runs
once, the VAE once at the end):

- linear layers: 2 x (their weights) x tokens x batch;
- attention (QK^T and PV): 4 x batch x heads x head_dim x sum over windows of n_q x n_kv, where a
  window is one segment (text chunk + its frames) when segment-local, the whole sequence if not;
- TTT-MLP (both directions): q/k/v/o projections 8 x width^2 per token, plus the scan's 7 GEMMs of
  2 x b x d x f per mini-batch and head (docs/DESIGN.md §3), 14 x d x f per token and head.

Memory: weights in the model dtype plus about 12 copies of the [batch, tokens, width] activation
(q, k, v, the 4x feed-forward hidden, residuals); attention kernels are assumed flash-style (no
n^2 buffer). It is an order-of-magnitude guide, not a bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tttgraph.layout import SequenceLayout

ACTIVATION_COPIES = 12


@dataclass(frozen=True)
class Estimate:
    latent_frames: int
    segments: int
    video_tokens: int
    text_tokens: int
    base_params: int
    ttt_params: int
    flops_per_step: float           # transformed model (segment-local attention + TTT)
    full_attention_flops_per_step: float  # the original model over the same tokens
    attention_flops: float
    ttt_flops: float
    weights_bytes: int
    activation_bytes: int

    @property
    def tokens(self) -> int:
        return self.video_tokens + self.text_tokens


def _arch(config: dict[str, Any]) -> dict[str, int]:
    heads, head_dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
    return dict(layers=int(config["num_layers"]), heads=heads, head_dim=head_dim, width=heads * head_dim,
                time=int(config["time_embed_dim"]), text=int(config["text_embed_dim"]),
                cin=int(config["in_channels"]), cout=int(config.get("out_channels") or config["in_channels"]),
                patch=int(config["patch_size"]))


def base_parameters(config: dict[str, Any]) -> int:
    """Parameters of a diffusers ``CogVideoXTransformer3DModel`` with ``config`` (exact for 1.0)."""
    a = _arch(config)
    w, t, p = a["width"], a["time"], a["patch"]
    block = 2 * (t * 6 * w + 6 * w + 2 * w) + 4 * (w * w + w) + 4 * a["head_dim"] + (w * 4 * w + 4 * w) * 2 - 3 * w
    embed = a["cin"] * p * p * w + w + a["text"] * w + w + (w * t + t) + (t * t + t)
    out = 2 * w + (t * 2 * w + 2 * w) + 2 * w + (w * p * p * a["cout"] + p * p * a["cout"])
    return a["layers"] * block + embed + out


def ttt_parameters(config: dict[str, Any], mlp_expansion: int = 4, text_gates: bool = True,
                   bidirectional: bool = True) -> int:
    """Parameters one tttgraph transform adds to every block (TTT-MLP + gates)."""
    a = _arch(config)
    w, h, d = a["width"], a["heads"], a["head_dim"]
    f = mlp_expansion * d
    layer = 4 * (w * h * d + h * d) + (w * h + h) + 2 * h * d + h * d * f + h * f + h * f * d + h * d + 2 * h * d
    gates = w * (2 if text_gates else 1) * (2 if bidirectional else 1)
    return a["layers"] * (layer + gates)


def estimate(
    config: dict[str, Any],
    latent_frames: int,
    latent_hw: tuple[int, int],
    layout: SequenceLayout,
    *,
    batch: int = 2,
    dtype_bytes: int = 2,
    mlp_expansion: int = 4,
    base_params: int | None = None,
) -> Estimate:
    """Costs of one denoising step at ``latent_frames`` x ``latent_hw`` (latent pixels).

    ``layout`` gives the text tokens per segment and the segment size; ``batch`` is 2 with CFG.
    """
    a = _arch(config)
    w, h, d, layers = a["width"], a["heads"], a["head_dim"], a["layers"]
    tpf = (latent_hw[0] // a["patch"]) * (latent_hw[1] // a["patch"])
    segments = layout.num_segments(latent_frames)
    text = segments * layout.text_tokens_per_segment
    video = latent_frames * tpf
    tokens = text + video
    base = base_parameters(config) if base_params is None else base_params
    added = ttt_parameters(config, mlp_expansion, layout.text_tokens_per_segment > 0)
    block_linear = 4 * w * w + 8 * w * w  # attention q/k/v/o + feed-forward (4x)
    linear = 2 * block_linear * tokens * batch * layers
    windows = SequenceLayout(layout.text_tokens_per_segment, tpf, layout.frames_per_segment,
                             layout.overlap_frames).attention_windows(latent_frames)
    lt = layout.text_tokens_per_segment  # a segment's queries: its text + window; keys: the same, or every frame
    seg_pairs = sum((lt + (stop - start) * tpf) * (lt + (video if layout.global_video else (stop - start) * tpf))
                    for start, stop in windows)
    attention = 4 * batch * h * d * seg_pairs * layers
    full = 4 * batch * h * d * tokens**2 * layers
    f = mlp_expansion * d
    ttt = 2 * batch * tokens * (2 * 4 * w * w + h * 14 * d * f) * layers
    return Estimate(
        latent_frames=latent_frames, segments=segments, video_tokens=video, text_tokens=text,
        base_params=base, ttt_params=added, flops_per_step=float(linear + attention + ttt),
        full_attention_flops_per_step=float(linear + full), attention_flops=float(attention), ttt_flops=float(ttt),
        weights_bytes=(base + added) * dtype_bytes,
        activation_bytes=ACTIVATION_COPIES * batch * tokens * w * dtype_bytes,
    )  # fmt: skip


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (k, M, G, T, P; bytes use KiB..TiB when unit == 'B')."""
    if unit == "B":
        for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(n) < 1024 or suffix == "TiB":
                return f"{n:.1f} {suffix}" if suffix != "B" else f"{int(n)} B"
            n /= 1024
    for suffix in ("", "k", "M", "G", "T", "P", "E"):
        if abs(n) < 1000 or suffix == "E":
            return f"{n:.3g}{suffix}{unit}"
        n /= 1000
    raise AssertionError("unreachable")
