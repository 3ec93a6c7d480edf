"""Command line: ``tttgraph <command>`` (also ``python -m tttgraph``).

Commands are added as the library grows; each one wraps the same Python call a user could make.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tttgraph", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    from tttgraph import demo

    demo_parser = commands.add_parser(
        "demo", help="tiny CogVideoX + TTT layers: forward, backward, report (offline, CPU, seconds)"
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(run=demo.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
