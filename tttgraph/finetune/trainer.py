"""One fine-tuning stage: check the inputs, prepare the data, build the model, train, save.

:func:`run_stage` is what ``tttgraph finetune`` runs. In order:

1. every input is checked before anything is computed (:func:`check_inputs`): the stage config,
   the pretrained directory, the previous stage's save (``init_from``), the dataset, the output
   directory and, with ``resume``, its checkpoint;
2. the data: the synthetic dataset is written under ``OUT/data`` (default) and encoded into clips
   of the stage's length (resumable; skipped when ``data.precomputed`` is given);
3. the model: the base transformer is transformed (first stage) or the previous stage's save is
   restored onto it (in place); its own blocks are checkpointed and sharded by FSDP2;
4. training: AdamW on the stage's trainable set, warm-up then constant (pretrained) / cosine (TTT)
   learning rates, v-prediction loss on a zero-terminal-SNR schedule, text dropout, gradient
   clipping; metrics to ``OUT/metrics.csv`` (and TensorBoard if installed); periodic atomic
   checkpoints under ``OUT/checkpoints``;
5. the result: ``tttgraph.save`` to ``OUT/ttt`` (the next stage's ``init_from``), ``OUT/loss.png``.

Determinism: the data order is a seeded permutation per epoch and each sample's timestep, noise
and text dropout come from a generator seeded by the sample's global position. The loss sequence
therefore does not depend on the number of processes (same global batch) and a resumed run
repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tttgraph import interrupts
from tttgraph.finetune import distributed
from tttgraph.finetune.checkpointing import TrainingCheckpointError, list_checkpoints, newest_intact, read_trainer_state
from tttgraph.finetune.dataset import DatasetError, PrecomputedClips, plan_clips, read_manifest, scan_raw
from tttgraph.finetune.stages import GENERATED_DATASETS, StageConfig, StageConfigError
from tttgraph.progress import abandon, progress_bar

METRICS = "metrics.csv"
COLUMNS = ("step", "loss", "lr", "lr_ttt", "grad_norm", "step_time_s", "samples_per_s", "elapsed_s")
_ATTENTION = (".attn1.to_q.", ".attn1.to_k.", ".attn1.to_v.", ".attn1.to_out.0.", ".attn1.norm_q.", ".attn1.norm_k.")


@dataclass
class Inputs:
    """What :func:`check_inputs` found: resolved paths, the raw samples, the checkpoint to resume
    and one line per newer checkpoint skipped because it is damaged."""

    pretrained: Path | None = None
    raw_samples: list = field(default_factory=list)
    resume_from: Path | None = None
    skipped: list[str] = field(default_factory=list)


def check_inputs(cfg: StageConfig, out: Path, *, pretrained: str | None, resume: bool,
                 check_out: bool = True) -> Inputs:
    """Raise a clear error for any bad input, before a model is built or a tensor computed.

    ``check_out``: also check ``out`` (a new run must not overwrite one; ``resume`` needs one).
    """
    from tttgraph.checkpoint import RestoreError, read_recipe
    from tttgraph.models.cogvideox_bundle import _check_dir

    found = Inputs()
    path = pretrained or cfg.model.pretrained
    if cfg.model.kind == "world":
        from tttgraph.models.world_model import WEIGHTS_DIR, weights_available

        where = Path(path).expanduser() if path else WEIGHTS_DIR
        found.pretrained = where
        if not weights_available(where):
            raise StageConfigError(
                f"stage {cfg.name!r} fine-tunes the world base model, but {where} holds no weights of it; train "
                "them with `tttgraph train-world --out DIR` and set model.pretrained (or --pretrained) to DIR/weights"
            )
    elif cfg.model.kind == "pretrained" or pretrained:
        if not path:
            raise StageConfigError(
                f"stage {cfg.name!r} fine-tunes a pretrained CogVideoX (model.kind='pretrained'); pass "
                "--pretrained DIR (a diffusers-format directory: transformer/, vae/, text_encoder/, tokenizer/, "
                "scheduler/)"
            )
        found.pretrained = Path(path).expanduser()
        _check_dir(found.pretrained)
    if cfg.init_from is not None:
        try:
            read_recipe(cfg.init_from)
        except RestoreError as err:
            raise StageConfigError(
                f"stage {cfg.name!r} starts from init_from={cfg.init_from!r}, which is not a finished stage: {err}. "
                "Run the previous stage first; its --out DIR holds the save in DIR/ttt"
            ) from None
    if cfg.data.precomputed is not None:
        manifest = read_manifest(cfg.data.precomputed)
        if manifest["clip_seconds"] != cfg.clip_seconds:
            raise DatasetError(
                f"{cfg.data.precomputed} holds {manifest['clip_seconds']} s clips, stage {cfg.name!r} trains on "
                f"{cfg.clip_seconds} s; precompute clips of {cfg.clip_seconds} s"
            )
        if not manifest["complete"]:
            raise DatasetError(f"{cfg.data.precomputed} is an unfinished precompute; re-run it (it resumes)")
    elif cfg.data.dataset not in GENERATED_DATASETS:
        found.raw_samples = scan_raw(cfg.data.dataset)
        plan_clips(found.raw_samples, cfg.segments, cfg.data.clip_stride_segments)
    checkpoints = list_checkpoints(out / "checkpoints") if check_out else []
    if resume and check_out:
        if not checkpoints:
            raise TrainingCheckpointError(f"--resume: {out / 'checkpoints'} holds no checkpoint; start without "
                                          "--resume")
        found.resume_from, found.skipped = newest_intact(out / "checkpoints")
        if found.resume_from is None:
            raise TrainingCheckpointError(
                f"--resume: no checkpoint in {out / 'checkpoints'} is intact:\n  " + "\n  ".join(found.skipped)
                + f"\nstart again without --resume (delete {out / 'checkpoints'} first)"
            )
        saved = read_trainer_state(found.resume_from).get("config")
        if saved != json.loads(json.dumps(cfg.to_dict())):
            diff = sorted(k for k in cfg.to_dict() if (saved or {}).get(k) != json.loads(json.dumps(cfg.to_dict()[k])))
            raise TrainingCheckpointError(
                f"--resume: the run in {out} was started with a different config (differs in {diff}); resume with "
                "the same --config and --max-steps, or use another --out"
            )
    elif checkpoints:
        raise TrainingCheckpointError(
            f"{out} already holds a run (checkpoint step {checkpoints[-1][0]}); pass --resume to continue it or "
            "choose another --out"
        )
    return found


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def trainable_name(name: str, trainable: str) -> bool:
    """Whether the parameter ``name`` (of the transformed model) trains under ``trainable``."""
    if trainable == "all" or ".gated_ttt." in name:
        return True
    return trainable == "ttt_attention" and any(part in name for part in _ATTENTION)


def is_gate(name: str) -> bool:
    """Whether ``name`` is one of a TTT layer's gates (``GatedBidirectionalTTT.{forward,backward}_gate_*``)."""
    return ".gated_ttt." in name and name.rsplit(".", 1)[-1].startswith(("forward_gate_", "backward_gate_"))


