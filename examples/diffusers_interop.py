"""A diffusers ``CogVideoXPipeline`` making multi-scene video, with only its transformer changed.

    python -m examples.diffusers_interop [--pretrained DIR] [--seconds 6] [--steps 10] [--out interop.mp4]

The pipeline's T5, VAE, scheduler and sampling loop are diffusers' own; tttgraph transforms the
transformer (segment-local attention + TTT layers) and the storyboard becomes per-segment
``prompt_embeds`` (see ``tttgraph/generate/interop.py`` for the differences from ``tttgraph
generate``). Without ``--pretrained`` the pipeline is assembled from the tiny random-weight
bundle, offline, in seconds on the CPU.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def build_pipeline(pretrained: str | None):
    from diffusers import CogVideoXDPMScheduler, CogVideoXPipeline

    if pretrained:
        dtype = torch.bfloat16
        pipe = CogVideoXPipeline.from_pretrained(pretrained, torch_dtype=dtype, local_files_only=True)
        pipe.scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
        return pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    from tttgraph.models.cogvideox_bundle import tiny_bundle

    b = tiny_bundle()
    return CogVideoXPipeline(tokenizer=b.tokenizer, text_encoder=b.text_encoder, vae=b.vae, transformer=b.transformer,
                             scheduler=CogVideoXDPMScheduler.from_config(b.scheduler_config))


def run(argv: list[str] | None = None) -> np.ndarray:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrained", help="diffusers-format CogVideoX directory (default: tiny random models)")
    p.add_argument("--ttt", help="tttgraph.save directory with trained TTT weights (default: fresh layers)")
    p.add_argument("--storyboard", help="storyboard file (default: the bundled example)")
    p.add_argument("--seconds", type=int, default=6)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="interop.mp4")
    args = p.parse_args(argv)

    from tttgraph.generate.interop import storyboard_embeddings, transform_pipeline, video_frames
    from tttgraph.generate.storyboard import bundled_storyboard, load_storyboard
    from tttgraph.generate.video_io import write_mp4

    board = load_storyboard(args.storyboard or bundled_storyboard()).first_seconds(args.seconds)
    pipe = build_pipeline(args.pretrained)
    transform_pipeline(pipe, args.seconds, ttt=args.ttt)
    prompt, negative = storyboard_embeddings(pipe, board)
    frames = pipe(prompt_embeds=prompt, negative_prompt_embeds=negative, num_frames=video_frames(args.seconds),
                  num_inference_steps=args.steps, guidance_scale=6.0, use_dynamic_cfg=True, output_type="np",
                  generator=torch.Generator().manual_seed(args.seed)).frames[0]  # [T, H, W, 3] floats in [0, 1]
    video = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
    write_mp4(video, args.out)
    print(f"wrote {args.out}: {video.shape[0]} frames {video.shape[2]}x{video.shape[1]} from {board.num_segments} "
          f"segments ({len(board.scenes)} scenes) with diffusers' CogVideoXPipeline + a tttgraph transformer")
    return video


if __name__ == "__main__":
    run()
    sys.exit(0)
