"""`harness table SUITE`: regenerate leaderboards (Markdown, CSV, LaTeX) and Pareto plots from records."""
from __future__ import annotations

import argparse

from harness.commands import example_formatter

EPILOG = """examples:
  python -m harness table smoke                       # results/smoke/leaderboard.{md,csv,tex} + pareto-*.png
  python -m harness table smoke --results-dir /tmp/results --print
  python -m harness table --all                       # every suite: results/leaderboard/ (harness leaderboard)
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("table", help="regenerate tables and plots from records", epilog=EPILOG,
                       formatter_class=example_formatter)
    p.add_argument("suite", nargs="?", help="a shipped suite's name (e.g. smoke) or a path to a suite .toml")
    p.add_argument("--all", action="store_true", help="merge every suite under --results-dir into one report per "
                   "model x resolution x device (results/leaderboard/), instead of one suite's tables")
    p.add_argument("--results-dir", default="results", help="folder holding <suite>/records.jsonl (default results)")
    p.add_argument("--print", action="store_true",
                   help="print the Markdown leaderboard on stdout and write nothing (works on read-only results)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.suite import load_suite
    from harness.tables import aggregate, current_records, records_frame, suite_tables, write_reports

    if args.all:
        from harness.commands.leaderboard import run as leaderboard

        return leaderboard(args)
    if not args.suite:
        raise ValueError("name a suite (e.g. smoke) or pass --all")
    suite = load_suite(args.suite)
    if args.print:
        records = current_records(suite, args.results_dir)
        print(suite_tables(suite, aggregate(records_frame(records)), records)["leaderboard.md"], end="")
        return 0
    merge_job_records(suite.name, args.results_dir)
    for path in write_reports(suite, args.results_dir):
        print(f"wrote {path}")
    return 0


def merge_job_records(suite: str, results_dir: str) -> None:
    """Folds records that finished jobs left (harness run --executor local/slurm) into records.jsonl."""
    from harness.cluster.merge import merge_finished

    added = merge_finished(results_dir, suite)
    if added:
        print(f"merged {added} finished job record(s) into {results_dir}/{suite}/records.jsonl")
