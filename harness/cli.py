"""`python -m harness <command>`: parses arguments and calls one entry point per command.

Each command lives in `harness/commands/<name>.py` and exposes `add_parser(subparsers)`,
which builds its parser and sets `func`. Machine output goes to stdout, progress to stderr.
Bad input (an unknown name, a bad value, a missing, unreadable, unsafe or unwritable file)
ends with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shlex
import sys
from typing import Iterator

from harness.cache import ALLOW_PICKLE_ENV

COMMAND_MODULES = (
    "harness.commands.run",
    "harness.commands.table",
    "harness.commands.status",
    "harness.commands.leaderboard",
    "harness.commands.check",
    "harness.commands.sample",
    "harness.commands.train",
    "harness.commands.calibrate",
    "harness.commands.macs",
    "harness.commands.info",
    "harness.commands.export",
)
ALLOW_PICKLE_HELP = (f"load third-party .pt files that need full unpickling (it can run code in them: trusted files "
                     f"only); same as {ALLOW_PICKLE_ENV}=1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark harness for accelerating Diffusion Transformers (LazyDiT, DDIM budgets, caching baselines).",
        epilog="example: python -m harness run smoke && python -m harness table smoke",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(sub)
    for leaf in _leaf_parsers(parser):
        if "--allow-pickle" not in leaf._option_string_actions:  # a command may declare it itself
            leaf.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    return parser


def _leaf_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parsers that run a command (those without sub-commands of their own)."""
    groups = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not groups:
        yield parser
    for group in groups:
        for child in dict.fromkeys(group.choices.values()):  # aliases map to the same parser
            yield from _leaf_parsers(child)


@contextlib.contextmanager
def _allow_pickle(enabled: bool) -> Iterator[None]:
    """Sets $HARNESS_ALLOW_PICKLE=1 for the command when --allow-pickle is given, and restores it after."""
    previous = os.environ.get(ALLOW_PICKLE_ENV)
    if enabled:
        os.environ[ALLOW_PICKLE_ENV] = "1"
    try:
        yield
    finally:
        if enabled and previous is None:
            os.environ.pop(ALLOW_PICKLE_ENV, None)
        elif enabled:
            os.environ[ALLOW_PICKLE_ENV] = previous


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["python", "-m", "harness", *argv])
    try:
        with _allow_pickle(getattr(args, "allow_pickle", False)):
            return int(args.func(args) or 0)
    except (ValueError, LookupError, OSError) as err:  # OSError: missing, unreadable or unwritable paths
        print(f"harness {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
