"""`harness leaderboard`: one report per model x resolution x device over every suite's records."""
from __future__ import annotations

import argparse

from harness.commands import example_formatter

EPILOG = """examples:
  python -m harness leaderboard                       # results/leaderboard/README.md + one .md per model
  python -m harness leaderboard --results-dir /tmp/results
  python -m harness table --all                       # the same
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("leaderboard", help="merge every suite's records into one report per model x resolution x device",
                       epilog=EPILOG, formatter_class=example_formatter)
    p.add_argument("--results-dir", default="results", help="folder holding <suite>/records.jsonl (default results)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.leaderboard import write_leaderboard

    for path in write_leaderboard(args.results_dir):
        print(f"wrote {path}")
    return 0
