"""``tttgraph finetune``: one stage of the staged CogVideoX fine-tuning recipe.

    tttgraph finetune                                   tiny CogVideoX on the synthetic storyboards (CPU, minutes)
    tttgraph finetune --config examples/configs/finetune/stage_3s.json --pretrained CogVideoX-5b --out runs/3s
    torchrun --nproc_per_node 8 -m tttgraph finetune --config ... --out ...      (FSDP2 over 8 GPUs)
    tttgraph finetune --config ... --out runs/3s --resume                       (continue from the last checkpoint)

Writes ``OUT/metrics.csv`` (step, loss, lr, ...), ``OUT/loss.png``, ``OUT/checkpoints/`` and the
stage result ``OUT/ttt`` (``tttgraph.restore(base, "OUT/ttt")``; the next stage's ``init_from``).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="stage config JSON (default: the tiny synthetic run; see "
                                         "examples/configs/finetune/)")
    parser.add_argument("--out", default="runs/finetune", help="output directory (default runs/finetune)")
    parser.add_argument("--pretrained", help="diffusers-format CogVideoX directory (transformer, vae, text_encoder, "
                                             "tokenizer, scheduler); loaded from local files only")
    parser.add_argument("--max-steps", type=int, help="train this many steps instead of the config's train.steps")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--init-from", help="previous stage's save directory (overrides the config's init_from)")
    parser.add_argument("--precompute-only", action="store_true",
                        help="prepare the stage's precomputed clips under OUT/data and stop")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def load_config(args: argparse.Namespace):
    from tttgraph.finetune.stages import StageConfig, StageConfigError, TrainSection

    cfg = StageConfig.load(args.config) if args.config else StageConfig()
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise StageConfigError(f"--max-steps must be >= 1, got {args.max_steps}")
        train = TrainSection(**{**cfg.train.__dict__, "steps": args.max_steps})
        cfg = cfg.replace(train=train)
    if args.init_from:
        cfg = cfg.replace(init_from=args.init_from)
    return cfg


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from tttgraph.errors import TTTGraphError
    from tttgraph.finetune import trainer

    try:
        cfg = load_config(args)
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
    except TTTGraphError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m tttgraph.finetune.cli", description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(main(p.parse_args()))
