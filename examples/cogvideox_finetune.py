"""Staged CogVideoX fine-tuning with TTT layers: ``python -m examples.cogvideox_finetune [flags]``.

The same as ``tttgraph finetune`` (see ``tttgraph finetune --help``). With no flags it fine-tunes the
world base model that ships with tttgraph (a CogVideoX-architecture transformer) with TTT layers on
9 s world stories on the CPU and writes ``runs/finetune/{metrics.csv, loss.png, ttt/}``; ``--tiny``
trains the tiny random-weight model on synthetic storyboards instead. The reference recipe's stages
are ``examples/configs/finetune/stage_{3,9,18,30,63}s.json`` (``--pretrained DIR`` for the weights):

    torchrun --nproc_per_node 8 -m examples.cogvideox_finetune \\
        --config examples/configs/finetune/stage_3s.json --pretrained CogVideoX-5b --out runs/cogvideox_3s
    torchrun --nproc_per_node 8 -m examples.cogvideox_finetune \\
        --config examples/configs/finetune/stage_9s.json --pretrained CogVideoX-5b --out runs/cogvideox_9s
"""

from __future__ import annotations

import argparse
import sys

from tttgraph.command import ArgumentParser, add_debug_flag, standalone
from tttgraph.finetune import cli


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run like ``tttgraph finetune`` (one-line errors, Ctrl-C prints how to continue)."""
    parser = ArgumentParser(prog="python -m examples.cogvideox_finetune", description=__doc__.splitlines()[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="\n".join(__doc__.splitlines()[2:]))
    cli.add_arguments(parser)
    add_debug_flag(parser)
    return standalone(parser, argv)


if __name__ == "__main__":
    sys.exit(run())
