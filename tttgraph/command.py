"""How every command of the command line runs: its parser, its errors, its interrupts.

``tttgraph <command>`` (:mod:`tttgraph.cli`) and each command's own entry (``python -m examples.X``,
:func:`standalone`) parse with :class:`ArgumentParser` and run through :func:`run_parsed`: an error
prints one line, ``PROG: error: MESSAGE``, and exits with 1 (2 for bad usage); ``--debug`` shows the
traceback; SIGINT / SIGTERM print what was saved and the command that continues, and exit 130 / 143.
The commands' modules (``tttgraph.finetune.cli``, ``tttgraph.generate.cli``, :mod:`tttgraph.demo`)
take these from here, not from the dispatcher :mod:`tttgraph.cli`, which imports them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections.abc import Callable

__all__ = [
    "ArgumentParser", "add_debug_flag", "error_message", "int_at_least", "invocation", "one_line", "parse_command",
    "run_parsed", "standalone",
]

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


def parse_command(build: Callable[[], argparse.ArgumentParser], argv: list[str], prog: str):
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
    parsed, args = parse_command(lambda: parser, argv, parser.prog)
    if parsed is None:
        return args
    return run_parsed(args, prog=parser.prog, command=[*invocation(parser.prog), *argv])
