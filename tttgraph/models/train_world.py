"""Train the world base model on 3-second clips (``tttgraph train-world``; issue #21, part 3).

    tttgraph train-world --out runs/world_base --minutes 9      GPU: the full run on an H100
    tttgraph train-world --out runs/world_base                  again: resumes from OUT/checkpoint.pt
    tttgraph train-world --out runs/world_base --evaluate-only  score OUT/weights on held-out clips
    tttgraph train-world --out runs/pilot --steps 200 --pool 512 --batch-size 8 --eval-stories 8   (CPU smoke run)

Data: single 3 s segments of the world's *training* split (1-segment stories, so every character is
described in the paragraph), 49 frames each (the segment's 48 and its last again, as the CogVideoX
VAE takes 4k+1), of which the pixel autoencoder keeps 13. A pool of ``--pool`` clips is rendered
once by worker processes; each step draws a batch from it.

Objective: CogVideoX's v-prediction MSE over its 1000-step schedule, with 10% of the paragraphs
replaced by the empty one (classifier-free guidance). The transformer and the text encoder train
together (AdamW, linear warmup then cosine decay, gradient clipping); an exponential moving average
of the weights is what gets saved and evaluated.

Outputs in OUT: ``checkpoint.pt`` (every ``--checkpoint-every`` steps and at the end, atomically:
weights, EMA, optimizer, step; a rerun resumes from it), ``metrics.csv``, ``weights/`` (the EMA
weights in bfloat16, the files :func:`tttgraph.models.world_model.world_bundle` loads; copy them to
``tttgraph/models/world_weights/`` to ship them) and ``report.json``: detection and attribute
accuracy of generated clips for ``--eval-stories`` held-out 1-segment stories (name/attribute
pairings never seen in training), scored from pixels by :mod:`tttgraph.data.scorer`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tttgraph.errors import TTTGraphError
from tttgraph.models.world_model import WORLD_AUTOENCODER, WORLD_HEIGHT, WORLD_WIDTH

CHECKPOINT_FORMAT = "tttgraph-world-base-checkpoint"
CLIP_LATENT_FRAMES = 13  # a 3 s clip's 49 frames, every 4th kept
LATENT_SHAPE = (CLIP_LATENT_FRAMES, WORLD_AUTOENCODER["latent_channels"],
                WORLD_HEIGHT // WORLD_AUTOENCODER["spatial_compression"],
                WORLD_WIDTH // WORLD_AUTOENCODER["spatial_compression"])  # [F, C, h, w] of a clip


@dataclass(frozen=True)
class WorldTraining:
    """Settings of a training run (``tttgraph train-world`` flags; defaults are the shipped run's)."""

    steps: int = 12_000
    # At width 128 a step is bound by kernel launches, not arithmetic (14 steps/s at batch 64 on an
    # H100): a larger batch costs almost no time per step.
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 300
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    text_dropout: float = 0.1
    pool: int = 100_000
    seed: int = 0
    checkpoint_every: int = 1000
    minutes: float | None = None
    eval_stories: int = 100
    eval_steps: int = 50
    guidance_scale: float = 6.0
    compile: bool = True  # torch.compile the training step (CUDA only)

    def __post_init__(self):
        for name in ("steps", "batch_size", "pool", "checkpoint_every", "eval_stories", "eval_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "eval_stories" else 1):
                raise TTTGraphError(f"{name} must be a positive int, got {value!r}")
        for name in ("lr", "ema_decay", "grad_clip"):
            if not getattr(self, name) > 0:
                raise TTTGraphError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.text_dropout < 1:
            raise TTTGraphError(f"text_dropout must be in [0, 1), got {self.text_dropout!r}")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def clip_story_seed(seed: int, index: int) -> int:
    """The story seed of clip ``index`` of a pool drawn with ``seed``."""
    return seed * 10_000_019 + index


def clip_frames(story) -> np.ndarray:
    """The 13 frames the pixel autoencoder keeps of a 1-segment story's 49: uint8 [13, H, W, 3]."""
    from tttgraph.data.world import render_story

    video, _ = render_story(story)  # [48, H, W, 3]
    video = np.concatenate([video, video[-1:]])  # 4k+1 frames, as the CogVideoX VAE takes
    return video[::4]


def _render_chunk(args: tuple[int, int, int, str]) -> tuple[np.ndarray, list[str]]:
    from tttgraph.data.world import make_story

    seed, start, stop, split = args
    frames, texts = [], []
    for i in range(start, stop):
        story = make_story(clip_story_seed(seed, i), 1, split)
        frames.append(clip_frames(story))
        texts.append(story.paragraphs()[0])
    return np.stack(frames), texts


def render_pool(count: int, seed: int, split: str = "train", workers: int | None = None,
                progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """``count`` clips of ``split``: (uint8 frames [count, 13, H, W, 3], their paragraphs), in order."""
    from tttgraph.progress import progress_bar

    workers = workers or max(1, min(16, (os.cpu_count() or 2) - 1))
    if count <= 256:
        workers = 1  # starting processes costs more than rendering a few hundred clips (5 ms each)
    size = max(1, min(500, math.ceil(count / workers)))
    chunks = [(seed, s, min(count, s + size), split) for s in range(0, count, size)]
    bar = progress_bar(total=count, desc="rendering clips", unit="clip", disable=not progress)
    parts = []
    if workers == 1:
        for chunk in chunks:
            parts.append(_render_chunk(chunk))
            bar.update(chunk[2] - chunk[1])
    else:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for part, chunk in zip(pool.imap(_render_chunk, chunks), chunks, strict=True):
                parts.append(part)
                bar.update(chunk[2] - chunk[1])
    bar.close()
    return np.concatenate([p[0] for p in parts]), [t for p in parts for t in p[1]]


def cached_pool(out: Path, count: int, seed: int, progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """:func:`render_pool`, kept in ``out/pool-SEED-COUNT.{npy,json}`` so that a resumed run does not render
    it again (100k clips: half a minute on 15 cores, 6 GB). Rendering is deterministic; the cache is only
    read back when both files are whole (each is written atomically)."""
    from tttgraph.config import atomic_path, write_atomic

    frames_file, texts_file = out / f"pool-{seed}-{count}.npy", out / f"pool-{seed}-{count}.json"
    if frames_file.is_file() and texts_file.is_file():
        frames = np.load(frames_file, allow_pickle=False)
        texts = json.loads(texts_file.read_text())
        if frames.shape == (count, CLIP_LATENT_FRAMES, WORLD_HEIGHT, WORLD_WIDTH, 3) and len(texts) == count:
            return frames, texts
    frames, texts = render_pool(count, seed, progress=progress)
    with atomic_path(frames_file) as tmp, open(tmp, "wb") as f:
        np.save(f, frames, allow_pickle=False)
    write_atomic(texts_file, json.dumps(texts))
    return frames, texts


def token_ids(tokenizer, texts: list[str], length: int) -> Tensor:
    """[N, length] token ids (padded / truncated as :func:`~tttgraph.models.cogvideox_bundle.encode_text`)."""
    return tokenizer(texts, padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
                     return_tensors="pt")["input_ids"]


def frames_to_latents(vae, frames: Tensor) -> Tensor:
    """uint8 [B, F, H, W, 3] kept frames -> scaled latents [B, F, C, h, w] (the transformer's layout)."""
    x = frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    return (vae.encode_frames(x) * vae.config.scaling_factor).transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def progress_fraction(step: int, seconds: float, cfg: WorldTraining) -> float:
    """How far the run is: by steps, or by time when ``minutes`` is set and time runs out first."""
    done = step / cfg.steps
    if cfg.minutes is not None:
        done = max(done, seconds / (60 * cfg.minutes))
    return min(1.0, done)


def lr_factor(step: int, done: float, cfg: WorldTraining) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to 5% as ``done`` (0..1) reaches 1.

    ``done`` counts time as well as steps (:func:`progress_fraction`), so that a run stopped by its
    time budget has decayed its learning rate fully, whatever the card's speed."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    start = cfg.warmup_steps / cfg.steps
    frac = max(0.0, (done - start) / max(1e-9, 1 - start))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac))


class _EMA:
    """An exponential moving average of parameters (float32), warmed up as ``min(decay, (1+n)/(10+n))``."""

    def __init__(self, params: dict[str, Tensor], decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, Tensor], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        # one fused kernel per group of tensors: a Python loop of ~150 small lerps is a step's worth of launches
        torch._foreach_lerp_([self.shadow[k] for k in params], [v.detach().float() for v in params.values()], 1 - d)


def _draw(g: torch.Generator, pool_size: int, batch: int, dev: torch.device) -> tuple[Tensor, ...]:
    """A step's random draws, on ``dev`` from ``g``: clip indices [B], text-dropout flags [B], timesteps [B],
    noise [B, 13, 48, 8, 12] (the world's latent shape)."""
    pick = torch.randint(pool_size, (batch,), generator=g, device=dev)
    drop = torch.rand(batch, generator=g, device=dev)
    t = torch.randint(0, 1000, (batch,), generator=g, device=dev)
    noise = torch.randn((batch, *LATENT_SHAPE), generator=g, device=dev)
    return pick, drop, t, noise


def _loss_function(bundle, pool: Tensor, ids: Tensor, null_ids: Tensor, cfg: WorldTraining, dev: torch.device):
    """``loss(pick, drop, t, noise)``: the v-prediction MSE of a batch (clips ``pool[pick]``, paragraph
    dropped where ``drop < text_dropout``), compiled with ``torch.compile`` when ``cfg.compile`` and on CUDA.

    At width 128 a step is a few hundred small kernels; compiled, they fuse into a few dozen."""
    from diffusers import CogVideoXDDIMScheduler

    from tttgraph.models.cogvideox_bundle import transformer_inputs

    sched = CogVideoXDDIMScheduler.from_config(bundle.scheduler_config)
    if sched.config.num_train_timesteps != 1000:
        raise TTTGraphError(f"the world trains on a 1000-step schedule, not {sched.config.num_train_timesteps}")
    alphas = sched.alphas_cumprod.to(dev, torch.float32)
    # the RoPE tables and their grid are the same every step: computed once, outside the compiled graph
    text_shape = (1, bundle.text_tokens_per_segment, bundle.transformer.config.text_embed_dim)
    rope = transformer_inputs(bundle, torch.zeros(1, *LATENT_SHAPE, device=dev), torch.zeros(text_shape, device=dev),
                              torch.zeros(1))["image_rotary_emb"]
    bf16 = dev.type == "cuda"

    def loss(pick: Tensor, drop: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        x0 = frames_to_latents(bundle.vae, pool[pick])
        batch_ids = torch.where((drop < cfg.text_dropout)[:, None], null_ids, ids[pick])
        a = alphas[t].view(-1, 1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v-prediction
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            text = bundle.text_encoder(batch_ids)[0]
            pred = bundle.transformer(hidden_states=noisy, encoder_hidden_states=text, timestep=t,
                                      image_rotary_emb=rope, return_dict=False)[0]
        return torch.nn.functional.mse_loss(pred.float(), target)

    return torch.compile(loss) if cfg.compile and dev.type == "cuda" else loss


def _named(bundle) -> dict[str, Tensor]:
    params = {f"transformer.{k}": v for k, v in bundle.transformer.named_parameters()}
    params.update({f"text_encoder.{k}": v for k, v in bundle.text_encoder.named_parameters()})
    return params


def _save_checkpoint(path: Path, step: int, seconds: float, bundle, ema: _EMA, opt, cfg: WorldTraining) -> None:
    from tttgraph.config import atomic_path

    state = {"format": CHECKPOINT_FORMAT, "step": step, "seconds": seconds, "config": asdict(cfg),
             "params": {k: v.detach().cpu() for k, v in _named(bundle).items()},
             "ema": {k: v.cpu() for k, v in ema.shadow.items()}, "optimizer": opt.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, bundle, ema: _EMA, opt) -> tuple[int, float]:
    """Restore a checkpoint into the parts; returns (steps done, seconds trained)."""
    fix = f"delete {path} to start the run over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a damaged or foreign file
        # torch's own message suggests weights_only=False, which would run code from the file: not repeated here
        raise TTTGraphError(f"{path} can't be read as a training checkpoint ({type(err).__name__}: damaged or "
                            f"not written by tttgraph train-world); {fix}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TTTGraphError(f"{path} is not a world base model checkpoint; {fix}")
    named = _named(bundle)
    if set(state["params"]) != set(named) or any(state["params"][k].shape != v.shape for k, v in named.items()):
        raise TTTGraphError(f"{path} holds weights of another architecture; {fix}")
    with torch.no_grad():
        for k, v in named.items():
            v.copy_(state["params"][k])
    ema.shadow = {k: v.to(ema.shadow[k].device) for k, v in state["ema"].items()}
    opt.load_state_dict(state["optimizer"])
    return int(state["step"]), float(state["seconds"])


def _metrics_writer(path: Path, start: int):
    """Append rows to ``metrics.csv``, first dropping rows past the checkpoint a resumed run starts from."""
    from tttgraph.config import write_atomic

    fields = ["step", "loss", "lr", "seconds"]
    kept = []
    if path.exists() and start:
        with open(path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= start]
    lines = [",".join(fields)] + [",".join(str(r.get(k, "")) for k in fields) for r in kept]
    write_atomic(path, "\n".join(lines) + "\n")
    f = open(path, "a", newline="")  # noqa: SIM115 (closed by the caller)
    return f, csv.DictWriter(f, fieldnames=fields)


def train(cfg: WorldTraining, out: str | os.PathLike, *, device: str | None = None, progress: bool = True,
          log=print) -> dict:
    """Train (or resume) the world base model into ``out``; returns the report (also ``out/report.json``)."""
    from tttgraph import interrupts
    from tttgraph.models.world_model import save_world_weights, world_bundle
    from tttgraph.progress import progress_bar

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bundle = world_bundle(require_weights=False)
    bundle.transformer.to(dev).train()
    bundle.text_encoder.to(dev).train()
    bundle.vae.to(dev)
    named = _named(bundle)
    decay = [p for k, p in named.items() if p.dim() >= 2]
    rest = [p for k, p in named.items() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99),
                            fused=dev.type == "cuda")
    ema = _EMA(named, cfg.ema_decay)
    ckpt = out / "checkpoint.pt"
    start, before = _load_checkpoint(ckpt, bundle, ema, opt) if ckpt.exists() else (0, 0.0)
    if start:
        log(f"resumed from {ckpt} at step {start} ({before / 60:.1f} min trained)")
    n_params = sum(p.numel() for p in named.values())
    log(f"world base model: {n_params:,} parameters (transformer + text encoder) on {dev}; "
        f"{cfg.steps} steps of batch {cfg.batch_size}")

    frames_np, texts = cached_pool(out, cfg.pool, cfg.seed, progress=progress)
    pool = torch.from_numpy(frames_np).to(dev)  # uint8 [N, 13, H, W, 3]
    ids = token_ids(bundle.tokenizer, texts, bundle.text_tokens_per_segment).to(dev)
    null_ids = token_ids(bundle.tokenizer, [""], bundle.text_tokens_per_segment).to(dev)

    step_loss = _loss_function(bundle, pool, ids, null_ids, cfg, dev)
    g = torch.Generator(device=dev)
    f, writer = _metrics_writer(out / "metrics.csv", start)
    begin = time.perf_counter()
    bar = progress_bar(total=cfg.steps, initial=start, desc="train world base", unit="step", disable=not progress)
    step = start
    try:
        with interrupts.deferred() as stop:
            for step in range(start, cfg.steps):
                g.manual_seed(cfg.seed * 1_000_003 + step)  # a step's batch depends on its index only: resumable
                seconds = before + time.perf_counter() - begin
                done_frac = progress_fraction(step, seconds, cfg)
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * lr_factor(step, done_frac, cfg)
                loss = step_loss(*_draw(g, len(pool), cfg.batch_size, dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(named.values()), cfg.grad_clip)
                opt.step()
                ema.update(named, step)
                done = step + 1
                if done % 25 == 0 or done == cfg.steps:
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise TTTGraphError(f"the loss is {value} at step {done}; lower --lr (now {cfg.lr})")
                    writer.writerow({"step": done, "loss": f"{value:.5f}", "lr": f"{opt.param_groups[0]['lr']:.3g}",
                                     "seconds": f"{before + time.perf_counter() - begin:.1f}"})
                    f.flush()
                    bar.set_postfix(loss=f"{value:.4f}")
                bar.update(1)
                seconds = before + time.perf_counter() - begin
                out_of_time = cfg.minutes is not None and seconds > 60 * cfg.minutes
                if done % cfg.checkpoint_every == 0 or done == cfg.steps or out_of_time or stop.signum is not None:
                    _save_checkpoint(ckpt, done, seconds, bundle, ema, opt, cfg)
                if stop.signum is not None:
                    raise interrupts.Interrupted(stop.signum)
                if out_of_time:
                    log(f"the {cfg.minutes}-minute budget ends at step {done} (learning rate fully decayed)")
                    break
    finally:
        bar.close()
        f.close()
    trained = time.perf_counter() - begin
    with torch.no_grad():
        for k, v in named.items():
            v.copy_(ema.shadow[k])
    weights = save_world_weights(bundle.transformer, bundle.text_encoder, out / "weights")
    log(f"wrote the EMA weights to {weights} ({trained / 60:.1f} min of training this run)")
    report = {"steps_done": step + 1 if cfg.steps > start else start, "train_seconds_this_run": round(trained, 1),
              "config": asdict(cfg), "device": _device_name(dev)}
    if cfg.eval_stories:
        report["held_out_3s"] = evaluate_base(world_bundle(weights), cfg.eval_stories, steps=cfg.eval_steps,
                                              guidance_scale=cfg.guidance_scale, device=dev, progress=progress,
                                              sheet=out / "held_out_samples.png")
        log(format_report(report["held_out_3s"]))
    from tttgraph.config import write_atomic

    write_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    return report


def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def generate_clips(bundle, paragraphs: list[str], *, steps: int = 50, guidance_scale: float = 6.0, seed: int = 0,
                   device: torch.device | str = "cpu", batch: int = 50) -> list[np.ndarray]:
    """One 3 s clip per paragraph with the plain (untransformed) base model: uint8 [49, H, W, 3] each."""
    from tttgraph.generate.sampler import SamplerSettings, denoise
    from tttgraph.models.cogvideox_bundle import decode_latents, encode_text, transformer_inputs

    dev = torch.device(device)
    model = bundle.transformer.to(dev).eval()
    bundle.text_encoder.to(dev).eval()
    cfg = bundle.transformer.config
    shape_one = (13, cfg.in_channels, cfg.sample_height, cfg.sample_width)
    videos = []
    for first in range(0, len(paragraphs), batch):
        chunk = paragraphs[first:first + batch]
        cond = encode_text(bundle, chunk).to(dev)  # [b, L, C]
        text = torch.cat([encode_text(bundle, [""] * len(chunk)).to(dev), cond]) if guidance_scale > 0 else cond
        settings = SamplerSettings(steps, guidance_scale, seed + first, checkpoint_every=0)

        def predict(x: Tensor, t: Tensor, text=text) -> Tensor:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                return model(**transformer_inputs(bundle, x, text, t), return_dict=False)[0]

        latents = denoise(predict, (len(chunk), *shape_one), settings, bundle.scheduler_config, device=dev,
                          progress=False)
        bundle.vae.to(dev)
        videos += [decode_latents(bundle, z) for z in latents]
    return videos


def evaluate_base(bundle, stories: int, *, steps: int = 50, guidance_scale: float = 6.0, seed: int = 0,
                  device: torch.device | str = "cpu", progress: bool = True, sheet: Path | None = None) -> dict:
    """Detection and attribute accuracy on ``stories`` held-out 1-segment stories (3 s clips).

    Attribute accuracy is the scorer's first-appearance accuracy: the fraction of characters
    rendered in their slot with exactly the colour, shape and size their paragraph states.
    ``sheet``: where to write a PNG of the first clips beside their ground truth (:func:`samples_sheet`).
    """
    from tttgraph.data.scorer import score_ground_truth, score_video, summarize
    from tttgraph.data.world import make_story

    start = time.perf_counter()
    board = [make_story(clip_story_seed(seed + 1, i), 1, "held_out") for i in range(stories)]
    videos = generate_clips(bundle, [s.paragraphs()[0] for s in board], steps=steps, guidance_scale=guidance_scale,
                            seed=seed, device=device)
    scores = [score_video(v, s) for v, s in zip(videos, board, strict=True)]
    summary = summarize(scores, [score_ground_truth(s) for s in board])
    if sheet is not None:
        from tttgraph.generate.video_io import write_png

        write_png(samples_sheet(videos, board, scores), sheet)
    return {"stories": stories, "detection": summary["detection"], "attribute_accuracy": summary["first_appearance"],
            "ceiling_detection": summary["ceiling_detection"], "sampler_steps": steps, "guidance_scale": guidance_scale,
            "seconds": round(time.perf_counter() - start, 1)}


def _described(character) -> str:
    return f"{character.size} {character.colour} {character.shape}"


def samples_sheet(videos: list[np.ndarray], board: list, scores: list, count: int = 8) -> np.ndarray:
    """uint8 [H, W, 3]: for the first ``count`` held-out clips, the generated middle frame beside the
    ground truth's, labelled with what the paragraph introduces and whether the scorer found it."""
    from tttgraph.data.world import render_story
    from tttgraph.generate.video_io import contact_sheet

    frames, labels = [], []
    for video, story, score in list(zip(videos, board, scores, strict=True))[:count]:
        truth = render_story(story)[0]
        middle = truth.shape[0] // 2
        frames += [video[middle], truth[middle]]
        cast = "; ".join(f"{a.slot}: {_described(story.character(a.name))}"
                         for a in story.segments[0].appearances)
        verdict = f"{round(score.first_appearance * len(story.segments[0].appearances))}/" \
                  f"{len(story.segments[0].appearances)} right"
        labels += [[f"generated ({verdict})", cast], ["ground truth", cast]]
    return contact_sheet(np.stack(frames), list(range(len(frames))), columns=4, labels=labels,
                         title="world base model on held-out 3 s clips (middle frame)")


def format_report(r: dict) -> str:
    return (f"held-out 3 s clips ({r['stories']} stories, {r['sampler_steps']} steps, guidance "
            f"{r['guidance_scale']:g}): detection {100 * r['detection']:.1f}%, attribute accuracy "
            f"{100 * r['attribute_accuracy']:.1f}% "
            f"(ground truth: detection {100 * r['ceiling_detection']:.1f}%) in {r['seconds']:.0f} s")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = WorldTraining()
    parser.add_argument("--out", default="runs/world_base", help="output directory (default runs/world_base)")
    for name in ("steps", "batch_size", "pool", "checkpoint_every", "eval_stories", "eval_steps", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name),
                            help=f"default {getattr(d, name)}")
    for name in ("lr", "guidance_scale", "text_dropout"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name),
                            help=f"default {getattr(d, name)}")
    parser.add_argument("--minutes", type=float,
                        help="a time budget: the learning rate decays over it and training stops at its end")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="run the training step eagerly (default: torch.compile it on CUDA)")
    parser.add_argument("--evaluate-only", action="store_true", help="only score OUT/weights on held-out clips")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    parser.set_defaults(run=main, interrupted=interrupted)


def interrupted(args: argparse.Namespace, command: list[str]) -> str:
    """What an interrupted run left in ``--out`` and the command that continues it (one line)."""
    import shlex

    ckpt = Path(args.out) / "checkpoint.pt"
    if args.evaluate_only or not ckpt.is_file():
        return f"no training checkpoint was written; start again with: {shlex.join(command)}"
    return f"saved the checkpoint {ckpt}; continue with the same command: {shlex.join(command)}"


def main(args: argparse.Namespace) -> int:
    cfg = WorldTraining(steps=args.steps, batch_size=args.batch_size, lr=args.lr, text_dropout=args.text_dropout,
                        pool=args.pool, seed=args.seed, checkpoint_every=args.checkpoint_every, minutes=args.minutes,
                        eval_stories=args.eval_stories, eval_steps=args.eval_steps, guidance_scale=args.guidance_scale,
                        compile=args.compile)
    if args.evaluate_only:
        from tttgraph.models.world_model import world_bundle

        dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        result = evaluate_base(world_bundle(Path(args.out) / "weights"), cfg.eval_stories, steps=cfg.eval_steps,
                               guidance_scale=cfg.guidance_scale, device=dev, progress=args.progress,
                               sheet=Path(args.out) / f"held_out_samples_cfg{cfg.guidance_scale:g}.png")
        print(format_report(result))
        return 0
    train(cfg, args.out, device=args.device, progress=args.progress)
    return 0


if __name__ == "__main__":
    import sys

    from tttgraph.command import standalone

    parser = argparse.ArgumentParser(prog="python -m tttgraph.models.train_world", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(standalone(parser))
