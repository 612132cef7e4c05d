"""`python -m harness <command>`: parses arguments and calls one entry point per command.

Each command lives in `harness/commands/<name>.py` and exposes `add_parser(subparsers)`,
which builds its parser and sets `func`. Machine output goes to stdout, progress to stderr.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "harness.commands.run",
    "harness.commands.table",
    "harness.commands.check",
    "harness.commands.sample",
    "harness.commands.train",
    "harness.commands.macs",
    "harness.commands.info",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark harness for accelerating Diffusion Transformers (LazyDiT, DDIM budgets, caching baselines).",
        epilog="example: python -m harness run smoke && python -m harness table smoke",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, LookupError, FileNotFoundError, PermissionError) as err:
        print(f"harness {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
