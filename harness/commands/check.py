"""`harness check SUITE --baseline FILE`: the regression gate (or, with --write-baseline, make the baseline)."""
from __future__ import annotations

import argparse

from harness.commands import example_formatter

EPILOG = """examples:
  python -m harness check smoke --baseline results/baselines/smoke.json
  python -m harness run smoke --results-dir /tmp/fresh && \\
      python -m harness check smoke --baseline results/baselines/smoke.json --results-dir /tmp/fresh
  python -m harness check smoke --baseline results/baselines/smoke.json --write-baseline   # from results/smoke
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="regression gate: fresh records vs a committed baseline", epilog=EPILOG,
                       formatter_class=example_formatter)
    p.add_argument("suite", help="a shipped suite's name (e.g. smoke) or a path to a suite .toml")
    p.add_argument("--baseline", required=True, help="baseline JSON (e.g. results/baselines/smoke.json)")
    p.add_argument("--results-dir", default="results", help="folder holding <suite>/records.jsonl (default results)")
    p.add_argument("--write-baseline", action="store_true",
                   help="write/update the baseline from the records instead of checking against it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.check import compare, make_baseline, read_baseline, violations_table, write_baseline
    from harness.suite import load_suite
    from harness.tables import current_records

    suite = load_suite(args.suite)
    records = current_records(suite, args.results_dir)
    if args.write_baseline:
        baseline = make_baseline(suite, records)
        path = write_baseline(args.baseline, baseline)
        print(f"wrote {path}: {len(baseline['variants'])} variant(s) from {len(records)} record(s)")
        return 0
    baseline = read_baseline(args.baseline, suite)
    violations, notes = compare(baseline, records)
    for note in notes:
        print(f"note: {note}")
    if violations:
        print(f"{suite.name}: {len(violations)} violation(s) against {args.baseline}:\n")
        print(violations_table(violations), end="")
        return 1
    print(f"{suite.name}: all {len(baseline['variants'])} baseline variant(s) within tolerance ({args.baseline})")
    return 0
