"""``tttgraph generate``: a multi-scene video from a storyboard (also ``python -m examples.one_minute_video``).

    tttgraph generate                                   # bundled 63 s story, tiny models, CPU, minutes
    tttgraph generate --storyboard story.toml --seconds 63 --out video.mp4
    tttgraph generate --pretrained CogVideoX-5b --ttt run/ttt --seconds 63 --steps 50
    torchrun --nproc-per-node 2 -m tttgraph generate ...   # attention + TTT heads split over 2 GPUs

An interrupted run resumes from its latent checkpoint (``OUT.resume.safetensors``) when started
again with the same options. ``--dry-run`` prints the plan (segments, frames, tokens, estimated
memory and FLOPs) and stops. Storyboard format: ``tttgraph/generate/storyboard.py``.
"""

from __future__ import annotations

import argparse
import sys

from tttgraph.generate.guidance import DEFAULT_GUIDANCE_SCALE
from tttgraph.generate.sampler import DEFAULT_CHECKPOINT_EVERY, DEFAULT_STEPS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    g = parser.add_argument_group("what to generate")
    g.add_argument("--storyboard", metavar="FILE", help="storyboard .toml/.json/.yaml (default: the bundled "
                   "63 s, 21-segment example, tttgraph/generate/stories/one_minute.toml)")
    g.add_argument("--seconds", type=int, help="video length, a multiple of 3 (default: the whole storyboard); "
                   "uses the first seconds/3 segments")
    g.add_argument("--seed", type=int, default=0, help="noise seed (default 0); same seed, same video")
    g.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"denoising steps (default {DEFAULT_STEPS})")
    g.add_argument("--guidance-scale", type=float, default=DEFAULT_GUIDANCE_SCALE,
                   help="maximum dynamic CFG scale s: guidance rises from 1 to 1+s "
                        f"(default {DEFAULT_GUIDANCE_SCALE:g}; 0 = no CFG)")
    g.add_argument("--height", type=int, help="pixels (default: the model's, 480 for CogVideoX, 32 tiny)")
    g.add_argument("--width", type=int, help="pixels (default: the model's, 720 for CogVideoX, 48 tiny)")
    m = parser.add_argument_group("models (default: tiny CogVideoX-architecture models, random weights, offline)")
    m.add_argument("--pretrained", metavar="DIR", help="diffusers-format CogVideoX directory (transformer/, vae/, "
                   "text_encoder/, tokenizer/, scheduler/), read from local files only")
    m.add_argument("--ttt", metavar="DIR", help="TTT weights saved by tttgraph.save (e.g. the fine-tuning "
                   "example's output); 'none' for fresh TTT layers. Default: $TTTGRAPH_TTT_DIR or "
                   "./runs/finetune/ttt if it exists (tiny default only)")
    m.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda for --pretrained if available, else cpu)")
    m.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="model precision (default: bfloat16 for --pretrained, float32 tiny)")
    m.add_argument("--backend", default="auto", help="ttt_mlp backend: auto, reference, triton, cuda_sm90")
    m.add_argument("--threads", type=int, help="CPU threads for torch (default: 1 for the tiny models, whose "
                   "kilobyte-sized ops only lose from more threads; else torch's choice)")
    o = parser.add_argument_group("output and resume")
    o.add_argument("--out", default="video.mp4", metavar="FILE.mp4", help="video to write (default video.mp4)")
    o.add_argument("--contact-sheet", metavar="FILE.png",
                   help="PNG grid of one frame per segment (default: OUT with .png; '' for none)")
    o.add_argument("--checkpoint", metavar="FILE", help="latent checkpoint (default OUT with .resume.safetensors)")
    o.add_argument("--checkpoint-every", type=int, default=DEFAULT_CHECKPOINT_EVERY,
                   help=f"steps between latent checkpoints (default {DEFAULT_CHECKPOINT_EVERY}; 0 = none)")
    o.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over even if a checkpoint of this job exists")
    o.add_argument("--keep-checkpoint", action="store_true", help="keep the checkpoint after success")
    o.add_argument("--tile-frames", type=int, default=8, help="latent frames per VAE decode tile (default 8)")
    o.add_argument("--dry-run", action="store_true", help="print the plan and estimates, build nothing")
    o.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def options_from_args(args: argparse.Namespace):
    from tttgraph.generate.pipeline import GenerateOptions

    return GenerateOptions(
        storyboard=args.storyboard, seconds=args.seconds, seed=args.seed, steps=args.steps,
        guidance_scale=args.guidance_scale, out=args.out, contact_sheet=args.contact_sheet,
        pretrained=args.pretrained, ttt=args.ttt, height=args.height, width=args.width,
        checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every, resume=args.resume,
        keep_checkpoint=args.keep_checkpoint, tile_frames=args.tile_frames, device=args.device,
        dtype=args.dtype, backend=args.backend, progress=args.progress,
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    from tttgraph.errors import TTTGraphError
    from tttgraph.generate.pipeline import generate, plan

    try:
        threads = args.threads if args.threads is not None else (1 if args.pretrained is None else None)
        if threads is not None:
            if threads < 1:
                raise ValueError(f"--threads must be >= 1, got {threads}")
            import torch

            # Measured on the 2-core machines with other work running: the 63 s tiny default took 25 s
            # on 1 thread and 173 s on 2 (OpenMP barriers stall on the tiny VAE's many small convolutions).
            torch.set_num_threads(threads)
        options = options_from_args(args)
        if args.dry_run:
            print(plan(options).summary())
            return 0
        generate(options)
    except (TTTGraphError, ValueError) as err:
        print(f"tttgraph generate: error: {err}", file=sys.stderr)
        return 2
    return 0


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv`` with the generate flags and run (the entry of ``python -m examples.one_minute_video``)."""
    parser = argparse.ArgumentParser(prog="tttgraph generate", formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    add_arguments(parser)
    return main(parser.parse_args(argv))
