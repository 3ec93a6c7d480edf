"""``tttgraph generate``: a multi-scene video from a storyboard (also ``python -m examples.one_minute_video``).

    tttgraph generate --seconds 9                       # the shipped world model, its bundled story, CPU, ~1 min
    tttgraph generate                                   # the whole 63 s world story (CPU: ~4 min)
    tttgraph generate --tiny                            # tiny random-weight models: a smoke run in seconds
    tttgraph generate --storyboard story.toml --seconds 63 --out video.mp4
    tttgraph generate --pretrained CogVideoX-5b --ttt run/ttt --seconds 63 --steps 50
    tttgraph generate --world runs/world_base/weights --ttt runs/world_63s/ttt --storyboard story.json   # world
    torchrun --nproc-per-node 2 -m tttgraph generate ...   # attention + TTT heads split over 2 GPUs
    torchrun --nproc-per-node 7 -m tttgraph generate --context-parallel ...   # segments split over 7 GPUs
    tttgraph generate --pretrained CogVideoX-5b --plan --gpus 8 --context-parallel   # memory per GPU, then stop

An interrupted run resumes from its latent checkpoint (``OUT.resume.safetensors``) when started
again with the same options; Ctrl-C or SIGTERM print that command and the step saved.
``--dry-run`` prints the plan (segments, frames, tokens, estimated memory and FLOPs) and stops.
Storyboard format: ``tttgraph/generate/storyboard.py``.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from tttgraph.command import int_at_least
from tttgraph.generate.guidance import DEFAULT_GUIDANCE_SCALE
from tttgraph.generate.sampler import DEFAULT_CHECKPOINT_EVERY, DEFAULT_STEPS
from tttgraph.kernels.ttt_mlp.backends import TTTBackend
from tttgraph.models.world_model import DEFAULT_SAMPLER_STEPS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    g = parser.add_argument_group("what to generate")
    g.add_argument("--storyboard", metavar="FILE", help="storyboard .toml/.json/.yaml or world story .json "
                   "(default: a bundled 63 s, 21-segment one: tttgraph/generate/stories/world_one_minute.json for "
                   "the world model, one_minute.toml for CogVideoX and --tiny)")
    g.add_argument("--seconds", type=int, help="video length, a multiple of 3 (default: the whole storyboard); "
                   "uses the first seconds/3 segments")
    g.add_argument("--seed", type=int, default=0, help="noise seed (default 0); same seed, same video")
    g.add_argument("--steps", type=int_at_least(1),
                   help=f"denoising steps (default {DEFAULT_STEPS}; {DEFAULT_SAMPLER_STEPS} for the world model)")
    g.add_argument("--guidance-scale", type=float, default=DEFAULT_GUIDANCE_SCALE,
                   help="maximum dynamic CFG scale s: guidance rises from 1 to 1+s "
                        f"(default {DEFAULT_GUIDANCE_SCALE:g}; 0 = no CFG)")
    g.add_argument("--height", type=int, help="pixels (default: the model's, 480 for CogVideoX, 32 world and tiny)")
    g.add_argument("--width", type=int, help="pixels (default: the model's, 720 for CogVideoX, 48 world and tiny)")
    m = parser.add_argument_group("models (default: the world base model that ships with tttgraph, offline)")
    m.add_argument("--pretrained", metavar="DIR", help="diffusers-format CogVideoX directory (transformer/, vae/, "
                   "text_encoder/, tokenizer/, scheduler/), read from local files only")
    m.add_argument("--world", metavar="DIR", help="the world base model's weights (tttgraph train-world's OUT/weights; "
                   "'default': the shipped ones, also what naming no base model means); storyboards may then be "
                   "world story JSON files")
    m.add_argument("--tiny", action="store_true",
                   help="tiny CogVideoX-architecture models with random weights (a smoke run in seconds)")
    m.add_argument("--ttt", metavar="DIR", help="TTT weights saved by tttgraph.save (e.g. the fine-tuning "
                   "example's output); 'none' for fresh TTT layers. Default: $TTTGRAPH_TTT_DIR or "
                   "./runs/finetune/ttt (what a bare `tttgraph finetune` writes) if it fits the default base model "
                   "or --tiny")
    m.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda for --pretrained if available, else cpu)")
    m.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="model precision (default: bfloat16 for --pretrained, else float32)")
    m.add_argument("--backend", default="auto", choices=[b.value for b in TTTBackend],
                   help="ttt_mlp backend (default auto: the fastest that runs here)")
    m.add_argument("--context-parallel", action="store_true",
                   help="under torchrun: split each sequence by segments over the processes (activations divided "
                        "too) instead of splitting the attention and TTT heads")
    m.add_argument("--threads", type=int_at_least(1),
                   help="CPU threads for torch (default: 1 for the tiny random models, whose "
                   "kilobyte-sized ops only lose from more threads; else torch's choice)")
    o = parser.add_argument_group("output and resume")
    o.add_argument("--out", default="video.mp4", metavar="FILE.mp4", help="video to write (default video.mp4)")
    o.add_argument("--contact-sheet", metavar="FILE.png",
                   help="PNG grid of one frame per segment (default: OUT with .png; '' for none)")
    o.add_argument("--checkpoint", metavar="FILE", help="latent checkpoint (default OUT with .resume.safetensors)")
    o.add_argument("--checkpoint-every", type=int_at_least(0), default=DEFAULT_CHECKPOINT_EVERY,
                   help=f"steps between latent checkpoints (default {DEFAULT_CHECKPOINT_EVERY}; 0 = none)")
    o.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over even if a checkpoint of this job exists")
    o.add_argument("--keep-checkpoint", action="store_true", help="keep the checkpoint after success")
    o.add_argument("--tile-frames", type=int_at_least(2), default=8,
                   help="latent frames per VAE decode tile (default 8)")
    o.add_argument("--dry-run", action="store_true", help="print the plan and estimates, build nothing")
    o.add_argument("--plan", action="store_true", help="print the memory plan per GPU and stop")
    o.add_argument("--gpus", type=int_at_least(1),
                   help="with --plan: plan for this many GPUs (default: torchrun's WORLD_SIZE, else 1)")
    o.add_argument("--gpu-memory-gib", type=float, default=80.0,
                   help="GPU memory in GiB for --plan (default 80); a run on CUDA reads its device's")
    o.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    parser.set_defaults(run=main, interrupted=interrupted)


def options_from_args(args: argparse.Namespace):
    from tttgraph.generate.pipeline import GenerateOptions

    return GenerateOptions(
        storyboard=args.storyboard, seconds=args.seconds, seed=args.seed, steps=args.steps,
        guidance_scale=args.guidance_scale, out=args.out, contact_sheet=args.contact_sheet,
        pretrained=args.pretrained, world=args.world, tiny=args.tiny, ttt=args.ttt, height=args.height,
        width=args.width,
        checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every, resume=args.resume,
        keep_checkpoint=args.keep_checkpoint, tile_frames=args.tile_frames, device=args.device,
        dtype=args.dtype, backend=args.backend, progress=args.progress, context_parallel=args.context_parallel,
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    """Generate (errors and interrupts are reported by :func:`tttgraph.command.run_parsed`)."""
    from tttgraph.generate.pipeline import generate, plan

    # the world model's ops are large enough to share among threads; the tiny models' are not
    threads = args.threads if args.threads is not None else (1 if args.tiny else None)
    if threads is not None:
        import torch

        # Measured on the 2-core machines with other work running: the 63 s tiny default took 25 s
        # on 1 thread and 173 s on 2 (OpenMP barriers stall on the tiny VAE's many small convolutions).
        torch.set_num_threads(threads)
    import os

    options = options_from_args(args)
    if args.dry_run:
        print(plan(options).summary())
        return 0
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.plan:
        print(memory_plan(plan(options), args.gpus or world, args.context_parallel, args.gpu_memory_gib).summary())
        return 0
    job = plan(options)
    if job.device.type == "cuda":  # refuse before any model is loaded
        import torch

        from tttgraph.parallel.memory_plan import GIB

        memory = torch.cuda.get_device_properties(job.device).total_memory / GIB
        memory_plan(job, world, args.context_parallel, memory, require=True)
    generate(options)
    return 0


def memory_plan(job, gpus: int, context: bool, gpu_memory_gib: float, require: bool = False):
    """The per-GPU :class:`~tttgraph.parallel.memory_plan.MemoryPlan` of a denoising step of ``job``.

    Head parallelism keeps every activation on every rank (a context of 1 in the plan).
    ``require``: raise the plan's refusal (with the settings that fit) if it exceeds the GPU.
    """
    from tttgraph.finetune.distributed import USABLE_FRACTION
    from tttgraph.parallel.memory_plan import GIB, Architecture, Settings, Workload, generation_plan, require_fit

    arch = Architecture.cogvideox(job.transformer_config, mlp_expansion=job.ttt_config.mlp_expansion)
    grid = (job.height // 8 // int(job.transformer_config["patch_size"]),
            job.width // 8 // int(job.transformer_config["patch_size"]))
    cfg = job.ttt_config
    work = Workload.cogvideox(job.seconds, job.text_tokens_per_segment, grid, cfg.segment_latent_frames,
                              cfg.segment_overlap_frames)
    settings = Settings(gpus, gpus if context else 1, job.settings.batch, fsdp=False)
    result = generation_plan(arch, work, settings, gpu_memory_gib * GIB * USABLE_FRACTION,
                             dtype_bytes=job.dtype.itemsize)
    if require:
        require_fit(result, arch, work)
    return result


def _saved_step(path: Path) -> int | None:
    """The step of the latent checkpoint at ``path`` (None: absent or unreadable)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return int((f.metadata() or {})["step"])
    except Exception:  # a half-copied or foreign file: the rerun's own check names the problem
        return None


