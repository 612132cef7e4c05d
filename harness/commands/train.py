"""`harness train <what>` and `harness calibrate <what>`: one sub-command per registered trainer.

Trainers and calibrators are plug-ins, like methods: a module registers a function that
adds its sub-parser (`TRAINERS.register("l2c")(add_parser)`), and the packages listed as
plug-ins are imported on first use, so a new method's trainer needs no edit here.
"""
from __future__ import annotations

import argparse
from typing import Callable

from harness.commands import example_formatter
from harness.registry import Registry

AddParser = Callable[[argparse._SubParsersAction], None]
PLUGINS = ("harness.commands.train_embedded", "lazydit.cli", "baselines")
TRAINERS: Registry[AddParser] = Registry("trainer", plugins=PLUGINS)
CALIBRATORS: Registry[AddParser] = Registry("calibrator", plugins=PLUGINS)


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_group(sub, "train", TRAINERS, "train embedded models, lazy layers, routers",
              "examples:\n  python -m harness train embedded --name digits-8\n"
              "  python -m harness train lazydit --model embedded/digits-8 --steps-budget 20")


def add_group(sub: argparse._SubParsersAction, command: str, registry: Registry[AddParser], help: str, epilog: str) -> None:
    parser = sub.add_parser(command, help=help, formatter_class=example_formatter, epilog=epilog)
    group = parser.add_subparsers(dest="trainer", required=True, metavar="WHAT")
    for name in registry.names():
        registry.get(name)(group)