def _no_decay(name: str, p: torch.Tensor) -> bool:
    # Biases, norms and gates: every 1-D tensor, plus the TTT layer's per-head norm and inner biases.
    return p.dim() <= 1 or name.endswith(("ttt_norm_weight", "ttt_norm_bias", ".b1", ".b2"))


def lr_factors(cfg: StageConfig, steps: int):
    """LambdaLR factors: linear warm-up, then constant (pretrained) or cosine to lr_ttt_end (TTT)."""
    t = cfg.train
    warmup = min(t.warmup_steps, max(steps - 1, 0))
    end = t.lr_ttt_end / t.lr_ttt

    def warm(step: int) -> float | None:
        return (step + 1) / warmup if step < warmup else None

    def constant(step: int) -> float:
        w = warm(step)
        return 1.0 if w is None else w

    def cosine(step: int) -> float:
        w = warm(step)
        if w is not None:
            return w
        progress = min(1.0, (step - warmup) / max(1, steps - 1 - warmup))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))

    return constant, cosine


def build_optimizer(cfg: StageConfig, named: dict[str, nn.Parameter], steps: int):
    """AdamW with four groups (pretrained/TTT x decay/no decay) and its LambdaLR schedule."""
    t = cfg.train
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in named.items():
        kind = "ttt" if ".gated_ttt." in name else "pretrained"
        groups.setdefault((kind, _no_decay(name, p)), []).append(p)
    constant, cosine = lr_factors(cfg, steps)
    param_groups, lambdas = [], []
    for (kind, no_decay), params in sorted(groups.items()):
        param_groups.append({"params": params, "lr": t.lr_ttt if kind == "ttt" else t.lr,
                             "weight_decay": 0.0 if no_decay else t.weight_decay, "name": f"{kind}/"
                             f"{'no_decay' if no_decay else 'decay'}"})
        lambdas.append(cosine if kind == "ttt" else constant)
    opt = torch.optim.AdamW(param_groups, betas=t.betas, eps=t.eps)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambdas)


