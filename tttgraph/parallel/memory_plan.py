"""Memory per GPU of a fine-tuning or generation run of a transformed CogVideoX, before it starts (issue #25).

Everything is counted from the transformer config, the TTT settings, the clip length and the
parallel settings; nothing is built. Per rank (one GPU), training:

- **parameters**: fp32 master weights, sharded over all ranks by FSDP2 (else whole);
- **gradients** and **optimizer state** (AdamW: two fp32 moments) of the trainable parameters, sharded alike;
- **unsharded blocks**: FSDP2 gathers the running block and prefetches the next (fp32), and a block's
  unsharded gradients exist until they are reduce-scattered;
- **saved activations**: with activation checkpointing, each block keeps its bf16 inputs (video + text
  residual streams) for the rank's tokens, plus, under context parallelism, the first block's unsplit
  input (its recompute slices it again); without, every block keeps all it saves for backward
  (``SAVED_PER_TOKEN``, below);
- **largest transient**: the recomputed block's saved activations and its backward's working set,
  plus the context-parallel exchange buffers of the TTT scan.

Generation (no gradients): bf16 weights, whole on every rank, plus ``INFERENCE_COPIES`` copies of the
``[batch, tokens, width]`` activation for the rank's tokens (calibrated on the 63 s CogVideoX-5B
generation measured at 56.3 GiB on one H100: this model says 59.6 GiB).

The rank's tokens are those of its largest share (:func:`~tttgraph.parallel.context.plan_shard`).

``SAVED_PER_TOKEN`` counts what autograd keeps for one token of one CogVideoX block with the TTT layer
under bf16 autocast, in bytes per unit of width (multiply by the width C), term by term from the
block's ops: fp32 LayerNorm inputs (autocast runs LayerNorm in fp32), bf16 copies that autocast makes
of each linear's input, the segment-gathered SDPA inputs and output (one overlap frame per 12: x1.08),
and per TTT direction its projections' input, the q/k normalisation, the target normalisation, the scan's
q, k, v and inner-state checkpoints (every 16 mini-batches of 64: 2 bytes per width unit for D=64,
F=256), the output norm and the gate; plus what an H100 measured beyond those terms.
``benchmarks/bench_context_parallel_block.py`` measures one full-size block on a GPU against it: rank 0
of 8 at 63 s (50,628 tokens, width 3072) saved 146.0 bytes per token per width where the terms sum to
130.6, and its backward's working set was 15.6 (BENCHMARKS.md, "Context parallelism").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tttgraph.errors import TTTGraphError
from tttgraph.layout import SequenceLayout

GIB = 1024**3
FP32, BF16 = 4, 2

SAVED_PER_TOKEN: dict[str, float] = {
    "norm1 (fp32 LayerNorm input, modulated output)": 8.0,
    "attention q/k/v inputs (three bf16 casts)": 6.0,
    "q/k LayerNorm inputs (fp32)": 8.0,
    "segment SDPA q, k, v, output (bf16, x1.08 overlap)": 8.6,
    "attention out-projection input": 2.0,
    "TTT, per direction x2: projections' input, q/k normalise, target norm, scan q/k/v + states, "
    "output norm, gate": 2 * 34.0,
    "gated residual": 2.0,
    "norm2 (fp32 LayerNorm input, modulated output)": 8.0,
    "feed-forward: input, GELU input (4C), second linear's input (4C), gate": 20.0,
    "not itemised: measured on an H100 beyond the terms above (146.0 in all)": 15.4,
}
BACKWARD_WORKING_PER_TOKEN = 16.0  # gradient buffers alive while one block's backward runs (H100: 15.6 measured)
EXCHANGE_PER_TOKEN = 18.0  # TTT all-to-all: packed q/k/v/eta sent, received and reordered (bf16, 3 x 3C)
INFERENCE_COPIES = 12  # live [B, n, C] activations in one block's forward (tttgraph.generate.estimate)


class MemoryPlanError(TTTGraphError):
    """The plan does not fit the GPU's memory (the message lists settings that do)."""


