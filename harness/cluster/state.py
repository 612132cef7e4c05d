"""The job folder of a suite, results/<suite>/jobs/: everything `harness status` needs, in files.

    jobs/submitit/                 submitit's own files: pickled calls, logs <job id>_<task>_log.{out,err}
    jobs/cells/<config hash>/      one folder per submitted cell, removed once its record is merged
        submitted.json             job id, executor, host, log paths, the submission's settings
        started.json               host, pid and job id of the process running the cell
        record.json                the finished record (written atomically; merged into records.jsonl)
        failed.json                the error of a cell that raised
    jobs/heartbeats/<host>-<pid>   touched every HEARTBEAT_S by a running job (liveness across nodes)
    jobs/merge.lock                held while finished records are merged

A cell's state comes from its folder alone: a record -> done; an error -> failed; started and the
process alive -> running, dead -> failed (killed); submitted and the job alive -> queued.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cache import atomic_write_bytes
from harness.store import suite_dir

HEARTBEAT_S = 30.0  # seconds between a running job's touches of its heartbeat file
STALE_AFTER = 4  # heartbeats missed before a job on another host counts as dead
SUBMITTED, STARTED, RECORD, FAILED = "submitted.json", "started.json", "record.json", "failed.json"
DONE, QUEUED, RUNNING, FAILED_STATE, PENDING = "done", "queued", "running", "failed", "pending"
SLURM_ENDED = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
               "PREEMPTED", "TIMEOUT")


def jobs_dir(results_dir: str | os.PathLike, suite: str) -> Path:
    """results/<suite>/jobs/"""
    return suite_dir(results_dir, suite) / "jobs"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, sort_keys=True, indent=1) + "\n").encode())


def read_json(path: Path) -> dict[str, Any] | None:
    """The file's JSON object, or None when it is missing or not one (a half-written file never is: writes are atomic)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def process_alive(host: str | None, pid: int | None) -> bool | None:
    """Whether process `pid` on `host` runs: known on this host only (None elsewhere)."""
    if host != socket.gethostname() or pid is None:
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """An ended process its parent has not reaped yet (Linux /proc; elsewhere assumed not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


@dataclass(frozen=True)
class CellJobFiles:
    """The files of one submitted cell."""

    folder: Path

    @classmethod
    def of(cls, results_dir: str | os.PathLike, suite: str, config_hash: str) -> "CellJobFiles":
        return cls(jobs_dir(results_dir, suite) / "cells" / config_hash)

    def read(self, name: str) -> dict[str, Any] | None:
        return read_json(self.folder / name)

    # ---- written by the submitter ---------------------------------------------------------
    def mark_submitted(self, info: dict[str, Any]) -> None:
        """A new submission: earlier attempts' markers go (an unmerged record is merged before any submission)."""
        for name in (STARTED, FAILED, RECORD):
            (self.folder / name).unlink(missing_ok=True)
        write_json(self.folder / SUBMITTED, {"submitted": now(), "host": socket.gethostname(), **info})

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # ---- written by the job -----------------------------------------------------------------
    def mark_started(self, job_id: str | None, heartbeat: Path) -> None:
        (self.folder / FAILED).unlink(missing_ok=True)
        write_json(self.folder / STARTED, {"started": now(), "host": socket.gethostname(), "pid": os.getpid(),
                                           "job_id": job_id, "heartbeat": str(heartbeat)})

    def write_record(self, record: dict[str, Any]) -> None:
        write_json(self.folder / RECORD, record)

    def mark_failed(self, error: str, traceback: str) -> None:
        write_json(self.folder / FAILED, {"finished": now(), "error": error, "traceback": traceback})


@dataclass(frozen=True)
class CellStatus:
    """What `harness status` says about one cell."""

    state: str  # done, queued, running, failed, pending
    job_id: str | None = None
    detail: str = ""  # why it failed, or where it runs
    logs: tuple[Path, ...] = ()  # the job's stdout and stderr


def cell_status(files: CellJobFiles, recorded: bool) -> CellStatus:
    """The state of one cell from its job folder (and whether records.jsonl holds it)."""
    submitted = files.read(SUBMITTED)
    if submitted is None:
        return CellStatus(DONE if recorded else PENDING)
    job_id, log = submitted.get("job_id"), tuple(Path(submitted[k]) for k in ("stdout", "stderr") if submitted.get(k))
    if files.read(RECORD) is not None:
        return CellStatus(DONE, job_id, "finished, not merged yet", log)
    failed = files.read(FAILED)
    if failed is not None:
        return CellStatus(FAILED_STATE, job_id, failed.get("error", ""), log)
    started = files.read(STARTED)
    if started is not None:
        alive = process_alive(started.get("host"), started.get("pid"))
        if alive is None:
            alive = _heartbeat_fresh(Path(started.get("heartbeat", "")))
        if alive:
            return CellStatus(RUNNING, job_id, f"on {started.get('host')} since {started.get('started')}", log)
        return CellStatus(FAILED_STATE, job_id, "killed mid-cell: its process ended without a record", log)
    if _job_ended(submitted):
        return CellStatus(FAILED_STATE, job_id, "the job ended before the cell started", log)
    return CellStatus(QUEUED, job_id, "", log)


def _heartbeat_fresh(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime < STALE_AFTER * HEARTBEAT_S
    except OSError:
        return False


def _job_ended(submitted: dict[str, Any]) -> bool:
    """A job that never started the cell has ended: its local process is gone, or Slurm's accounting says so."""
    if submitted.get("executor") == "local":
        return process_alive(submitted.get("host"), submitted.get("job_pid")) is False
    if submitted.get("executor") == "slurm" and shutil.which("sacct"):
        import submitit

        state = submitit.SlurmJob(submitted["folder"], submitted["job_id"]).state
        return state.split(" ")[0] in SLURM_ENDED
    return False


def log_tail(paths: tuple[Path, ...], lines: int = 5) -> list[str]:
    """The last `lines` lines of each of a job's logs (stdout, then stderr), named by the file they come from."""
    out = []
    for path in paths:
        if not path.is_file():
            continue
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode(errors="replace")
        out += [f"{path.name}: {line}" for line in text.splitlines() if line.strip()][-lines:]
    return out
