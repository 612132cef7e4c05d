"""`harness run --executor local|slurm`: the inline run's cell selection, with cells run as jobs."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from harness.cell_files import check_cells
from harness.cluster.merge import merge_finished
from harness.cluster.state import CellJobFiles
from harness.cluster.submit import active_job, outcome, shared_fields, submit_cells, wait_for
from harness.runner import RunSummary, cells_to_run, select_cells
from harness.store import RecordStore
from harness.suite import Cell, Suite

POLL_S = {"local": 1.0, "slurm": 30.0}


def run_suite_as_jobs(suite: Suite, results_dir: str | os.PathLike, executor: str, only: str | None = None,
                      resume: bool = False, wait: bool = True, overrides: dict[str, Any] | None = None,
                      base_dir: Path | None = None, suite_file: Path | None = None,
                      command: str | None = None) -> RunSummary:
    """Submits the suite's (selected) cells as jobs and, with `wait`, merges their records when they end.

    Selection, `resume` and config hashes behave as in `harness.runner.run_suite`; records that earlier
    jobs finished are merged first, and cells already queued or running are not submitted again.

    Args:
        suite, results_dir, only, resume, base_dir, suite_file, command: as for `run_suite`.
        executor: "local" (submitit's local executor: subprocesses) or "slurm".
        wait: wait for the jobs and merge their records; without it, return once submitted.
        overrides: `SlurmConfig` fields given on the command line (None: the suite's `[slurm]` value).
    """
    config = suite.slurm.with_overrides(overrides or {})
    base_dir = base_dir if base_dir is not None or suite_file is None else Path(suite_file).parent
    merge_finished(results_dir, suite.name)
    store = RecordStore.for_suite(results_dir, suite.name)
    cells = select_cells(suite.cells(), only)
    if not cells:
        raise ValueError(f"--only {only!r} selects none of the suite's {len(suite.cells())} cells")
    todo = cells_to_run(cells, store, resume, base_dir)
    todo = _not_active(todo, suite.name, results_dir)
    summary = RunSummary(records_path=store.path, skipped=len(cells) - len(todo))
    if not todo:
        return summary
    store._prepare()  # fail on an unwritable folder before any job starts
    check_cells(todo, base_dir)
    shared = shared_fields(suite_file, command, base_dir)
    jobs = submit_cells(todo, suite.name, results_dir, executor, config, shared)
    print(f"{suite.name}: submitted {len(todo)} cell(s) as {len(jobs)} {executor} job(s): "
          f"{', '.join(str(job.job_id) for job in jobs)}", file=sys.stderr)
    if not wait:
        summary.queued = len(todo)
        return summary
    wait_for(jobs, results_dir, suite.name, POLL_S[executor])
    summary.ran, summary.failed, summary.queued = outcome(todo, suite.name, results_dir)
    return summary


def _not_active(cells: list[Cell], suite: str, results_dir: str | os.PathLike) -> list[Cell]:
    """The cells that no earlier job is queued for or running."""
    out = []
    for cell in cells:
        job = active_job(CellJobFiles.of(results_dir, suite, cell.config_hash()))
        if job is not None:
            print(f"skipping {cell.cell_id()}: already queued or running as job {job}", file=sys.stderr)
            continue
        out.append(cell)
    return out