@dataclass(frozen=True)
class Architecture:
    """The sizes the plan needs, from a CogVideoX transformer config and the TTT settings."""

    layers: int
    width: int
    heads: int
    params: int  # base + TTT
    block_params: int  # one block with its TTT layer
    trainable: int
    block_trainable: int

    @classmethod
    def cogvideox(cls, config: dict[str, Any], trainable: str = "ttt_attention", mlp_expansion: int = 4,
                  text_gates: bool = True) -> Architecture:
        """``config``: a ``CogVideoXTransformer3DModel`` config; ``trainable``: "all", "ttt" or "ttt_attention"."""
        from tttgraph.generate.estimate import _arch, base_parameters, ttt_parameters

        a = _arch(config)
        w, layers = a["width"], a["layers"]
        base, ttt = base_parameters(config), ttt_parameters(config, mlp_expansion, text_gates)
        base_block = (base - base_parameters({**config, "num_layers": 0})) // layers
        ttt_block = ttt // layers
        attention = 4 * (w * w + w) + 4 * a["head_dim"]  # q/k/v/o and the q/k norms
        if trainable not in ("all", "ttt", "ttt_attention"):
            raise TTTGraphError(f"trainable must be 'all', 'ttt' or 'ttt_attention', got {trainable!r}")
        per_block = {"all": base_block + ttt_block, "ttt": ttt_block, "ttt_attention": ttt_block + attention}[trainable]
        total_trainable = base + ttt if trainable == "all" else per_block * layers
        return cls(layers, w, a["heads"], base + ttt, base_block + ttt_block, total_trainable, per_block)


COGVIDEOX_5B = dict(num_attention_heads=48, attention_head_dim=64, num_layers=42, time_embed_dim=512,
                    text_embed_dim=4096, in_channels=16, out_channels=16, patch_size=2)


@dataclass(frozen=True)
class Workload:
    """One sample's sequence: ``layout`` (text chunk, tokens per frame, segments) and ``frames`` (latent)."""

    layout: SequenceLayout
    frames: int

    @property
    def tokens(self) -> int:
        return self.layout.total_tokens(self.frames)

    def rank_tokens(self, context: int) -> int:
        """Tokens of the largest share of a context group of ``context`` ranks."""
        if context == 1:
            return self.tokens
        from tttgraph.parallel.context import plan_shard

        return max(plan_shard(self.layout, self.frames, context).counts)

    @classmethod
    def cogvideox(cls, seconds: int, text_tokens: int = 226, grid: tuple[int, int] = (30, 45), segment: int = 12,
                  overlap: int = 1) -> Workload:
        """A clip of ``seconds`` (a multiple of 3) at CogVideoX's 16 fps, 4x temporal compression."""
        return cls(SequenceLayout(text_tokens, grid[0] * grid[1], segment, overlap), 4 * seconds + 1)


@dataclass(frozen=True)
class Settings:
    """How a run is spread: ``gpus`` ranks = data parallel x ``context``; ``batch`` samples per rank and micro-step."""

    gpus: int = 1
    context: int = 1
    batch: int = 1
    activation_checkpointing: bool = True
    fsdp: bool = True

    @property
    def data(self) -> int:
        return self.gpus // self.context

    def describe(self) -> str:
        return (f"{self.gpus} GPU(s) = {self.data} data x {self.context} context, batch {self.batch} per rank, "
                f"activation checkpointing {'on' if self.activation_checkpointing else 'off'}"
                f"{', FSDP2' if self.fsdp and self.gpus > 1 else ''}")


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per rank, by item; ``capacity`` the GPU's memory (None: unknown)."""

    kind: str  # "training" or "generation"
    settings: Settings
    rank_tokens: int
    items: tuple[tuple[str, float], ...]
    capacity: float | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def total(self) -> float:
        return sum(b for _, b in self.items)

    @property
    def fits(self) -> bool:
        return self.capacity is None or self.total <= self.capacity

    def __getitem__(self, name: str) -> float:
        return dict(self.items)[name]

    def summary(self) -> str:
        lines = [f"memory plan ({self.kind}, per rank): {self.settings.describe()}; {self.rank_tokens:,} tokens "
                 "per sample on this rank"]
        lines += [f"  {name:<28} {b / GIB:8.2f} GiB" for name, b in self.items]
        verdict = "" if self.capacity is None else (
            f" of {self.capacity / GIB:.1f} GiB: {'fits' if self.fits else 'does NOT fit'}")
        lines.append(f"  {'total':<28} {self.total / GIB:8.2f} GiB{verdict}")
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def saved_per_token() -> float:
    """Bytes per token per unit width that one block keeps for backward (sum of ``SAVED_PER_TOKEN``)."""
    return sum(SAVED_PER_TOKEN.values())


