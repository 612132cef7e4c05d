"""Records store: one complete JSON line per append, torn tails tolerated and repaired."""
from __future__ import annotations

import json
import math
import pytest

from harness.store import RecordStore


CELL = {"model": "m", "device": "cpu", "dtype": "float32", "batch_size": 1, "method": "ddim", "method_args": {},
        "steps": 2, "seed": 0}


def record(h: str, value: float = 1.0, status: str = "ok") -> dict:
    return {"config_hash": h, "variant_hash": h, "status": status, "metrics": {"x": value}, "cell": CELL,
            "model_info": {"image_size": 8}, "provenance": {}}


def test_each_append_adds_one_complete_line(tmp_path):
    store = RecordStore(tmp_path / "s" / "records.jsonl")
    store.append(record("a"))
    store.append(record("b"))
    lines = store.path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and [json.loads(l)["config_hash"] for l in lines[:-1]] == ["a", "b"]


def test_reader_skips_a_torn_last_line(tmp_path, capsys):
    store = RecordStore(tmp_path / "records.jsonl")
    store.append(record("a"))
    with open(store.path, "ab") as fh:
        fh.write(b'{"config_hash": "b", "sta')
    assert [r["config_hash"] for r in store.read()] == ["a"]
    assert "torn last line" in capsys.readouterr().err


def test_append_truncates_a_torn_last_line_first(tmp_path):
    store = RecordStore(tmp_path / "records.jsonl")
    store.append(record("a"))
    with open(store.path, "ab") as fh:
        fh.write(b'{"config_hash": "b"')
    store.append(record("c"))
    assert [json.loads(l)["config_hash"] for l in store.path.read_text().splitlines()] == ["a", "c"]


def test_latest_successful_record_per_hash_wins(tmp_path):
    store = RecordStore(tmp_path / "records.jsonl")
    for r in (record("a", 1.0), record("b"), record("a", 2.0), record("a", 3.0, status="failed")):
        store.append(r)
    latest = store.latest(store.read())
    assert latest["a"]["metrics"]["x"] == 2.0 and set(latest) == {"a", "b"}


def test_compact_keeps_one_record_per_hash_atomically(tmp_path):
    store = RecordStore(tmp_path / "records.jsonl")
    for r in (record("a", 1.0), record("b"), record("a", 2.0)):
        store.append(r)
    assert store.compact() == 1
    assert [(r["config_hash"], r["metrics"]["x"]) for r in store.read()] == [("b", 1.0), ("a", 2.0)]
    assert not list(tmp_path.glob("*.tmp"))


def test_non_finite_numbers_are_written_as_null(tmp_path):
    store = RecordStore(tmp_path / "records.jsonl")
    store.append(record("a", math.inf))
    assert store.read()[0]["metrics"]["x"] is None


def test_lines_are_canonical_json(tmp_path):
    store = RecordStore(tmp_path / "records.jsonl")
    store.append({"b": 1, "a": {"d": 2, "c": 3}, "config_hash": "h"})
    assert store.path.read_text() == '{"a":{"c":3,"d":2},"b":1,"config_hash":"h"}\n'


def test_results_folder_that_cannot_be_created_fails_clearly(tmp_path):
    (tmp_path / "taken").write_text("a file where the results folder should go")
    store = RecordStore(tmp_path / "taken" / "smoke" / "records.jsonl")
    with pytest.raises(PermissionError, match="cannot create results folder"):
        store.append(record("a"))
