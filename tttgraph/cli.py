"""Command line: ``tttgraph <command>`` (also ``python -m tttgraph``).

Each command wraps the Python call a user would make:

    tttgraph demo                              tiny CogVideoX + TTT: forward, backward, report
    tttgraph inspect [--family wan2.1]         dry run of transform on a tiny model of a family
    tttgraph transform [--family ...] --out D  transform, run once, save (tttgraph.save) to D
    tttgraph export [--family ...] --out F     transform, export to F (.pt2, .onnx, .engine; tttgraph.export)
    tttgraph evaluate DIR                      score videos of world stories (cross-segment consistency)

Errors print one line, ``tttgraph <command>: error: <message>``, and exit with 2 (bad usage) or 1
(the command failed: bad input, a missing file or optional package); ``--debug`` shows the traceback.
Ctrl-C or SIGTERM print one line (what was saved, the command that continues) and exit 130 / 143.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections.abc import Callable

# The pip extra that provides each optional package (pyproject.toml, [project.optional-dependencies]).
_EXTRAS = {"diffusers": "diffusers", "transformers": "diffusers", "onnx": "onnx", "onnxruntime": "onnx",
           "onnxscript": "onnx", "onnx_ir": "onnx", "imageio_ffmpeg": "video", "triton": "triton",
           "tensorrt": "tensorrt", "torch_tensorrt": "tensorrt"}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``PROG: error: MESSAGE; see PROG --help``, exit status 2.

    argparse's own error prints the whole usage block first; with a dozen flags per command the
    message itself scrolls out of sight. Sub-commands inherit the class (``add_subparsers``).
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an int >= ``minimum`` (a usage error names the flag and the value)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse


def add_debug_flag(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """``--debug``: show the traceback of an error or interrupt instead of the one-line message.

    ``suppress`` (sub-commands): the flag is accepted after the command too, without its default
    overwriting the one given before it (``tttgraph --debug export``).
    """
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS if suppress else False,
                        help="on an error or interrupt, show the Python traceback (for bug reports)")


def one_line(text: str) -> str:
    """``text`` with its line breaks joined (a list after a colon stays readable as ``a: b; c``)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    out = ""
    for line in lines:
        out += line if not out else (" " if out.endswith(":") else "; ") + line
    return out


def error_message(err: BaseException) -> str:
    """The one-line message the command line prints for ``err``."""
    from tttgraph.errors import TTTGraphError

    if isinstance(err, TTTGraphError):
        return one_line(str(err))
    if isinstance(err, ImportError):
        name = (err.name or "").split(".")[0]
        extra = _EXTRAS.get(name)
        how = f"pip install 'tttgraph[{extra}]'" if extra else f"pip install {name}" if name else "install it"
        return one_line(f"{err}: a package this command needs is missing; {how}")
    if isinstance(err, OSError) and err.filename is not None:
        where = f"{err.filename}" + (f" -> {err.filename2}" if err.filename2 is not None else "")
        return one_line(f"{where}: {err.strerror or err}")
    if isinstance(err, OSError):
        return one_line(str(err))
    return one_line(f"{type(err).__name__}: {err} (an internal error: rerun with --debug for the traceback and "
                    "report it)")


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def invocation(prog: str) -> list[str]:
    """The words that start this program again: ``prog`` split, or torchrun's line under torchrun."""
    words = shlex.split(prog)
    world, local = int(os.environ.get("WORLD_SIZE", "1") or 1), int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if world <= 1:
        return words
    launch = ["torchrun", "--nproc_per_node", str(local)]
    if world != local:
        launch += ["--nnodes", str(world // local)]
    module = "tttgraph" if words[0] == "tttgraph" else words[-1]  # python -m examples.X -> examples.X
    return [*launch, "-m", module] + (words[1:] if words[0] == "tttgraph" else [])


def _say(text: str) -> None:
    """Print the final line to stderr. On a terminal it first clears the line, where a progress bar cut
    short by the error may still be drawn (the message would otherwise continue the bar's line)."""
    from tttgraph.progress import is_terminal

    print(("\r\033[K" if is_terminal(sys.stderr) else "") + text, file=sys.stderr, flush=True)


def run_parsed(args: argparse.Namespace, *, prog: str, command: list[str]) -> int:
    """Run ``args.run(args)`` the way the command line does; returns the exit status.

    A :class:`~tttgraph.errors.TTTGraphError`, an ``OSError`` (a user's path), a missing optional
    package or any other exception prints ``PROG: error: MESSAGE`` (one line) and returns 1. SIGINT
    or SIGTERM print ``PROG: interrupted by SIGINT; ...`` with what ``args.interrupted(args, command)``
    (if the command sets it) says was saved and how to continue, and return 130 / 143. ``--debug``
    re-raises instead. ``command`` is the full command line (``["tttgraph", "finetune", ...]``). Under
    torchrun only rank 0 reports an interrupt (every rank gets the signal); every rank reports its error,
    naming its rank (a failure may be one rank's own).
    """
    from tttgraph import interrupts

    debug = getattr(args, "debug", False)
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    try:
        with interrupts.raising():
            return args.run(args)
    except KeyboardInterrupt as err:
        if debug:
            raise
        signum = getattr(err, "signum", signal.SIGINT)
        describe = getattr(args, "interrupted", None)
        detail = "nothing was saved"
        if describe is not None:
            try:
                detail = describe(args, command)
            except Exception as why:  # the message must not turn into a traceback
                detail = f"could not tell what was saved ({type(why).__name__}: {why})"
        if _rank() == 0:
            _say(f"{prog}: interrupted by {interrupts.signal_name(signum)}; {one_line(detail)}")
        return interrupts.exit_status(signum)
    except Exception as err:
        if debug:
            raise
        _say(f"{prog}: error: {f'[rank {_rank()}] ' if world > 1 else ''}{error_message(err)}")
        return 1


def _exit_code(code) -> int:
    """The status of an argparse ``SystemExit`` (``--help``: 0, a usage error: 2)."""
    return code if isinstance(code, int) else (0 if code is None else 1)


def _parse(build: Callable[[], argparse.ArgumentParser], argv: list[str], prog: str):
    """(parser, args) from ``build()`` and ``argv``; or (None, exit status) after ``--help``, a usage error
    (argparse printed it) or a signal while the commands' modules are still being imported."""
    from tttgraph import interrupts

    try:
        with interrupts.raising():
            parser = build()
            return parser, parser.parse_args(argv)
    except SystemExit as exc:
        return None, _exit_code(exc.code)
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        _say(f"{prog}: interrupted by {interrupts.signal_name(signum)}; nothing was started")
        return None, interrupts.exit_status(signum)


def standalone(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) with a command's own parser and run it like
    ``tttgraph <command>`` (:func:`run_parsed`): the entry of ``python -m examples.X``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parsed, args = _parse(lambda: parser, argv, parser.prog)
    if parsed is None:
        return args
    return run_parsed(args, prog=parser.prog, command=[*invocation(parser.prog), *argv])


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
    for sub in commands.choices.values():
        add_debug_flag(sub, suppress=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``tttgraph [--debug] COMMAND [flags]``; returns the exit status (0 ok, 1 error, 2 usage, 130/143 signal)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, args = _parse(build_parser, argv, "tttgraph")
    if parser is None:
        return args
    if args.command is None:
        parser.print_help()
        return 2
    return run_parsed(args, prog=f"tttgraph {args.command}", command=[*invocation("tttgraph"), *argv])


if __name__ == "__main__":
    sys.exit(main())