def _load_bundle(cfg: StageConfig, inputs: Inputs, *, need_encoders: bool, device: torch.device | None = None):
    """The tiny bundle, or the pretrained transformer (float32 master weights, on the CPU) plus,
    if ``need_encoders``, the VAE and T5 on ``device`` (bf16 on CUDA) for the precompute."""
    from diffusers import CogVideoXTransformer3DModel

    from tttgraph.models.cogvideox_bundle import (
        _BUNDLE_FIX,
        BundleError,
        CogVideoXBundle,
        _read_scheduler,
        load_pretrained,
        tiny_bundle,
    )

    if cfg.model.kind == "world":
        from tttgraph.models.world_model import world_bundle

        return world_bundle(inputs.pretrained)  # check_inputs resolved it: --pretrained, model.pretrained or shipped
    if inputs.pretrained is None:
        return tiny_bundle(cfg.model.seed)
    try:
        transformer = CogVideoXTransformer3DModel.from_pretrained(
            inputs.pretrained / "transformer", torch_dtype=torch.float32, local_files_only=True).eval()
    except Exception as err:  # diffusers raises OSError, ValueError or safetensors' own type
        raise BundleError(f"could not load {inputs.pretrained / 'transformer'}: {err}; {_BUNDLE_FIX}") from err
    if need_encoders:
        cuda = device is not None and device.type == "cuda"
        bundle = load_pretrained(inputs.pretrained, dtype=torch.bfloat16 if cuda else torch.float32,
                                 device=device or "cpu")
        bundle.transformer = transformer  # the encoders' copy (bf16, on the device) is not trained
        return bundle
    return CogVideoXBundle(transformer, None, None, None, _read_scheduler(inputs.pretrained),
                           int(transformer.config.max_text_seq_length), str(inputs.pretrained))


def _example_inputs(bundle, data: PrecomputedClips, batch: int) -> dict[str, Any]:
    from tttgraph.models.cogvideox_bundle import transformer_inputs

    lat, text = data[0]
    return transformer_inputs(bundle, lat.expand(batch, *lat.shape).clone(), text.expand(batch, *text.shape).clone(),
                              torch.full((batch,), 500, dtype=torch.long))


def build_model(cfg: StageConfig, bundle, data: PrecomputedClips, batch: int):
    """The transformed transformer (first stage) or the restored previous stage, in train mode."""
    import tttgraph

    example = _example_inputs(bundle, data, batch)
    base = bundle.transformer.float()
    if cfg.init_from is None:
        ttt = cfg.ttt_config()
        if ttt.text_tokens_per_segment not in (None, bundle.text_tokens_per_segment):
            raise StageConfigError(
                f"ttt.text_tokens_per_segment={ttt.text_tokens_per_segment} but the model takes "
                f"{bundle.text_tokens_per_segment} text tokens per segment; set it to {bundle.text_tokens_per_segment}"
            )
        tm = tttgraph.transform(base, ttt, example, progress=False)
    else:
        tm = tttgraph.restore(base, cfg.init_from, example, progress=False)
    return tm.train()