def interrupted(args: argparse.Namespace, command: list[str]) -> str:
    """What an interrupted generation saved and the command that continues it (one line).

    The run resumes by default from its latent checkpoint, so the command is the same one, without
    ``--no-resume`` (which would start over).
    """
    from tttgraph.finetune.cli import drop_flag

    again = shlex.join(drop_flag(command, "--no-resume"))
    if not args.checkpoint_every:
        return f"nothing was saved (--checkpoint-every 0); start again with: {again}"
    path = Path(args.checkpoint) if args.checkpoint else Path(args.out).with_suffix(".resume.safetensors")
    step = _saved_step(path)
    if step is None:
        return (f"nothing was saved yet (the first latent checkpoint comes after step {args.checkpoint_every}); "
                f"start again with: {again}")
    of = f"/{args.steps}" if args.steps else ""
    return f"saved the latents of step {step}{of} in {path}; continue with: {again}"


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv`` with the generate flags and run (the entry of ``python -m examples.one_minute_video``)."""
    from tttgraph.command import ArgumentParser, add_debug_flag, standalone

    parser = ArgumentParser(prog="tttgraph generate", formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="\n".join(__doc__.splitlines()[2:]))
    add_arguments(parser)
    add_debug_flag(parser)
    return standalone(parser, argv)
