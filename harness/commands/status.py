"""`harness status SUITE`: each cell done / queued / running / failed / pending, from the job folder's files."""
from __future__ import annotations

import argparse
import json
import sys

from harness.commands import example_formatter

EPILOG = """examples:
  python -m harness status smoke                       # one line per cell; failed ones with their log's last lines
  python -m harness status smoke --only method=ddim --json
  python -m harness status smoke --retry-failed        # submit failed cells again, with their earlier resources

exit status: 1 when a cell failed (and was not resubmitted), else 0
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="state of a suite's cells run as jobs (harness run --executor local/slurm)",
                       epilog=EPILOG, formatter_class=example_formatter)
    p.add_argument("suite", help="a shipped suite's name (e.g. smoke) or a path to a suite .toml")
    p.add_argument("--results-dir", default="results", help="folder holding <suite>/records.jsonl (default results)")
    p.add_argument("--only", metavar="FILTER", help="only matching cells (as for harness run --only)")
    p.add_argument("--lines", type=int, default=5, help="log lines shown per failed cell (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per cell on stdout")
    p.add_argument("--retry-failed", action="store_true",
                   help="submit the failed cells again with the executor and resources of their last submission")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.cluster.report import retry_failed, suite_status
    from harness.runner import select_cells
    from harness.suite import load_suite, suite_path

    suite = load_suite(args.suite)
    cells = select_cells(suite.cells(), args.only)
    rows = suite_status(cells, suite.name, args.results_dir)
    for row in rows:
        if args.json:
            print(json.dumps({"cell_id": row.cell_id, "state": row.status.state, "job_id": row.status.job_id,
                              "detail": row.status.detail, "logs": [str(p) for p in row.status.logs],
                              "log_tail": row.tail(args.lines)}))
            continue
        job = f" job {row.status.job_id}" if row.status.job_id else ""
        detail = f": {row.status.detail}" if row.status.detail else ""
        print(f"{row.status.state:8s} {row.cell_id}{job}{detail}")
        if row.failed:
            for line in row.tail(args.lines):
                print(f"         | {line}")
    counts = {state: sum(r.status.state == state for r in rows) for state in dict.fromkeys(r.status.state for r in rows)}
    print(", ".join(f"{n} {state}" for state, n in counts.items()), file=sys.stderr)
    failed = [row for row in rows if row.failed]
    if args.retry_failed and failed:
        jobs = retry_failed([row.cell for row in failed], suite.name, args.results_dir, suite_path(args.suite),
                            args.command_line)
        print(f"resubmitted {len(failed)} failed cell(s) as job(s) {', '.join(str(j.job_id) for j in jobs)}",
              file=sys.stderr)
        return 0
    return 1 if failed else 0