def training_plan(arch: Architecture, work: Workload, settings: Settings,
                  capacity: float | None = None) -> MemoryPlan:
    """The per-rank memory of a training step (module docstring)."""
    _check(settings, arch)
    shards = settings.gpus if settings.fsdp else 1
    n = work.rank_tokens(settings.context) * settings.batch
    w = arch.width
    block = saved_per_token() * w * n
    if settings.activation_checkpointing:
        saved = arch.layers * n * w * BF16
        if settings.context > 1:
            saved += work.tokens * settings.batch * w * BF16  # block 0's unsplit input, kept for its recompute
        transient = block + BACKWARD_WORKING_PER_TOKEN * w * n
    else:
        saved = arch.layers * block
        transient = BACKWARD_WORKING_PER_TOKEN * w * n
    if settings.context > 1:
        transient += EXCHANGE_PER_TOKEN * w * n
    unsharded = (2 * arch.block_params + arch.block_trainable) * FP32 if shards > 1 else 0
    items = (
        ("parameters (fp32)", arch.params * FP32 / shards),
        ("gradients (fp32)", arch.trainable * FP32 / shards),
        ("optimizer state (AdamW)", 2 * arch.trainable * FP32 / shards),
        ("unsharded blocks (FSDP)", unsharded),
        ("saved activations", saved),
        ("largest transient", transient),
    )
    return MemoryPlan("training", settings, n // settings.batch, items, capacity)


def generation_plan(arch: Architecture, work: Workload, settings: Settings, capacity: float | None = None,
                    dtype_bytes: int = BF16) -> MemoryPlan:
    """The per-rank memory of a denoising step (``settings.batch`` 2 with CFG); weights whole on every rank."""
    _check(settings, arch)
    n = work.rank_tokens(settings.context) * settings.batch
    items = (
        ("weights", arch.params * dtype_bytes),
        ("activations", INFERENCE_COPIES * n * arch.width * dtype_bytes),
    )
    return MemoryPlan("generation", settings, n // settings.batch, items, capacity)


def _check(settings: Settings, arch: Architecture) -> None:
    if settings.gpus < 1 or settings.context < 1 or settings.batch < 1:
        raise TTTGraphError(f"gpus, context and batch must be >= 1, got {settings}")
    if settings.gpus % settings.context:
        raise TTTGraphError(f"{settings.gpus} GPUs can't be grouped into context groups of {settings.context}; use a "
                            f"context size dividing the number of GPUs")
    if arch.heads % settings.context:
        raise TTTGraphError(f"the model's {arch.heads} heads can't be split over a context group of "
                            f"{settings.context}; use a context size dividing {arch.heads}")


def fitting_settings(arch: Architecture, work: Workload, gpus: int, capacity: float, *, batch: int = 1,
                     training: bool = True) -> list[MemoryPlan]:
    """Plans on ``gpus`` GPUs that fit ``capacity``, fewest context ranks first (then checkpointing on before off).

    Tries every context size dividing ``gpus`` and the heads with at most one segment less than ranks.
    """
    found = []
    segments = work.layout.num_segments(work.frames)
    for context in range(1, gpus + 1):
        if gpus % context or arch.heads % context or context > segments:
            continue
        for ac in ((True, False) if training else (True,)):
            s = Settings(gpus, context, batch, activation_checkpointing=ac)
            plan = (training_plan if training else generation_plan)(arch, work, s, capacity)
            if plan.fits:
                found.append(plan)
    return found


def require_fit(plan: MemoryPlan, arch: Architecture, work: Workload) -> None:
    """Raise :class:`MemoryPlanError` when ``plan`` exceeds its capacity, listing settings that fit."""
    if plan.fits:
        return
    training = plan.kind == "training"
    s = plan.settings
    options = fitting_settings(arch, work, s.gpus, plan.capacity, batch=s.batch, training=training)
    if not options and s.batch > 1:
        options = fitting_settings(arch, work, s.gpus, plan.capacity, batch=1, training=training)
    lines = [f"{p.settings.describe()}: {p.total / GIB:.1f} GiB" for p in options[:6]]
    if not lines:
        more = [g for g in (2 * s.gpus, 4 * s.gpus, 8 * s.gpus)
                if fitting_settings(arch, work, g, plan.capacity, training=training)]
        lines = [f"none on {s.gpus} GPU(s); it fits on {more[0]} GPUs" if more else
                 f"none on up to {8 * s.gpus} GPUs; use shorter clips"]
    setting = "parallel.context (and train.batch_size, train.activation_checkpointing)" if training else \
        "--context-parallel (torchrun --nproc-per-node)"
    raise MemoryPlanError(
        f"the {plan.kind} needs {plan.total / GIB:.1f} GiB per GPU, more than the {plan.capacity / GIB:.1f} GiB "
        f"available ({s.describe()}).\n{plan.summary()}\nSettings that fit (set {setting}):\n  " + "\n  ".join(lines)
    )


