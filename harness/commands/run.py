"""`harness run SUITE`: run a suite's cells, one record per cell, resumable."""
from __future__ import annotations

import argparse
import os
import sys
import time

from harness.commands import example_formatter
from harness.commands.cluster_options import add_executor_arguments, slurm_overrides

EPILOG = """examples:
  python -m harness run smoke                                   # results/smoke/records.jsonl + tables + plots
  python -m harness run smoke --resume                          # skip cells already recorded
  python -m harness run smoke --only method=ddim,steps=10       # a subset: key=glob terms on cell fields
  python -m harness run my_suite.toml --results-dir /tmp/results
  python -m harness run smoke --executor local --resume        # cells as subprocess jobs (submitit)
  python -m harness run my_suite.toml --executor slurm --partition gpu --account lab --qos normal --no-wait
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a benchmark suite (resumable)", epilog=EPILOG, formatter_class=example_formatter)
    p.add_argument("suite", help="a shipped suite's name (e.g. smoke) or a path to a suite .toml")
    p.add_argument("--results-dir", default="results", help="records go to DIR/<suite>/records.jsonl (default results)")
    p.add_argument("--only", metavar="FILTER",
                   help="run only matching cells: comma-separated key=glob terms (model, method, steps, seed, ...) "
                        "or substrings of the cell id")
    p.add_argument("--resume", action="store_true", help="skip cells whose config hash already has a record")
    p.add_argument("--no-tables", action="store_true", help="do not regenerate tables and plots afterwards")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_executor_arguments(p)
    p.add_argument("--runner", metavar="PATH", help="ExecuTorch executor_runner for android devices "
                                                  "(default $HARNESS_ET_RUNNER)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.runner import run_suite
    from harness.suite import load_suite, suite_path
    from harness.tables import write_reports

    suite = load_suite(args.suite)
    if args.executor == "inline" and (slurm_overrides(args) or args.no_wait):
        given = ", ".join(["--no-wait"] * args.no_wait + [f"--{k.replace('_', '-')}" for k in slurm_overrides(args)])
        raise ValueError(f"{given} only apply to jobs; add --executor local or --executor slurm")
    for line in suite.refusals():  # modes a method cannot run in: not expanded into cells
        print(line, file=sys.stderr)
    if args.runner:  # read by the android device when a cell opens it
        from harness.devices.android import RUNNER_ENV

        os.environ[RUNNER_ENV] = args.runner
    start = time.perf_counter()
    if args.executor == "inline":
        summary = run_suite(suite, args.results_dir, only=args.only, resume=args.resume, progress=not args.quiet,
                            suite_file=suite_path(args.suite), command=args.command_line)
    else:
        from harness.cluster.run import run_suite_as_jobs

        summary = run_suite_as_jobs(suite, args.results_dir, args.executor, only=args.only, resume=args.resume,
                                    wait=not args.no_wait, overrides=slurm_overrides(args),
                                    suite_file=suite_path(args.suite), command=args.command_line)
    wall = time.perf_counter() - start
    queued = f", {summary.queued} queued or running (harness status {args.suite})" if summary.queued else ""
    print(f"{suite.name}: {summary.ran} cell(s) run, {summary.skipped} skipped, {len(summary.failed)} failed{queued} "
          f"in {wall:.1f} s; records: {summary.records_path}")
    if not args.no_tables and summary.records_path.is_file():
        for path in write_reports(suite, args.results_dir):
            print(f"wrote {path}")
    for cell_id, error in summary.failed:
        print(f"FAILED {cell_id}: {error}", file=sys.stderr)
    return 0 if summary.ok else 1
