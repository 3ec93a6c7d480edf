"""diffusers interop: a ``CogVideoXPipeline`` with its transformer transformed by tttgraph.

The rest of the pipeline (T5, VAE, scheduler, the sampling loop) stays as diffusers ships it::

    from diffusers import CogVideoXPipeline
    from tttgraph.generate.interop import storyboard_embeddings, transform_pipeline, video_frames

    pipe = CogVideoXPipeline.from_pretrained("path/to/CogVideoX-5b", torch_dtype=torch.bfloat16).to("cuda")
    transform_pipeline(pipe, seconds=63)                       # or ttt="run/ttt" for trained TTT weights
    prompt, negative = storyboard_embeddings(pipe, board)      # [1, S*226, 4096] each, one chunk per segment
    video = pipe(prompt_embeds=prompt, negative_prompt_embeds=negative, num_frames=video_frames(63),
                 use_dynamic_cfg=True, guidance_scale=6, num_inference_steps=50).frames[0]

What changes for multi-scene video: the prompt is the storyboard's per-segment embeddings
concatenated along the token dim (``prompt_embeds``), so every 3-second segment attends to its own
paragraph; ``num_frames = 16 * seconds + 1``. Differences from ``tttgraph generate``: diffusers'
``use_dynamic_cfg`` evaluates its cosine at ``(N - t) / N`` with the *timestep* t (not the step
index of the reference's schedule), its scheduler noise comes from one generator, and the VAE
decodes the whole video at once (enable ``pipe.vae.enable_tiling()`` for memory) instead of in
temporal tiles.
"""

from __future__ import annotations

import torch

from tttgraph.generate.storyboard import Storyboard


def video_frames(seconds: int) -> int:
    """Pipeline ``num_frames`` for ``seconds`` of 16 fps video: 16 * seconds + 1 (4 * seconds + 1 latents)."""
    return 16 * seconds + 1


def transform_pipeline(pipe, seconds: int, *, height: int | None = None, width: int | None = None,
                       ttt: str | None = None, guidance: bool = True, progress: bool = True):
    """Transform ``pipe.transformer`` in place for videos of ``seconds`` (or any other length).

    The transform reads the model at the pipeline's shapes for a short example (two segments, or one
    for 3 s; batch 2 with classifier-free guidance, the pipeline's RoPE); the transformed transformer
    then runs at any frame count, batch and resolution. ``ttt``: a ``tttgraph.save`` directory to
    restore trained TTT weights from; else fresh layers with the CogVideoX preset (12-frame segments +
    1 overlap, a text chunk per segment). Returns pipe.
    """
    from tttgraph import presets
    from tttgraph.checkpoint import restore
    from tttgraph.rewrite import transform

    model = pipe.transformer
    cfg_model = model.config
    height = height or cfg_model.sample_height * pipe.vae_scale_factor_spatial
    width = width or cfg_model.sample_width * pipe.vae_scale_factor_spatial
    example_seconds = min(seconds, 6)
    frames = presets.latent_frames(example_seconds)
    text_tokens = int(cfg_model.max_text_seq_length)
    batch = 2 if guidance else 1
    param = next(model.parameters())
    latents = torch.zeros(batch, frames, cfg_model.in_channels, height // pipe.vae_scale_factor_spatial,
                          width // pipe.vae_scale_factor_spatial, dtype=param.dtype, device=param.device)
    text = torch.zeros(batch, example_seconds // 3 * text_tokens, cfg_model.text_embed_dim, dtype=param.dtype,
                       device=param.device)
    rope = pipe._prepare_rotary_positional_embeddings(height, width, frames, param.device) \
        if cfg_model.use_rotary_positional_embeddings else None
    example = {"hidden_states": latents, "encoder_hidden_states": text,
               "timestep": torch.full((batch,), 999, dtype=torch.long, device=param.device), "image_rotary_emb": rope}
    if ttt is not None:
        tm = restore(model, ttt, example, progress=progress)
    else:
        tm = transform(model, presets.cogvideox_5b(seconds, text_tokens_per_segment=text_tokens), example,
                       progress=progress)
    pipe.transformer = tm.eval()  # the same object, edited
    return pipe


def storyboard_embeddings(pipe, board: Storyboard, device: torch.device | str | None = None):
    """(prompt_embeds, negative_prompt_embeds), each ``[1, S*L, C]``: the per-segment T5 embeddings of
    ``board`` (scene markers included) concatenated in segment order, L the pipeline's text length."""
    length = int(pipe.transformer.config.max_text_seq_length)
    prompt, negative = pipe.encode_prompt(
        prompt=board.paragraphs(), negative_prompt=board.negative_paragraphs(), do_classifier_free_guidance=True,
        num_videos_per_prompt=1, max_sequence_length=length, device=device,
    )  # fmt: skip
    return prompt.flatten(0, 1)[None], negative.flatten(0, 1)[None]
