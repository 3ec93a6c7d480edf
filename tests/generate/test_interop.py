"""diffusers interop: CogVideoXPipeline with a tttgraph transformer and per-segment prompt embeddings."""

from __future__ import annotations

import numpy as np
import torch

from tttgraph.generate.interop import storyboard_embeddings, transform_pipeline, video_frames
from tttgraph.generate.storyboard import bundled_storyboard, load_storyboard
from tttgraph.layers import GatedBidirectionalTTT
from tttgraph.models.cogvideox_bundle import TINY_TEXT_TOKENS


def test_cogvideox_pipeline_generates_multi_scene_video_with_the_transformed_transformer():
    from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline

    from tttgraph.models.cogvideox_bundle import tiny_bundle

    b = tiny_bundle()
    pipe = CogVideoXPipeline(tokenizer=b.tokenizer, text_encoder=b.text_encoder, vae=b.vae,
                             transformer=b.transformer, scheduler=CogVideoXDPMScheduler.from_config(b.scheduler_config))
    transformer = b.transformer
    transform_pipeline(pipe, seconds=6, progress=False)
    assert pipe.transformer is transformer  # edited in place
    board = load_storyboard(bundled_storyboard()).first_seconds(6)  # 2 segments

    prompt, negative = storyboard_embeddings(pipe, board)
    assert prompt.shape == negative.shape == (1, 2 * TINY_TEXT_TOKENS, 16)  # 2 segments, one chunk each
    ttt_calls, attention_calls = [], []
    for module in pipe.transformer.modules():
        if isinstance(module, GatedBidirectionalTTT):
            module.register_forward_hook(lambda *_: ttt_calls.append(1))
        if hasattr(module, "gated_ttt"):  # the attention it follows
            module.register_forward_hook(lambda *_: attention_calls.append(1))
    frames = pipe(prompt_embeds=prompt, negative_prompt_embeds=negative, num_frames=video_frames(6),
                  num_inference_steps=2, guidance_scale=6.0, use_dynamic_cfg=True, output_type="np",
                  generator=torch.Generator().manual_seed(0)).frames[0]
    assert frames.shape == (video_frames(6), 32, 48, 3) and np.isfinite(frames).all()
    assert len(ttt_calls) == len(attention_calls) == 2 * 2  # 2 steps x 2 blocks, CFG batched into one call
