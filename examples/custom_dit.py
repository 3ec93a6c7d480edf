"""Your own video DiT (no diffusers) through tttgraph, with an adapter that tells its token layout.

    python -m examples.custom_dit

``TinyVideoDiT`` below is written from scratch: latents ``[B, F, H, W, C]`` (channels last), patches
of 2x2, one joint self-attention per block over ``[video | text]`` with ``F.scaled_dot_product_attention``.
tttgraph finds the attention by capturing the model; what it cannot read off the graph is where the
frames are, so the model gets an adapter (``TinyDiTAdapter``): ``layout`` returns the
:class:`~tttgraph.adapters.TokenLayout` of a call's inputs, ``latent_frames`` the frame count, and
``frame_dynamic_shapes`` which input dims scale with frames. Register it once with
``tttgraph.register_adapter`` and ``transform`` edits the model in place as it does diffusers models:
each ``attn`` gets a ``gated_ttt`` layer and segment-local attention, at any frame count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import tttgraph
from tttgraph.adapters import ModelAdapter, TokenLayout
from tttgraph.adapters.base import mark, none_spec


class Attention(nn.Module):
    """Joint self-attention of ``[B, N, C]`` tokens (N = video + text)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyVideoDiT(nn.Module):
    """``forward(latents [B, F, H, W, C], text [B, L, D]) -> [B, F, H, W, C]``; 2x2 patches."""

    def __init__(self, channels: int = 4, text_dim: int = 16, width: int = 64, heads: int = 2, depth: int = 2):
        super().__init__()
        self.patch = 2
        self.embed = nn.Linear(channels * self.patch**2, width)
        self.text_embed = nn.Linear(text_dim, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.unembed = nn.Linear(width, channels * self.patch**2)

    def forward(self, latents: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, f, h, w, c = latents.shape
        p = self.patch
        tokens = latents.reshape(b, f, h // p, p, w // p, p, c).permute(0, 1, 2, 4, 3, 5, 6).flatten(4).flatten(1, 3)
        video = self.embed(tokens)  # [B, F*h*w, width], frame-major
        x = torch.cat([video, self.text_embed(text)], dim=1)  # [video | text]
        for block in self.blocks:
            x = block(x)
        out = self.unembed(x[:, : video.shape[1]])
        out = out.unflatten(1, (f, h // p, w // p)).unflatten(-1, (p, p, c))  # [B, F, h, w, p, p, C]
        return out.permute(0, 1, 2, 4, 3, 5, 6).reshape(b, f, h, w, c)


class TinyDiTAdapter(ModelAdapter):
    """Where TinyVideoDiT keeps its frames and text: the layout of one call's inputs."""

    name = "tiny-dit"
    model_classes = ("TinyVideoDiT",)
    dynamic_frames = True
    text_inputs = {"text": (1,)}  # with segments, a longer video brings one text chunk per segment

    def latent_frames(self, model, inputs) -> int:
        return int(inputs["latents"].shape[1])

    def frame_dynamic_shapes(self, model, inputs):
        spec = none_spec(inputs)
        mark(spec, "latents", 1)
        return spec

    def layout(self, model, inputs) -> TokenLayout:
        b, f, h, w, _ = inputs["latents"].shape
        p = model.patch
        return TokenLayout(
            family=self.name, batch_size=int(b), text_tokens=int(inputs["text"].shape[1]), latent_frames=int(f),
            frames=int(f), tokens_per_frame=(h // p) * (w // p), grid=(h // p, w // p), patch_size=(1, p, p),
            order="video_first",
        )


def main(out=print) -> dict:
    tttgraph.register_adapter(TinyDiTAdapter.name, TinyDiTAdapter(), overwrite=True)
    torch.manual_seed(0)
    model = TinyVideoDiT().eval()
    frames, chunk = 5, 4  # 5 latent frames in segments of 2 (+1 overlap): 2 segments, one text chunk each
    inputs = {"latents": torch.randn(1, frames, 8, 8, 4), "text": torch.randn(1, 2 * chunk, 16)}
    cfg = tttgraph.TTTConfig(segment_latent_frames=2, segment_overlap_frames=1, mini_batch_size=16)
    plan = tttgraph.inspect(model, cfg, inputs)
    out(str(plan))
    model = tttgraph.transform(model, cfg, inputs, progress=False)  # in place; checked against its graph form
    longer = {"latents": torch.randn(1, 9, 8, 8, 4), "text": torch.randn(1, 4 * chunk, 16)}  # 4 segments
    with torch.no_grad():
        result = model(**longer)
    out(f"9 frames, 4 text chunks -> {tuple(result.shape)}; TTT layers at {tttgraph.plan_of(model).ttt_modules}")
    return {"ttt_modules": tttgraph.plan_of(model).ttt_modules, "shape": tuple(result.shape)}


if __name__ == "__main__":
    main()
