"""The denoising loop: v-prediction DPM-Solver++(2M) with dynamic CFG, resumable (docs/DESIGN.md §7).

One pass over the whole video: every step runs the transformer once on ``[uncond | cond]``
(classifier-free guidance doubles the batch), mixes the two with :func:`dynamic_cfg_scale` and
advances with diffusers' ``CogVideoXDPMScheduler`` (the SDE form of DPM-Solver++(2M) that
CogVideoX samples with; it adds fresh noise every step).

Determinism: the initial noise and each step's noise come from their own CPU generators seeded
from ``(seed, step)``, so the result depends only on the seed (not on the device, on how many
steps already ran in this process, or on resuming). Latents stay float32 between steps; the model
sees them cast to its dtype.

Resume: every ``checkpoint_every`` steps (and after the last) the latents, the scheduler's one
piece of cross-step state (the previous step's predicted x0) and the step count are written
atomically to one safetensors file with a fingerprint of the job; a later run with the same
fingerprint continues from there and produces exactly what an uninterrupted run does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tttgraph.config import atomic_path, clear_stale
from tttgraph.errors import TTTGraphError
from tttgraph.generate.guidance import DEFAULT_GUIDANCE_SCALE, dynamic_cfg_scale, guide

CHECKPOINT_FORMAT = "tttgraph-generate-checkpoint"
CHECKPOINT_VERSION = 1
DEFAULT_STEPS = 50
DEFAULT_CHECKPOINT_EVERY = 5


class LatentCheckpointError(TTTGraphError):
    """A latent checkpoint (generation resume file) can't be used: corrupted, or written by a different job."""


@dataclass(frozen=True)
class SamplerSettings:
    """How to sample.

    Attributes:
        steps: denoising steps N (reference 50).
        guidance_scale: s, the maximum extra guidance of the dynamic CFG schedule (reference 4-6);
            0 turns classifier-free guidance off (batch 1, no negative prompt).
        seed: seeds the initial noise and every step's noise.
        checkpoint_every: steps between latent checkpoints (0: none).
    """

    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    seed: int = 0
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be an int in [1, 1000], got {self.steps!r}")
        if not isinstance(self.guidance_scale, (int, float)) or self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a number >= 0 (reference 4-6), got {self.guidance_scale!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {self.seed!r}")
        every = self.checkpoint_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"checkpoint_every must be an int >= 0 (0 = no checkpoints), got {every!r}")

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 0

    @property
    def batch(self) -> int:
        """Transformer batch per step: 2 with classifier-free guidance, else 1."""
        return 2 if self.cfg else 1


def make_scheduler(scheduler_config: dict[str, Any], steps: int):
    """diffusers ``CogVideoXDPMScheduler`` from ``scheduler_config`` with ``steps`` timesteps set."""
    from diffusers import CogVideoXDPMScheduler

    scheduler = CogVideoXDPMScheduler.from_config(scheduler_config)
    if scheduler.config.prediction_type != "v_prediction":
        raise TTTGraphError(
            f"the scheduler config predicts {scheduler.config.prediction_type!r}; CogVideoX and this sampler use "
            "v_prediction (set prediction_type='v_prediction')"
        )
    scheduler.set_timesteps(steps)
    return scheduler


def _generator(seed: int, step: int) -> torch.Generator:
    """CPU generator for the initial noise (step -1) or step ``step``, independent of every other."""
    state = np.random.SeedSequence([seed, step + 1]).generate_state(1, np.uint64)[0]
    return torch.Generator("cpu").manual_seed(int(state) & (2**63 - 1))


def initial_noise(shape: tuple[int, ...], seed: int) -> Tensor:
    """float32 CPU noise [B, F, C, h, w] for ``seed`` (the same on every machine)."""
    return torch.randn(shape, generator=_generator(seed, -1), dtype=torch.float32)


