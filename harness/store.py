"""Records: one JSON object per cell per line, appended atomically.

Each append writes one complete line with a single `write` call, then flushes and
fsyncs, so a killed run leaves at most one torn line at the end (the cell in flight).
Readers skip a torn last line; the next append truncates it first. Rewrites
(compaction) go through a temporary file and `os.replace`.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable

from harness.cache import atomic_write_bytes

RECORDS_FILE = "records.jsonl"
OK = "ok"


def suite_dir(results_dir: str | os.PathLike, suite: str) -> Path:
    """The folder of one suite's results: DIR/<suite>/."""
    return Path(results_dir) / suite


def encode_record(record: dict[str, Any]) -> bytes:
    """One line of canonical JSON (sorted keys, NaN/inf as null) ending in a newline."""
    return (json.dumps(_finite(record), sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n").encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class RecordStore:
    """The records.jsonl of one suite: append-only; the latest record of a config hash wins."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def for_suite(cls, results_dir: str | os.PathLike, suite: str) -> "RecordStore":
        return cls(suite_dir(results_dir, suite) / RECORDS_FILE)

    # ---- writing -----------------------------------------------------------------------------
    def append(self, record: dict[str, Any]) -> None:
        """Appends one record durably: a single write of the whole line, flush, fsync."""
        line = encode_record(record)
        self._prepare()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            while written < len(line):  # only on exotic file systems; still one line, in order
                written += os.write(fd, line[written:])
            os.fsync(fd)
        finally:
            os.close(fd)

    def rewrite(self, records: Iterable[dict[str, Any]]) -> None:
        """Replaces the file atomically (temporary file, fsync, os.replace)."""
        self._prepare()
        atomic_write_bytes(self.path, b"".join(encode_record(record) for record in records))
        _fsync_dir(self.path.parent)

    def compact(self) -> int:
        """Keeps the latest record per config hash (in first-seen order); returns how many were dropped."""
        records = self.read()
        latest = self.latest(records)
        if len(latest) < len(records) or self._torn_tail():
            self.rewrite(latest.values())
        return len(records) - len(latest)

    def _prepare(self) -> None:
        """Creates the folder (failing clearly when unwritable) and truncates a torn last line."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PermissionError(f"cannot create results folder {str(self.path.parent)!r}: {err.strerror}") from None
        if not os.access(self.path.parent, os.W_OK):
            raise PermissionError(f"results folder {str(self.path.parent)!r} is not writable")
        if self._torn_tail():
            self.repair()

    def repair(self) -> int:
        """Truncates a torn last line (no trailing newline); returns the bytes removed."""
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep == len(data):
            return 0
        with open(self.path, "r+b") as fh:
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
        return len(data) - keep

    def _torn_tail(self) -> bool:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return False
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"

    # ---- reading -----------------------------------------------------------------------------
    def read(self) -> list[dict[str, Any]]:
        """Every complete record in file order; a torn or unparsable line is skipped with a warning."""
        if not self.path.is_file():
            return []
        records = []
        lines = self.path.read_bytes().split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                where = "torn last line (a killed run's cell in flight)" if number == len(lines) else f"line {number}"
                print(f"warning: {self.path}: skipping {where}: not valid JSON", file=sys.stderr)
        return records

    @staticmethod
    def latest(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """config hash -> the last successful record with that hash."""
        out: dict[str, dict[str, Any]] = {}
        for record in records:
            if record.get("status", OK) == OK:
                out.pop(record["config_hash"], None)  # re-insert: the latest record keeps file order last
                out[record["config_hash"]] = record
        return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
