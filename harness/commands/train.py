"""`harness train <what>`: one trainer per sub-command (embedded models, lazy layers, ...)."""
from __future__ import annotations

import argparse
import importlib

from harness.commands import example_formatter

TRAINER_MODULES = ("harness.commands.train_embedded", "lazydit.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train", help="train embedded models, lazy layers, routers", formatter_class=example_formatter,
        epilog="examples:\n  python -m harness train embedded --name digits-8\n  python -m harness train lazydit --model embedded/digits-8 --steps-budget 20",
    )
    trainers = parser.add_subparsers(dest="trainer", required=True, metavar="WHAT")
    for module in TRAINER_MODULES:
        importlib.import_module(module).add_parser(trainers)
