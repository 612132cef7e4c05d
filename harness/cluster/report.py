"""What `harness status` shows and does: each cell's state from files, and resubmitting failed cells."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cluster.config import SlurmConfig
from harness.cluster.state import DONE, FAILED_STATE, SUBMITTED, CellJobFiles, CellStatus, cell_status, log_tail
from harness.cluster.submit import shared_fields, submit_cells
from harness.store import RecordStore
from harness.suite import Cell, from_dict


@dataclass(frozen=True)
class StatusRow:
    cell: Cell
    status: CellStatus

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id()

    @property
    def failed(self) -> bool:
        return self.status.state == FAILED_STATE

    def tail(self, lines: int) -> list[str]:
        return log_tail(self.status.logs, lines) if self.failed else []


def suite_status(cells: list[Cell], suite: str, results_dir: str | os.PathLike) -> list[StatusRow]:
    """Each cell's state: its job folder first, else whether records.jsonl holds a record of it."""
    store = RecordStore.for_suite(results_dir, suite)
    recorded = store.latest(store.read())
    rows = []
    for cell in cells:
        record = recorded.get(cell.config_hash())
        status = cell_status(CellJobFiles.of(results_dir, suite, cell.config_hash()), record is not None)
        if status.state == DONE and status.job_id is None and record is not None:  # merged: the record names its job
            status = dataclasses.replace(status, job_id=record["provenance"].get("job", {}).get("job_id"))
        rows.append(StatusRow(cell, status))
    return rows


def retry_failed(cells: list[Cell], suite: str, results_dir: str | os.PathLike, suite_file: Path | None,
                 command: str | None) -> list[Any]:
    """Submits failed cells again, grouped by the executor and resources of their last submission."""
    groups: dict[str, tuple[str, SlurmConfig, list[Cell]]] = {}
    for cell in cells:
        submitted = CellJobFiles.of(results_dir, suite, cell.config_hash()).read(SUBMITTED) or {}
        kind, settings = submitted.get("executor", "local"), submitted.get("settings", {})
        key = repr((kind, sorted(settings.items())))
        groups.setdefault(key, (kind, from_dict(SlurmConfig, settings, "slurm"), []))[2].append(cell)
    shared = shared_fields(suite_file, command, None)
    jobs = []
    for kind, config, group in groups.values():
        jobs.extend(submit_cells(group, suite, results_dir, kind, config, shared))
    return jobs
