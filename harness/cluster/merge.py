"""Folding the records that jobs wrote, one file per cell, into records.jsonl.

A finished record is appended (one durable write, see `RecordStore.append`) and only then is
its cell folder removed. A merge stopped between the two finds the record again next time; it is
already in records.jsonl byte for byte (records are canonical JSON), so it is not appended twice.
Merges hold a lock, so `harness run` and `harness table` merging at once do not race.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from harness.cluster.state import RECORD, CellJobFiles, jobs_dir
from harness.store import RecordStore, encode_record, record_problem


@contextlib.contextmanager
def merge_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on folder/merge.lock for the block."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "merge.lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def finished_records(folder: Path) -> list[Path]:
    """Every finished cell's record file, oldest first."""
    paths = list((folder / "cells").glob(f"*/{RECORD}"))
    return sorted(paths, key=lambda p: (p.stat().st_mtime_ns, p.parent.name))


def merge_finished(results_dir: str | os.PathLike, suite: str) -> int:
    """Appends every finished job record of `suite` to its records.jsonl; returns how many were new.

    Args:
        results_dir: the folder holding <suite>/records.jsonl and <suite>/jobs/.
        suite: the suite's name.
    """
    folder = jobs_dir(results_dir, suite)
    if not (folder / "cells").is_dir():
        return 0
    store = RecordStore.for_suite(results_dir, suite)
    added = 0
    with merge_lock(folder):
        paths = finished_records(folder)
        if not paths:
            return 0
        present = {encode_record(record) for record in store.read()}
        for path in paths:
            record = _load(path)
            if record is None:
                continue
            line = encode_record(record)
            if line not in present:
                store.append(record)
                present.add(line)
                added += 1
            CellJobFiles(path.parent).remove()
        store.compact()
    return added


def _load(path: Path) -> dict | None:
    """A job's record, or None (with a warning) when the file is not one: it stays for a person to look at."""
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        print(f"warning: {path}: not merged: not a readable JSON record ({err})", file=sys.stderr)
        return None
    problem = record_problem(record)
    if problem:
        print(f"warning: {path}: not merged: not a record ({problem})", file=sys.stderr)
        return None
    return record