class LatentCheckpoint:
    """A resumable snapshot of the sampler at ``path`` (safetensors; written atomically).

    Holds ``latents`` [B, F, C, h, w] float32, ``old_pred`` (previous predicted x0, absent before
    the first step), the number of steps done and ``job``, the job's fingerprint (a JSON object from
    :func:`job_fingerprint`; a checkpoint of a different job is refused rather than silently mixed in).
    """

    def __init__(self, path: str | os.PathLike, job: dict[str, Any]):
        self.path = Path(path)
        self.job = json.loads(json.dumps(job, sort_keys=True))

    def load(self) -> tuple[int, Tensor, Tensor | None] | None:
        """(steps done, latents, old_pred) or None when there is no checkpoint."""
        from tttgraph.safe_read import damaged, load_safetensors

        if not self.path.exists():
            return None
        fix = "delete it to start the generation over (or pass --no-resume)"
        what = "generation resume file"
        tensors, meta = load_safetensors(self.path, what, fix, error=LatentCheckpointError)
        if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != str(CHECKPOINT_VERSION):
            raise LatentCheckpointError(f"{self.path} is not a tttgraph generation checkpoint (version "
                                        f"{CHECKPOINT_VERSION}); delete it or pass another checkpoint path")
        try:
            saved = json.loads(meta["fingerprint"])
            step = int(meta["step"])
        except (KeyError, ValueError) as err:
            raise damaged(self.path, f"has damaged metadata ({type(err).__name__}: {err})", what, fix,
                          LatentCheckpointError) from None
        if not isinstance(saved, dict) or not isinstance(saved.get("steps"), int):
            raise damaged(self.path, "has a damaged job fingerprint", what, fix, LatentCheckpointError)
        if saved != self.job:
            differ = sorted(k for k in set(saved) | set(self.job) if saved.get(k) != self.job.get(k))
            raise LatentCheckpointError(
                f"{self.path} belongs to a different generation (differs in: {', '.join(differ)}); delete it, pass "
                "--no-resume to overwrite it, or rerun with the same settings to resume"
            )
        if "latents" not in tensors or not 0 <= step <= saved["steps"]:
            raise LatentCheckpointError(f"{self.path}: incomplete checkpoint (step {step}); delete it to start over")
        return step, tensors["latents"], tensors.get("old_pred")

    def save(self, step: int, latents: Tensor, old_pred: Tensor | None) -> None:
        from safetensors.torch import save_file

        tensors = {"latents": latents.detach().float().cpu().contiguous()}
        if old_pred is not None:
            tensors["old_pred"] = old_pred.detach().float().cpu().contiguous()
        meta = {"format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION), "step": str(step),
                "fingerprint": json.dumps(self.job, sort_keys=True)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clear_stale(self.path)  # left by a run killed while writing
        with atomic_path(self.path) as tmp:
            save_file(tensors, tmp, metadata=meta)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


# predict(latents [B, F, C, h, w] in the model dtype, timestep [B] int64) -> v-prediction [B, F, C, h, w]
Predict = Callable[[Tensor, Tensor], Tensor]


def denoise(
    predict: Predict,
    shape: tuple[int, ...],
    settings: SamplerSettings,
    scheduler_config: dict[str, Any],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    checkpoint: LatentCheckpoint | None = None,
    write_checkpoints: bool = True,
    callback: Callable[[int, Tensor], None] | None = None,
    progress: bool = True,
    seeds: Sequence[int] | None = None,
) -> Tensor:
    """Sample latents [B, F, C, h, w] (float32, on ``device``) of ``shape``.

    ``predict`` gets ``[uncond | cond]`` stacked in the batch dim when ``settings.cfg`` (batch 2B).
    ``seeds``: one per sample, each drawing its own initial and per-step noise, so that a sample is
    the one a batch of 1 with its seed makes, whatever else is in the batch (the scheduler draws its
    step noise twice from one generator, so one generator for the batch would tie the samples).
    None: ``settings.seed`` for the whole batch.
    With ``checkpoint``, resumes from it if present (refusing one of another job) and, when
    ``write_checkpoints``, saves every ``settings.checkpoint_every`` steps and after the last step.
    ``callback(steps_done, latents)`` runs after every step (after its checkpoint is written).
    """
    from tttgraph.progress import progress_bar

    scheduler = make_scheduler(scheduler_config, settings.steps)
    timesteps = scheduler.timesteps
    if seeds is not None and len(seeds) != shape[0]:
        raise ValueError(f"{len(seeds)} seeds for a batch of {shape[0]}")
    noise = (initial_noise(shape, settings.seed) if seeds is None
             else torch.cat([initial_noise((1, *shape[1:]), s) for s in seeds]))
    start, latents, old_pred = 0, noise * scheduler.init_noise_sigma, None
    if checkpoint is not None:
        resumed = checkpoint.load()
        if resumed is not None:
            start, latents, old_pred = resumed
            if tuple(latents.shape) != tuple(shape):
                raise LatentCheckpointError(f"{checkpoint.path} holds latents {tuple(latents.shape)}, this job "
                                            f"needs {tuple(shape)}; delete it to start over")
    latents = latents.to(device)
    old_pred = None if old_pred is None else old_pred.to(device)
    bar = progress_bar(total=settings.steps, initial=start, desc="denoising", unit="step", disable=not progress)
    for i in range(start, settings.steps):
        t = timesteps[i]
        model_in = torch.cat([latents, latents]) if settings.cfg else latents
        pred = predict(model_in.to(dtype), t.expand(model_in.shape[0]).to(device)).float()
        if settings.cfg:
            uncond, cond = pred.chunk(2)
            pred = guide(uncond, cond, dynamic_cfg_scale(i, settings.steps, settings.guidance_scale))
        previous = timesteps[i - 1] if i > 0 else None
        if seeds is None:
            latents, old_pred = scheduler.step(pred, old_pred, t, previous, latents,
                                               generator=_generator(settings.seed, i), return_dict=False)
        else:
            per_sample = [scheduler.step(pred[k:k + 1], None if old_pred is None else old_pred[k:k + 1], t, previous,
                                         latents[k:k + 1], generator=_generator(seed, i), return_dict=False)
                          for k, seed in enumerate(seeds)]
            latents, old_pred = (torch.cat(parts) for parts in zip(*per_sample, strict=True))
        done = i + 1
        every = settings.checkpoint_every
        if checkpoint is not None and write_checkpoints and every and (done % every == 0 or done == settings.steps):
            checkpoint.save(done, latents, old_pred)
        bar.update(1)
        if callback is not None:
            callback(done, latents)
    bar.close()
    return latents


def job_fingerprint(settings: SamplerSettings, shape: tuple[int, ...], **job: Any) -> dict[str, Any]:
    """The identity of a generation job for :class:`LatentCheckpoint` (what a resume must match)."""
    data = {k: v for k, v in asdict(settings).items() if k != "checkpoint_every"}
    return {**data, "shape": list(shape), **job}
