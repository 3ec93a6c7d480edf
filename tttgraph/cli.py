"""Command line: ``tttgraph <command>`` (also ``python -m tttgraph``).

Each command wraps the Python call a user would make:

    tttgraph demo                              tiny CogVideoX + TTT: forward, backward, report
    tttgraph inspect [--family wan2.1]         dry run of transform on a tiny model of a family
    tttgraph transform [--family ...] --out D  transform, run once, save (tttgraph.save) to D
    tttgraph export [--family ...] --out F     transform, export to F (.pt2, .onnx, .engine; tttgraph.export)
    tttgraph evaluate DIR                      score videos of world stories (cross-segment consistency)
    tttgraph train-world --out D               train the world base model on 3 s clips (GPU, minutes)

Errors print one line, ``tttgraph <command>: error: <message>``, and exit with 2 (bad usage) or 1
(the command failed: bad input, a missing file or optional package); ``--debug`` shows the traceback.
Ctrl-C or SIGTERM print one line (what was saved, the command that continues) and exit 130 / 143.
"""

from __future__ import annotations

import argparse
import sys

from tttgraph.command import ArgumentParser, add_debug_flag, int_at_least, invocation, parse_command, run_parsed


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    from tttgraph.models import FAMILIES

    parser.add_argument("--family", default="cogvideox", choices=sorted(FAMILIES),
                        help="model family; a tiny random-weight model of it is built (default cogvideox)")
    parser.add_argument("--frames", type=int_at_least(1), default=5,
                        help="latent frames of the example input (default 5)")
    parser.add_argument("--text-tokens", type=int_at_least(0), default=8,
                        help="text tokens of the example input (default 8)")
    parser.add_argument("--config", help="a TTTConfig JSON file (default: segments of 2 latent frames + 1 overlap)")
    parser.add_argument("--segment-frames", type=int_at_least(1), default=2,
                        help="latent frames per segment (default 2)")
    parser.add_argument("--overlap", type=int_at_least(0), default=1, help="overlap frames (default 1)")
    parser.add_argument("--mini-batch-size", type=int_at_least(1), default=16, help="TTT mini-batch (default 16)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the capture progress")


def _setup(args):
    from tttgraph.config import TTTConfig
    from tttgraph.models import build_tiny, example_inputs
    from tttgraph.models.tiny import FAMILIES

    if args.config:
        cfg = TTTConfig.load(args.config)
    else:
        fam = FAMILIES[args.family]
        seg = max(args.segment_frames, fam.frame_multiple)
        seg -= seg % fam.frame_multiple
        overlap = args.overlap if fam.frame_multiple == 1 else 0
        cfg = TTTConfig(segment_latent_frames=seg, segment_overlap_frames=overlap,
                        mini_batch_size=args.mini_batch_size)
    model = build_tiny(args.family)
    frames = args.frames - args.frames % FAMILIES[args.family].frame_multiple
    if args.family == "latte":
        frames = FAMILIES["latte"].default_frames
    return model, cfg, example_inputs(model, frames, text_tokens=args.text_tokens)


def _inspect(args) -> int:
    from tttgraph.rewrite import inspect

    model, cfg, inputs = _setup(args)
    print(inspect(model, cfg, inputs, progress=args.progress))
    return 0


def _transform(args) -> int:
    import time

    import torch

    from tttgraph.checkpoint import save
    from tttgraph.rewrite import plan_of, transform

    model, cfg, inputs = _setup(args)
    start = time.perf_counter()
    tm = transform(model, cfg, inputs, progress=args.progress)
    took = time.perf_counter() - start
    print(plan_of(tm))
    with torch.no_grad():
        out = tm(**inputs, return_dict=False)[0]
    print(f"transformed in {took:.1f} s; forward ok: output {tuple(out.shape)}")
    where = save(tm, args.out)
    print(f"saved the new weights and the recipe to {where}")
    print(f"restore with: tttgraph.restore(base_model, {str(where)!r})")
    return 0


def _export_format(args) -> str:
    """The format ``--format`` / ``--out`` ask for, checked with the flags' names before the model is
    built (export() would refuse the same after seconds to minutes of capture, naming its keywords)."""
    from pathlib import Path

    from tttgraph.exporter import SUFFIXES, ExportError, opset_range

    fmt = args.format or SUFFIXES.get(Path(args.out).suffix.lower())
    if fmt is None:
        suffix = Path(args.out).suffix or "no suffix"
        raise ExportError(f"--out {args.out}: {suffix} names no export format; end the file name in "
                          f"{', '.join(SUFFIXES)}, or pass --format {{pt2,onnx,tensorrt}}")
    if fmt == "tensorrt":
        from tttgraph.tensorrt_export import require_tensorrt

        if args.ttt_op != "decompose":
            raise ExportError(f"--ttt-op {args.ttt_op} cannot go to TensorRT (it has no plugin for tttgraph.TTTMLP); "
                              "leave --ttt-op out (the scan exports as a standard ONNX Loop)")
        try:
            require_tensorrt()
        except ExportError as err:
            flag = "--format tensorrt" if args.format else f"--out {args.out}"
            raise ExportError(f"{flag}: {err}") from err
    if fmt == "pt2" and args.opset is not None:
        raise ExportError(f"--opset {args.opset} applies to ONNX and TensorRT only; drop it for --format pt2")
    if fmt == "onnx" and args.opset is not None:
        low, high = opset_range()
        if not low <= args.opset <= high:
            raise ExportError(f"--opset {args.opset} is not supported: pass --opset between {low} and {high} "
                              "(23 exports attention as the standard Attention operator)")
    return fmt


