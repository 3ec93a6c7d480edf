"""``tttgraph finetune``: one stage of the staged CogVideoX fine-tuning recipe.

    tttgraph finetune                                   the shipped world model + TTT on 9 s world stories (CPU, ~7 min)
    tttgraph finetune --tiny                            tiny random CogVideoX on synthetic storyboards (seconds)
    tttgraph finetune --config examples/configs/finetune/stage_3s.json --pretrained CogVideoX-5b --out runs/3s
    torchrun --nproc_per_node 8 -m tttgraph finetune --config ... --out ...      (FSDP2 over 8 GPUs)
    tttgraph finetune --config ... --out runs/3s --resume                       (continue from the last checkpoint)
    tttgraph finetune --config examples/configs/finetune/stage_63s.json --plan --gpus 8   (memory per GPU, then stop)

Writes ``OUT/metrics.csv`` (step, loss, lr, ...), ``OUT/loss.png``, ``OUT/checkpoints/`` and the
stage result ``OUT/ttt`` (``tttgraph.restore(base, "OUT/ttt")``; the next stage's ``init_from``).
Ctrl-C or SIGTERM stop after the current step with a checkpoint of it (press again to stop at once)
and print the command that continues the run (the same one with ``--resume``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from tttgraph.command import int_at_least


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="stage config JSON (default: the shipped world base model on 9 s world "
                                         "stories; see examples/configs/world/ and examples/configs/finetune/)")
    parser.add_argument("--tiny", action="store_true",
                        help="without --config: tiny random-weight CogVideoX on synthetic storyboards (a smoke run)")
    parser.add_argument("--out", default="runs/finetune", help="output directory (default runs/finetune)")
    parser.add_argument("--pretrained", help="diffusers-format CogVideoX directory (transformer, vae, text_encoder, "
                                             "tokenizer, scheduler); loaded from local files only")
    parser.add_argument("--max-steps", type=int_at_least(1),
                        help="train this many steps instead of the config's train.steps")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--init-from", help="previous stage's save directory (overrides the config's init_from)")
    parser.add_argument("--precompute-only", action="store_true",
                        help="prepare the stage's precomputed clips under OUT/data and stop")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    parser.add_argument("--plan", action="store_true",
                        help="print the memory plan per GPU (parameters, gradients, optimizer state, activations) "
                             "and the settings that fit, then stop")
    parser.add_argument("--gpus", type=int_at_least(1),
                        help="with --plan: plan for this many GPUs (default: torchrun's WORLD_SIZE, else 1)")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0,
                        help="with --plan: memory of one GPU in GiB (default 80: H100/A100 80 GB); the plan "
                             "keeps 10%% for the CUDA context and fragmentation")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    parser.set_defaults(run=main, interrupted=interrupted)


def load_config(args: argparse.Namespace):
    from tttgraph.finetune.stages import StageConfig, StageConfigError, TrainSection, default_world_stage

    if args.config and args.tiny:
        raise StageConfigError(f"--tiny and --config {args.config} both name the stage; pass one of them")
    if args.config:
        cfg = StageConfig.load(args.config)
    else:
        cfg = StageConfig() if args.tiny else default_world_stage()
    if args.max_steps is not None:
        if args.max_steps < 1:  # the command line checks this too; load_config is also called directly
            raise StageConfigError(f"--max-steps must be >= 1, got {args.max_steps}")
        train = TrainSection(**{**cfg.train.__dict__, "steps": args.max_steps})
        cfg = cfg.replace(train=train)
    if args.init_from:
        cfg = cfg.replace(init_from=args.init_from)
    return cfg


def main(args: argparse.Namespace) -> int:
    """Run the stage (errors and interrupts are reported by :func:`tttgraph.command.run_parsed`)."""
    import torch

    from tttgraph.finetune import trainer

    cfg = load_config(args)
    if args.plan:
        print(plan_text(cfg, args))
        return 0
    if args.precompute_only:
        out = Path(args.out)
        inputs = trainer.check_inputs(cfg, out, pretrained=args.pretrained, resume=False, check_out=False)
        ctx = trainer.distributed.DistContext()
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        bundle = trainer._load_bundle(cfg, inputs, need_encoders=True, device=device)
        where = trainer.prepare_data(cfg, out, bundle, inputs, ctx, args.progress)
        print(f"precomputed {cfg.clip_seconds} s clips in {where}")
        return 0
    trainer.run_stage(cfg, args.out, pretrained=args.pretrained, resume=args.resume, progress=args.progress,
                      device=args.device)
    return 0


def plan_text(cfg, args: argparse.Namespace) -> str:
    """The stage's memory plan per GPU and, on the same GPU count, the settings that fit."""
    import os

    from tttgraph.finetune import distributed, trainer
    from tttgraph.parallel.memory_plan import GIB, fitting_settings

    gpus = args.gpus or int(os.environ.get("WORLD_SIZE", "1"))
    path = args.pretrained or cfg.model.pretrained
    config = None
    if cfg.model.kind == "pretrained" and path is None:  # no directory given: plan for CogVideoX-5B
        from tttgraph.parallel.memory_plan import COGVIDEOX_5B

        config = {**COGVIDEOX_5B, "max_text_seq_length": 226}
    pretrained = Path(path).expanduser() if path and cfg.model.kind == "pretrained" or args.pretrained else None
    capacity = args.gpu_memory_gib * GIB * distributed.USABLE_FRACTION
    plan, arch, work = trainer.memory_plan(cfg, pretrained, gpus, capacity, config=config)
    lines = [f"stage {cfg.name}: {cfg.clip_seconds} s clips, {work.tokens:,} tokens per sample, "
             f"{cfg.segments} segment(s)", plan.summary()]
    for n in sorted({gpus, 2 * gpus, 4 * gpus}):
        for batch in (1, 2, 4):
            fit = fitting_settings(arch, work, n, capacity, batch=batch)
            if fit:
                p = fit[0]
                lines.append(f"fits on {n} GPUs: parallel.context={p.settings.context}, train.batch_size={batch}, "
                             f"activation checkpointing {'on' if p.settings.activation_checkpointing else 'off'} "
                             f"-> {p.settings.data * batch} sample(s) per micro-step, {p.total / GIB:.1f} GiB per GPU")
    return "\n".join(lines)


def drop_flag(command: list[str], flag: str) -> list[str]:
    """``command`` without ``flag`` (a boolean flag), also where it was given abbreviated as argparse allows."""
    return [w for w in command if not (len(w) > 3 and w.startswith("--") and flag.startswith(w))]


def interrupted(args: argparse.Namespace, command: list[str]) -> str:
    """What an interrupted run left in ``--out`` and the command that continues it (one line)."""
    from tttgraph.finetune.checkpointing import list_checkpoints

    out = Path(args.out)
    checkpoints = [] if args.precompute_only else list_checkpoints(out / "checkpoints")
    if not checkpoints:
        # The precompute keeps every finished shard and resumes by itself: a plain rerun goes on.
        return (f"no training checkpoint was written yet (finished data under {out / 'data'} is kept); start again "
                f"with: {shlex.join(drop_flag(command, '--resume'))}")
    step, where = checkpoints[-1]
    again = command if args.resume else [*command, "--resume"]
    return f"saved checkpoint {where} (step {step}); continue with: {shlex.join(again)}"


if __name__ == "__main__":
    from tttgraph.command import ArgumentParser, add_debug_flag, standalone

    p = ArgumentParser(prog="python -m tttgraph.finetune.cli", description=__doc__.splitlines()[0])
    add_arguments(p)
    add_debug_flag(p)
    sys.exit(standalone(p))
