"""What runs inside a job: its cells one after another, each record written to the cell's own file.

A job is a `submitit.helpers.Checkpointable`: when Slurm preempts it or its time limit nears,
submitit requeues it with the cells that have no record yet (the cell in flight starts over).
A cell that raises is written down as failed and the job goes on; a killed job leaves its cell
started without a record, which `harness status` reports and a resumed run submits again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import socket
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import submitit

from harness.cluster.state import HEARTBEAT_S, RECORD, CellJobFiles, jobs_dir
from harness.suite import Cell


@dataclass(frozen=True)
class JobSpec:
    """Everything a job needs: its cells and what the run's cells share (see `harness.runner.RunContext`)."""

    suite: str
    results_dir: str  # absolute: jobs may start in another folder
    cells: tuple[Cell, ...]
    base_dir: str | None = None
    command: str | None = None
    suite_sha256: str | None = None
    ranks: int = 1  # > 1: each cell's images are sharded across the job's tasks
    timeout_min: int = 120  # the job's time limit

    def files(self, cell: Cell) -> CellJobFiles:
        return CellJobFiles.of(self.results_dir, self.suite, cell.config_hash())


@contextlib.contextmanager
def heartbeat(path: Path, interval_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Touches `path` every `interval_s` while the block runs, so other hosts can tell the job is alive."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=beat, name="harness-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def job_ranks(ranks: int, timeout_min: int) -> Iterator[tuple[int, int]]:
    """(rank, world size) of this task; with ranks > 1 a process group over the job's tasks for the block.

    The group's timeout is the job's time limit: while rank 0 measures a cell alone (FID of 50,000
    images takes a while) the other ranks wait in the next cell's gather, longer than the default allows.
    """
    if ranks == 1:
        yield 0, 1
        return
    import torch
    import torch.distributed as dist

    env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=dt.timedelta(minutes=timeout_min))
    try:
        if torch.cuda.is_available():  # one GPU per rank: a cell's "cuda" is this rank's device
            torch.cuda.set_device(env.local_rank)
        yield env.rank, env.world_size
        dist.barrier()  # a rank that leaves while its peers still talk aborts them
    finally:
        dist.destroy_process_group()


class CellJob(submitit.helpers.Checkpointable):
    """The callable submitit runs: `CellJob()(spec)` -> the (cell id, error) of cells that failed."""

    def __call__(self, spec: JobSpec) -> list[tuple[str, str]]:
        from harness.cluster.shards import follow_cell, sample_cell_sharded
        from harness.runner import RunContext

        failed: list[tuple[str, str]] = []
        with job_ranks(spec.ranks, spec.timeout_min) as (rank, world):
            ctx = RunContext(base_dir=Path(spec.base_dir) if spec.base_dir else None,
                             results_dir=Path(spec.results_dir), command=spec.command,
                             suite_sha256=spec.suite_sha256, sample_images=sample_cell_sharded if world > 1 else None)
            beat = jobs_dir(spec.results_dir, spec.suite) / "heartbeats" / f"{socket.gethostname()}-{os.getpid()}"
            with heartbeat(beat) if rank == 0 else contextlib.nullcontext():
                for cell in spec.cells:
                    if rank != 0:
                        follow_cell(cell, ctx)
                        continue
                    error = run_one(cell, ctx, spec.files(cell), beat, world)
                    if error:
                        failed.append((cell.cell_id(), error))
        return failed

    def checkpoint(self, spec: JobSpec) -> submitit.helpers.DelayedSubmission:
        """Requeued after preemption or a time limit: the cells without a record (merged ones have no folder)."""
        left = tuple(c for c in spec.cells if spec.files(c).folder.is_dir() and not (spec.files(c).folder / RECORD).exists())
        return submitit.helpers.DelayedSubmission(CellJob(), dataclasses.replace(spec, cells=left))


def run_one(cell: Cell, ctx: Any, files: CellJobFiles, beat: Path, world: int) -> str | None:
    """Runs one cell and writes its record (or its error) to the cell's folder; returns the error."""
    from harness.runner import run_cell

    job_id = _job_id()
    files.mark_started(job_id, beat)
    try:
        record = run_cell(cell, ctx)
    except Exception as err:  # noqa: BLE001  a failed cell is written down, the job goes on
        error = f"{type(err).__name__}: {err}"
        files.mark_failed(error, traceback.format_exc())
        print(f"FAILED {cell.cell_id()}: {error}", flush=True)
        traceback.print_exc()
        return error
    record["provenance"]["job"] = {"job_id": job_id, "host": socket.gethostname(), "ranks": world}
    files.write_record(record)
    print(f"done {cell.cell_id()}", flush=True)
    return None


def _job_id() -> str | None:
    try:
        return submitit.JobEnvironment().job_id
    except RuntimeError:  # called outside a submitit job (tests calling a job directly)
        return None