def _export(args) -> int:
    from tttgraph.exporter import export
    from tttgraph.rewrite import transform

    args.format = _export_format(args)
    model, cfg, inputs = _setup(args)
    tm = transform(model, cfg, inputs, progress=args.progress)
    result = export(tm, args.out, format=args.format, dynamic_frames=args.dynamic_frames, opset=args.opset,
                    ttt_op=args.ttt_op)
    print(f"exported {result.format} to {result.path} in {result.seconds:.1f} s ({result.bytes / 1e6:.2f} MB)")
    print(f"inputs: {', '.join(result.input_names)}; latent frames accepted: {result.frames}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="tttgraph", description=__doc__.splitlines()[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="\n".join(__doc__.splitlines()[2:]))
    add_debug_flag(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    from tttgraph import demo

    p = commands.add_parser("demo", help="tiny CogVideoX + TTT layers: forward, backward, report (offline, seconds)")
    demo.add_arguments(p)
    p.set_defaults(run=demo.main)

    from tttgraph.finetune import cli as finetune_cli

    p = commands.add_parser("finetune", help="fine-tune CogVideoX + TTT, one stage (default: tiny synthetic run)",
                            description=finetune_cli.__doc__.splitlines()[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="\n".join(finetune_cli.__doc__.splitlines()[2:]))
    finetune_cli.add_arguments(p)

    p = commands.add_parser("inspect", help="dry run: which attentions get segments and TTT layers")
    _model_arguments(p)
    p.set_defaults(run=_inspect)

    p = commands.add_parser("transform", help="transform a tiny model of a family, run it, save the result")
    _model_arguments(p)
    p.add_argument("--out", default="tttgraph-out", help="directory for the saved weights + recipe")
    p.set_defaults(run=_transform)

    p = commands.add_parser("export",
                            help="transform a tiny model of a family and export it (.pt2, .onnx or a TensorRT .engine)")
    _model_arguments(p)
    p.add_argument("--out", default="tttgraph-model.onnx",
                   help="file to write (default ./tttgraph-model.onnx, in the current directory); its suffix .pt2, "
                        ".onnx or .engine/.plan (TensorRT, needs a GPU) picks the format")
    p.add_argument("--format", choices=["pt2", "onnx", "tensorrt"], help="format (default: from the --out suffix)")
    p.add_argument("--opset", type=int, help="ONNX opset (default 23; TensorRT: 23 from TensorRT 10.14, else 22)")
    p.add_argument("--ttt-op", default="decompose", choices=["decompose", "custom"],
                   help="ONNX form of the TTT scan: standard ops in a Loop (default) or one tttgraph.TTTMLP node")
    p.add_argument("--static-frames", dest="dynamic_frames", action="store_false",
                   help="fix the frame count to --frames (default: dynamic, whole segments)")
    p.set_defaults(run=_export)

    from tttgraph.data import evaluate

    p = commands.add_parser("evaluate", help="score videos of world stories: detection, cross-segment consistency",
                            description=evaluate.__doc__.splitlines()[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="\n".join(evaluate.__doc__.splitlines()[2:]))
    evaluate.add_arguments(p)

    from tttgraph.generate import cli as generate_cli

    p = commands.add_parser("generate", help="multi-scene video from a storyboard (default: tiny models, CPU, offline)",
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="\n".join(generate_cli.__doc__.splitlines()[2:]))
    generate_cli.add_arguments(p)

    from tttgraph.models import train_world

    p = commands.add_parser("train-world", help="train the world base model on 3 s clips (GPU: ~10 min)",
                            description=train_world.__doc__.splitlines()[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="\n".join(train_world.__doc__.splitlines()[2:]))
    train_world.add_arguments(p)
    for sub in commands.choices.values():
        add_debug_flag(sub, suppress=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``tttgraph [--debug] COMMAND [flags]``; returns the exit status (0 ok, 1 error, 2 usage, 130/143 signal)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, args = parse_command(build_parser, argv, "tttgraph")
    if parser is None:
        return args
    if args.command is None:
        parser.print_help()
        return 2
    return run_parsed(args, prog=f"tttgraph {args.command}", command=[*invocation("tttgraph"), *argv])


if __name__ == "__main__":
    sys.exit(main())
