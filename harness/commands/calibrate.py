"""`harness calibrate <what>`: one sub-command per registered calibrator (e.g. TeaCache's polynomial)."""
from __future__ import annotations

import argparse

from harness.commands.train import CALIBRATORS, add_group


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_group(sub, "calibrate", CALIBRATORS, "calibrate a method on full-compute runs (e.g. TeaCache's polynomial)",
              "example:\n  python -m harness calibrate teacache --model embedded/digits-8 --steps 25 --out teacache.json")
