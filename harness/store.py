"""Records: one JSON object per cell per line, appended atomically.

Each append writes one complete line with a single `write` call, then flushes and
fsyncs, so a killed run leaves at most one torn line at the end (the cell in flight).
Readers skip a torn last line (and, with a warning, any line that is not a record of the
expected shape); the next append truncates a torn line first. Rewrites
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
# What readers (resume, tables, the gate) rely on: entry -> its type; "cell" needs CELL_KEYS too.
RECORD_SHAPE = {"config_hash": str, "variant_hash": str, "cell": dict, "metrics": dict, "model_info": dict,
                "provenance": dict}
CELL_KEYS = ("model", "device", "dtype", "batch_size", "method", "method_args", "steps", "seed")


def record_problem(record: Any) -> str | None:
    """Why a parsed line is not a record readers can use (None: it is one)."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    if record.get("status", OK) != OK:
        return None  # failed cells are kept as written and never read for numbers
    for key, kind in RECORD_SHAPE.items():
        if not isinstance(record.get(key), kind):
            return f"its {key!r} is missing or not a {kind.__name__}"
    missing = [key for key in CELL_KEYS if key not in record["cell"]]
    return f"its cell lacks {missing[0]!r}" if missing else None


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
        """Every complete record in file order; a torn, unparsable or wrong-shaped line is skipped with a warning."""
        if not self.path.is_file():
            return []
        try:
            data = self.path.read_bytes()
        except OSError as err:
            raise type(err)(f"cannot read records {str(self.path)!r}: {err.strerror or err}") from None
        records = []
        lines = data.split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                where = "torn last line (a killed run's cell in flight)" if number == len(lines) else f"line {number}"
                print(f"warning: {self.path}: skipping {where}: not valid JSON", file=sys.stderr)
                continue
            problem = record_problem(record)
            if problem:
                print(f"warning: {self.path}: skipping line {number}: not a record ({problem})", file=sys.stderr)
                continue
            records.append(record)
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