def transformer_config(cfg: StageConfig, pretrained: Path | None) -> dict[str, Any]:
    """The transformer's config (tiny, world or the pretrained directory's ``config.json``) without loading weights."""
    if cfg.model.kind == "world":
        from tttgraph.models.world_model import WORLD_TRANSFORMER

        return dict(WORLD_TRANSFORMER)
    if pretrained is None:
        from tttgraph.models.cogvideox_bundle import TINY_TRANSFORMER

        return dict(TINY_TRANSFORMER)
    from tttgraph.safe_read import read_json

    return read_json(pretrained / "transformer" / "config.json", "pretrained transformer config",
                     "download it again (or the whole model directory)", error=StageConfigError)


def memory_plan(cfg: StageConfig, pretrained: Path | None, world: int, capacity: float | None = None,
                config: dict[str, Any] | None = None):
    """(plan, architecture, workload): the per-rank :class:`~tttgraph.parallel.memory_plan.MemoryPlan` of a
    training step of this stage; ``config`` overrides the transformer config read from ``pretrained``."""
    from tttgraph.models.cogvideox_bundle import SPATIAL_COMPRESSION
    from tttgraph.models.world_model import WORLD_AUTOENCODER
    from tttgraph.parallel.memory_plan import Architecture, Settings, Workload, training_plan

    config = config or transformer_config(cfg, pretrained)
    ttt = cfg.ttt_config() if cfg.init_from is None else None
    arch = Architecture.cogvideox(config, cfg.train.trainable, ttt.mlp_expansion if ttt else 4)
    spatial = WORLD_AUTOENCODER["spatial_compression"] if cfg.model.kind == "world" else SPATIAL_COMPRESSION
    p = int(config.get("patch_size", 2)) * spatial
    text = int(config.get("max_text_seq_length", 226))
    segment, overlap = (ttt.segment_latent_frames, ttt.segment_overlap_frames) if ttt else (12, 1)
    work = Workload.cogvideox(cfg.clip_seconds, text, (cfg.data.height // p, cfg.data.width // p), segment, overlap)
    fsdp = cfg.parallel.fsdp == "on" or (cfg.parallel.fsdp == "auto" and world > 1)
    settings = Settings(world, cfg.parallel.context, cfg.train.batch_size, cfg.train.activation_checkpointing, fsdp)
    return training_plan(arch, work, settings, capacity), arch, work


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def prepare_data(cfg: StageConfig, out: Path, bundle, inputs: Inputs, ctx, progress: bool) -> Path:
    """The precomputed directory of this stage's clips (written by the main process if needed)."""
    from tttgraph.finetune.precompute import precompute

    if cfg.data.precomputed is not None:
        return Path(cfg.data.precomputed)
    target = out / "data" / f"clips_{cfg.clip_seconds}s"
    if ctx.main:
        raw, samples = cfg.data.dataset, inputs.raw_samples or None
        d = cfg.data
        seconds = d.synthetic_seconds or cfg.clip_seconds
        if raw == "synthetic":
            from tttgraph.data.synthetic import write_dataset

            raw = write_dataset(out / "data" / "synthetic", d.synthetic_samples, seconds=seconds, height=d.height,
                                width=d.width, seed=d.seed)
            samples = None
        elif raw == "world":
            from tttgraph.data.world import write_stories

            raw = write_stories(out / "data" / "world", d.synthetic_samples, seconds // 3, "train", d.seed,
                                d.height, d.width)
            samples = None
        precompute(bundle, raw, target, cfg.clip_seconds, stride=cfg.data.clip_stride_segments,
                   shard_size=cfg.data.shard_size, progress=progress, samples=samples)
    ctx.barrier()
    return target


def sample_batch(data: PrecomputedClips, positions: list[int], *, seed: int, data_seed: int, text_dropout: float,
                 num_train_timesteps: int, high_noise_fraction: float = 0.0,
                 high_noise_from: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents, text, noise and timesteps of the samples at global ``positions`` of the data stream.

    Position p reads clip ``perm_e[p mod N]`` of epoch ``e = p // N`` (a seeded permutation); its
    noise, timestep and text dropout come from a generator seeded by ``(seed, p)`` alone. A share
    ``high_noise_fraction`` of the timesteps is drawn from ``[high_noise_from, num_train_timesteps)``.
    """
    n = len(data)
    lat, txt, noise, steps = [], [], [], []
    perms: dict[int, torch.Tensor] = {}
    for p in positions:
        epoch = p // n
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(data_seed * 100_003 + epoch))
        latents, text = data[int(perms[epoch][p % n])]
        g = torch.Generator().manual_seed((seed << 32) + p)
        low = 0
        if high_noise_fraction and float(torch.rand((), generator=g)) < high_noise_fraction:
            low = min(high_noise_from, num_train_timesteps - 1)
        steps.append(int(torch.randint(low, num_train_timesteps, (1,), generator=g)))
        noise.append(torch.randn(latents.shape, generator=g))
        if float(torch.rand((), generator=g)) < text_dropout:
            text = data.null_text
        lat.append(latents)
        txt.append(text)
    return torch.stack(lat), torch.stack(txt), torch.stack(noise), torch.tensor(steps, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


class Metrics:
    """``OUT/metrics.csv`` (one row per step; rows past a resumed checkpoint are dropped) + TensorBoard."""

    def __init__(self, out: Path, start_step: int, enabled: bool):
        self.path = out / METRICS
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        from tttgraph.config import write_atomic

        rows = _kept_rows(self.path, start_step) if start_step else []
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)
        write_atomic(self.path, text.getvalue())  # a kill now must not lose the rows kept
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:  # TensorBoard is optional
            self.tb = None

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow({k: repr(row[k]) if isinstance(row[k], float) else row[k]
                                                            for k in COLUMNS})
        if self.tb is not None:
            for key in COLUMNS[1:]:
                self.tb.add_scalar(f"train/{key}", row[key], row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _kept_rows(path: Path, last_step: int) -> list[dict[str, str]]:
    """The rows of steps 1..``last_step`` of an earlier ``metrics.csv``. A row cut short by a kill, garbage
    or a repeated step is dropped: the checkpoint resumes the run, this log only records it."""
    if not path.is_file():
        return []
    rows: dict[int, dict[str, str]] = {}
    with path.open(newline="", errors="replace") as f:
        try:
            for r in csv.DictReader(f):
                try:
                    step = int(r.get("step") or "")
                    for key in COLUMNS[1:]:
                        float(r[key])
                except (TypeError, ValueError, KeyError):
                    continue
                if 1 <= step <= last_step:
                    rows[step] = r
        except csv.Error:  # e.g. a NUL byte: keep the rows before it
            pass
    return [rows[s] for s in sorted(rows)]


def read_metrics(out: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of ``OUT/metrics.csv`` as floats (``step`` as int)."""
    from tttgraph.safe_read import damaged, read_text

    path = Path(out) / METRICS
    fix = "resume the run (--resume) to rewrite it from the last checkpoint"
    text = read_text(path, "metrics file", fix)
    rows = []
    try:
        for r in csv.DictReader(io.StringIO(text, newline="")):
            if not r.get("step") or not r.get("loss"):
                raise ValueError(f"a row without step or loss: {r}")
            rows.append({k: (int(v) if k == "step" else float(v)) for k, v in r.items() if v not in ("", None)})
    except (ValueError, TypeError, csv.Error) as err:
        after = rows[-1].get("step", "?") if rows else 0
        raise damaged(path, f"has a damaged row after step {after} ({err})", "metrics file", fix) from None
    return rows


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def _free_params(model: nn.Module) -> None:
    """Drop the storage of ``model``'s parameters (the sharded copy trains; see ``_fill_params``)."""
    for module in model.modules():
        for key, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[key] = nn.Parameter(torch.empty_like(p, device="meta"),
                                                       requires_grad=p.requires_grad)


def _fill_params(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for name, t in state.items():
        module_name, _, key = name.rpartition(".")
        module = model.get_submodule(module_name)
        module._parameters[key] = nn.Parameter(t, requires_grad=module._parameters[key].requires_grad)


def _stop_requested(stop: interrupts.StopRequest, ctx) -> int | None:
    """The signal that asked the run to stop (None: go on); every process gets the same answer."""
    if ctx.world == 1:
        return stop.signum
    # Processes can receive a signal a step apart; they must stop (and checkpoint) at the same step.
    if ctx.mean(1.0 if stop.signum is not None else 0.0) > 0:
        return stop.signum if stop.signum is not None else signal.SIGTERM
    return None


def run_stage(cfg: StageConfig, out: str | os.PathLike, *, pretrained: str | None = None, resume: bool = False,
              progress: bool = True, device: str | None = None, log=print) -> dict[str, Any]:
    """Run one stage (see the module docstring); returns a summary dict (also printed by ``log``).

    SIGINT or SIGTERM during training stop the run after the current step with a checkpoint of
    that step (a second signal stops at once, from the last checkpoint) and raise
    :class:`~tttgraph.interrupts.Interrupted`; ``resume=True`` continues exactly.
    """
    import tttgraph
    from tttgraph.finetune.blocks import block_modules, enable_checkpointing
    from tttgraph.finetune.checkpointing import load_checkpoint, save_checkpoint
    from tttgraph.finetune.plot import loss_curve_png
    from tttgraph.models.cogvideox_bundle import transformer_inputs
    from tttgraph.parallel import all_reduce_gradients, shard_context
    from tttgraph.parallel.memory_plan import require_fit
    from tttgraph.parallel.mesh import context_layout, fsdp_loss_scale

    out = Path(out)
    inputs = check_inputs(cfg, out, pretrained=pretrained, resume=resume)
    ctx = distributed.setup(device)
    signals = contextlib.ExitStack()  # the training loop's signal handling, undone on any exit
    try:
        t = cfg.train
        say = log if ctx.main else (lambda *a, **k: None)
        capacity = distributed.device_memory(ctx.device)
        plan, arch, work = memory_plan(cfg, inputs.pretrained, ctx.world, capacity)
        say(plan.summary())
        require_fit(plan, arch, work)  # before any model is loaded
        layout = context_layout(ctx.rank, ctx.world, cfg.parallel.context, ctx.device.type)
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(t.seed)
        # Only the main process encodes (prepare_data); the others wait for it at a barrier.
        need_encoders = cfg.data.precomputed is None and ctx.main
        bundle = _load_bundle(cfg, inputs, need_encoders=need_encoders, device=ctx.device)
        data_dir = prepare_data(cfg, out, bundle, inputs, ctx, progress and ctx.main)
        data = PrecomputedClips(data_dir)
        data.check_model(latent_channels=bundle.latent_channels, text_dim=bundle.text_embed_dim,
                         text_tokens=bundle.text_tokens_per_segment, source=bundle.source)
        if data.manifest["clip_seconds"] != cfg.clip_seconds:
            raise DatasetError(f"{data_dir} holds {data.manifest['clip_seconds']} s clips, the stage needs "
                               f"{cfg.clip_seconds} s")
        bundle.vae = bundle.text_encoder = None  # encoders are done: free their memory

        tm = build_model(cfg, bundle, data, t.batch_size)
        for name, p in tm.named_parameters():
            p.requires_grad_(trainable_name(name, t.trainable) and not (t.freeze_gates and is_gate(name)))
        fsdp = cfg.parallel.fsdp == "on" or (cfg.parallel.fsdp == "auto" and ctx.world > 1)
        if layout.data_size > 1 and not fsdp:
            raise StageConfigError("several data-parallel processes need parallel.fsdp 'auto' or 'on'")
        cuda = ctx.device.type == "cuda"
        bf16 = cuda and cfg.parallel.mixed_precision == "bf16"
        if not fsdp:
            tm.to(ctx.device)
        if t.activation_checkpointing:
            enable_checkpointing(tm)
        model, template = tm, None
        if fsdp:
            # The save at the end needs whole tensors on a model with the plan: a copy, storage freed.
            template = copy.deepcopy(tm)
            _free_params(template)
            # FSDP2 warns that the root returns a view; nothing here writes to the model output in place.
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        if layout.context is not None:
            shard_context(tm, layout.context)  # after the template copy: it holds the process group
        if fsdp:
            distributed.shard(model, block_modules(model), ctx, bf16=bf16)
        # FSDP2 averages over all ranks, but a context group's ranks hold shares of one sample's gradient.
        loss_scale = fsdp_loss_scale(layout) if fsdp else 1.0
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        total_params = sum(p.numel() for p in model.parameters())
        trained_params = sum(p.numel() for p in named.values())
        new_params = sum(p.numel() for n, p in named.items() if ".gated_ttt." in n)
        opt, sched = build_optimizer(cfg, named, t.steps)

        start = 0
        for line in inputs.skipped:
            say(line)
        if inputs.resume_from is not None:
            start = load_checkpoint(inputs.resume_from, params=named, optimizer=opt, scheduler=sched, ctx=ctx)["step"]
            say(f"resumed from {inputs.resume_from} (step {start})")
        metrics = Metrics(out, start, ctx.main)
        from diffusers import CogVideoXDDIMScheduler

        noise_sched = CogVideoXDDIMScheduler.from_config(bundle.scheduler_config)
        num_t = noise_sched.config.num_train_timesteps
        micro = t.batch_size * layout.data_size  # samples per micro-step over all processes
        global_batch = micro * t.grad_accum
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else None

        say(f"stage {cfg.name}: {cfg.clip_seconds} s clips ({data.latent_frames} latent frames, {data.segments} "
            f"segment(s)), {len(data)} clips from {data_dir}; model {bundle.source} + TTT; training {t.trainable} "
            f"({trained_params:,} of {total_params:,} parameters); {ctx.world} process(es) on {ctx.device}"
            f"{', FSDP2' if fsdp else ''}{', bf16' if bf16 else ''}"
            f"{f', context parallel over {layout.context_size}' if layout.context is not None else ''}; "
            f"global batch {global_batch}")
        losses: list[float] = []
        begin = time.perf_counter()
        bar = progress_bar(total=t.steps, initial=start, desc=f"finetune {cfg.name}", unit="step",
                           disable=not (progress and ctx.main), file=sys.stderr)
        stop = signals.enter_context(interrupts.deferred())  # a signal stops the loop between two steps
        for step in range(start, t.steps):
            tick = time.perf_counter()
            step_loss = 0.0
            for m in range(t.grad_accum):
                first = (step * t.grad_accum + m) * micro + layout.data_rank * t.batch_size
                x0, text, noise, steps_t = sample_batch(
                    data, list(range(first, first + t.batch_size)), seed=t.seed, data_seed=cfg.data.seed,
                    text_dropout=t.text_dropout, num_train_timesteps=num_t,
                    high_noise_fraction=t.high_noise_fraction, high_noise_from=t.high_noise_from)
                x0, text, noise, steps_t = (v.to(ctx.device) for v in (x0, text, noise, steps_t))
                # CogVideoX latents are [B, F, C, h, w]; the scheduler broadcasts over any shape.
                noisy = noise_sched.add_noise(x0, noise, steps_t)
                target = noise_sched.get_velocity(x0, noise, steps_t)
                fwd = transformer_inputs(bundle, noisy, text, steps_t)
                if autocast is not None:
                    with autocast:
                        pred = model(**fwd, return_dict=False)[0]
                else:
                    pred = model(**fwd, return_dict=False)[0]
                # v-prediction MSE; equal to the reference's x0-space MSE weighted by 1 / (1 - alpha_bar).
                loss = torch.nn.functional.mse_loss(pred.float(), target.float()) / t.grad_accum
                (loss * loss_scale if loss_scale != 1 else loss).backward()
                step_loss += float(loss.detach())
            if layout.context is not None and not fsdp:  # each rank holds its tokens' share
                all_reduce_gradients(named.values(), layout.context.group)
            grad_norm = float(distributed.full(torch.nn.utils.clip_grad_norm_(list(named.values()), t.grad_clip)))
            lrs = {g["name"].split("/")[0]: g["lr"] for g in opt.param_groups}  # the rates this step used
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss_value = ctx.mean(step_loss)
            losses.append(loss_value)
            took = time.perf_counter() - tick
            metrics.log({"step": step + 1, "loss": loss_value, "lr": lrs.get("pretrained", 0.0),
                         "lr_ttt": lrs.get("ttt", 0.0), "grad_norm": grad_norm, "step_time_s": took,
                         "samples_per_s": global_batch / took, "elapsed_s": time.perf_counter() - begin})
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", samples_s=f"{global_batch / took:.2f}")
            done = step + 1
            stopping = _stop_requested(stop, ctx)
            if done == t.steps or stopping or (cfg.checkpoint.every and done % cfg.checkpoint.every == 0):
                save_checkpoint(out / "checkpoints", done, params=named, optimizer=opt, scheduler=sched, ctx=ctx,
                                extra={"config": cfg.to_dict(), "samples_seen": done * global_batch,
                                       "epoch": done * global_batch // len(data)},
                                keep=cfg.checkpoint.keep)
            if stopping:
                abandon(bar)
                metrics.close()
                raise interrupts.Interrupted(stopping)
        signals.close()  # from here on a signal stops at once (saving the stage takes seconds)
        bar.close()
        metrics.close()

        if template is not None:
            full = {n: distributed.full(p.detach()).cpu() for n, p in model.named_parameters()}
            if ctx.main:
                _fill_params(template, full)
        save_dir = out / "ttt"
        history = read_metrics(out) if ctx.main else []
        if ctx.main:
            tttgraph.save(tm if template is None else template, save_dir)
            png = loss_curve_png([r["step"] for r in history], [r["loss"] for r in history], out / "loss.png",
                                 title=f"fine-tuning stage {cfg.name}: training loss (v-prediction MSE)")
        ctx.barrier()
        wall = time.perf_counter() - begin
        summary = {
            "stage": cfg.name, "steps": t.steps, "start_step": start, "world_size": ctx.world,
            "first_loss": history[0]["loss"] if history else None,
            "last_loss": history[-1]["loss"] if history else None,
            "trained_parameters": trained_params, "total_parameters": total_params, "new_parameters": new_params,
            "save_dir": str(save_dir), "metrics": str(out / METRICS), "wall_s": wall,
        }
        if ctx.main:
            k = max(1, min(10, len(history) // 5))
            head = sum(r["loss"] for r in history[:k]) / k if history else float("nan")
            tail = sum(r["loss"] for r in history[-k:]) / k if history else float("nan")
            say(
                f"\ntrained stage {cfg.name!r}: {t.trainable} ({trained_params:,} of {total_params:,} parameters, "
                f"{new_params:,} new TTT) for steps {start + 1}-{t.steps} in {wall:.0f} s\n"
                f"  loss: mean of the first {k} steps {head:.4f} -> last {k} steps {tail:.4f}\n"
                f"  tttgraph save (new + changed weights, recipe): {save_dir}  "
                f"(tttgraph.restore(base, {str(save_dir)!r}); next stage: init_from)\n"
                f"  metrics: {out / METRICS}; loss curve: {png}; checkpoints: {out / 'checkpoints'}"
            )
        return summary
    finally:
        signals.close()
        ctx.close()
