"""Submitting a suite's cells as submitit jobs (local subprocesses or a Slurm job array) and waiting for them.

Cells are grouped by what their jobs need (ranks, GPUs) and `cells_per_job` at a time go into one
job; each group is one `map_array` call, so Slurm sees one job array per group. Before a job
is submitted its cells' folders are marked submitted; afterwards they get the job id and log paths.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.cluster.config import SlurmConfig
from harness.cluster.state import DONE, FAILED_STATE, QUEUED, RUNNING, SUBMITTED, CellJobFiles, cell_status, jobs_dir
from harness.suite import Cell

CLUSTER_EXECUTORS = ("local", "slurm")


@dataclass
class Submission:
    """The jobs of one `harness run --executor ...` and the cells each runs."""

    jobs: list[Any] = field(default_factory=list)  # submitit Jobs
    cells: list[Cell] = field(default_factory=list)
    skipped_active: int = 0  # cells already queued or running in an earlier submission


def needs_gpus(cell: Cell) -> bool:
    return cell.device.split(":")[0] == "cuda"


def job_groups(cells: list[Cell], config: SlurmConfig) -> list[tuple[int, bool, list[Cell]]]:
    """(ranks, GPUs wanted, cells) per job, `cells_per_job` cells of equal needs in each, in cell order."""
    by_needs: dict[tuple[int, bool], list[Cell]] = {}
    for cell in cells:
        by_needs.setdefault((config.ranks_for(cell.num_samples), needs_gpus(cell)), []).append(cell)
    return [(ranks, gpus, group[i:i + config.cells_per_job])
            for (ranks, gpus), group in by_needs.items() for i in range(0, len(group), config.cells_per_job)]


def executor_parameters(kind: str, config: SlurmConfig, ranks: int, gpus: bool, name: str) -> dict[str, Any]:
    """submitit `AutoExecutor.update_parameters` arguments: one task per rank, one GPU per task when cells use CUDA."""
    params: dict[str, Any] = dict(name=name, timeout_min=config.timeout_min, tasks_per_node=ranks, nodes=1,
                                  gpus_per_node=ranks if gpus else 0, cpus_per_task=config.cpus_per_task,
                                  mem_gb=config.mem_gb, slurm_array_parallelism=config.array_parallelism,
                                  slurm_partition=config.partition, slurm_account=config.account,
                                  slurm_qos=config.qos, slurm_constraint=config.constraint,
                                  slurm_signal_delay_s=120)
    if config.setup:
        params[f"{kind}_setup"] = list(config.setup)
    return {k: v for k, v in params.items() if v is not None}


def create_executor(kind: str, folder: Path) -> Any:
    """A submitit executor of `kind` ("local" or "slurm") writing its files under `folder`."""
    if kind not in CLUSTER_EXECUTORS:
        raise ValueError(f"unknown executor {kind!r}; accepted: inline, {', '.join(CLUSTER_EXECUTORS)}")
    try:
        import submitit
    except ImportError:
        raise ImportError(f"--executor {kind} needs submitit: pip install 'lazydit-harness[cluster]'") from None
    return submitit.AutoExecutor(folder=folder / "%j", cluster=kind)


def submit_cells(cells: list[Cell], suite: str, results_dir: str | os.PathLike, kind: str, config: SlurmConfig,
                 shared: dict[str, Any]) -> list[Any]:
    """Submits the cells as jobs; returns the submitit jobs.

    Args:
        cells: the cells to run.
        suite: the suite's name (the job folder is results_dir/<suite>/jobs/).
        results_dir: where records go.
        kind: "local" or "slurm".
        config: the jobs' resources.
        shared: `JobSpec` fields the run's cells share (base_dir, command, suite_sha256).
    """
    from harness.cluster.job import CellJob, JobSpec

    results_dir = str(Path(results_dir).resolve())
    folder = jobs_dir(results_dir, suite)
    executor = create_executor(kind, folder / "submitit")
    jobs = []
    for ranks, gpus, group in _grouped(cells, config):
        executor.update_parameters(**executor_parameters(kind, config, ranks, gpus, f"harness-{suite}"))
        specs = [JobSpec(suite=suite, results_dir=results_dir, cells=tuple(chunk), ranks=ranks,
                         timeout_min=config.timeout_min, **shared)
                 for chunk in group]
        settings = {"executor": kind, "settings": dataclasses.asdict(config)}
        for spec in specs:
            for cell in spec.cells:
                spec.files(cell).mark_submitted({**settings, "cell_id": cell.cell_id(), "job_id": None})
        submitted = executor.map_array(CellJob(), specs)
        for spec, job in zip(specs, submitted):
            for cell in spec.cells:
                _record_job(spec.files(cell), job, kind)
        jobs.extend(submitted)
    return jobs


def _grouped(cells: list[Cell], config: SlurmConfig) -> list[tuple[int, bool, list[list[Cell]]]]:
    """`job_groups` with the jobs of equal needs together (one job array each)."""
    arrays: dict[tuple[int, bool], list[list[Cell]]] = {}
    for ranks, gpus, chunk in job_groups(cells, config):
        arrays.setdefault((ranks, gpus), []).append(chunk)
    return [(ranks, gpus, chunks) for (ranks, gpus), chunks in arrays.items()]


def _record_job(files: CellJobFiles, job: Any, kind: str) -> None:
    from harness.cluster.state import read_json, write_json

    info = read_json(files.folder / SUBMITTED) or {}
    info.update(job_id=str(job.job_id), folder=str(job.paths.folder), stdout=str(job.paths.stdout),
                stderr=str(job.paths.stderr), job_pid=int(job.job_id) if kind == "local" else None)
    write_json(files.folder / SUBMITTED, info)


def wait_for(jobs: list[Any], results_dir: str | os.PathLike, suite: str, poll_s: float) -> None:
    """Waits until every job has ended, merging finished records as they come."""
    from harness.cluster.merge import merge_finished

    while True:
        merge_finished(results_dir, suite)
        if all(job.done() for job in jobs):
            break
        time.sleep(poll_s)
    merge_finished(results_dir, suite)


def active_job(files: CellJobFiles) -> str | None:
    """The job id of a cell that is queued or running now (None: not submitted, finished, or dead)."""
    status = cell_status(files, recorded=False)
    return (status.job_id or "?") if status.state in (QUEUED, RUNNING) else None


def outcome(cells: list[Cell], suite: str, results_dir: str | os.PathLike) -> tuple[int, list[tuple[str, str]], int]:
    """(cells recorded, (cell id, why) of failed cells, cells still queued or running) after a wait."""
    recorded, failed, active = 0, [], 0
    for cell in cells:
        status = cell_status(CellJobFiles.of(results_dir, suite, cell.config_hash()), recorded=True)
        if status.state == DONE:
            recorded += 1
        elif status.state == FAILED_STATE:
            failed.append((cell.cell_id(), f"{status.detail} (job {status.job_id}; logs: {', '.join(map(str, status.logs))})"))
        else:
            active += 1
    return recorded, failed, active


def shared_fields(suite_file: Path | None, command: str | None, base_dir: Path | None) -> dict[str, Any]:
    """The JobSpec fields every job of a run shares (base_dir defaults to the suite file's folder)."""
    from harness.provenance import sha256_file

    base_dir = base_dir if base_dir is not None or suite_file is None else Path(suite_file).parent
    return {"base_dir": str(Path(base_dir).resolve()) if base_dir is not None else None,
            "command": command or shlex.join(sys.argv),
            "suite_sha256": sha256_file(suite_file) if suite_file is not None else None}

