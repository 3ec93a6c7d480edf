"""Several storyboards of one length in one denoising pass (evaluation over many held-out stories).

    models = load_models(plan(options), options=options)
    videos = generate_many(models, boards, options)        # uint8 [frames, H, W, 3] per storyboard

:func:`~tttgraph.generate.pipeline.generate` makes one video per call, which leaves a GPU idle on a
small model (the world model: one 63 s story is 2 x 27k tokens a step). Here the boards are stacked in
the batch dimension: their latents ``[N, F, C, h, w]``, and for classifier-free guidance their negative
prompts' embeddings then their paragraphs' (``[2N, S*L, C]``, the order :func:`denoise` splits). The
transformed model runs at any batch, so the models loaded for one video serve. Each board draws its
noise from its own seed, so its video is the one ``generate`` makes of it with that seed (up to the
rounding of batched arithmetic), whatever else is in the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from tttgraph.generate.pipeline import GenerateError, GenerateOptions, LoadedModels, _text, plan
from tttgraph.generate.sampler import denoise
from tttgraph.generate.storyboard import Storyboard


@torch.no_grad()
def generate_many(models: LoadedModels, boards: Sequence[Storyboard], options: GenerateOptions,
                  seeds: Sequence[int] | None = None) -> list[np.ndarray]:
    """One video per storyboard (all of ``options.seconds``), denoised together: uint8 [T, H, W, 3] each.

    ``options`` gives the length, sampler settings, device and dtype (its ``storyboard``, ``seed`` and
    output paths are not used); ``models`` come from :func:`load_models` for that job. ``seeds``: one
    per board (default ``options.seed``, ``options.seed + 1``, ...).
    """
    from tttgraph.models.cogvideox_bundle import decode_latents, transformer_inputs

    if not boards:
        return []
    seeds = list(range(options.seed, options.seed + len(boards))) if seeds is None else list(seeds)
    if len(seeds) != len(boards):
        raise GenerateError(f"{len(seeds)} seeds for {len(boards)} storyboards; pass one seed per storyboard")
    jobs = [plan(dataclasses.replace(options, storyboard=board)) for board in boards]
    job = jobs[0]
    shapes = {j.latent_shape for j in jobs}
    if len(shapes) != 1:
        raise GenerateError(f"the storyboards make latents of {len(shapes)} shapes {sorted(shapes)}; pass boards of "
                            "one length (or set options.seconds)")
    if models.latent_shape[1:] != job.latent_shape[1:]:
        raise GenerateError(f"the loaded models were prepared for latents {models.latent_shape}, these boards make "
                            f"{job.latent_shape}; load models for this length")
    bundle, model = models.bundle, models.model
    texts = [_text(bundle, j.storyboard, job.settings.cfg, job.device, job.dtype) for j in jobs]  # [2|1, S*L, C]
    text = torch.cat([torch.stack([t[row] for t in texts]) for row in range(texts[0].shape[0])])  # [2N|N, S*L, C]

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(**transformer_inputs(bundle, x, text, t), return_dict=False)[0]

    latents = denoise(predict, (len(boards), *job.latent_shape[1:]), job.settings, bundle.scheduler_config,
                      device=job.device, dtype=job.dtype, progress=options.progress, seeds=seeds)
    return [decode_latents(bundle, z.to(job.dtype), tile_frames=options.tile_frames, progress=False) for z in latents]
