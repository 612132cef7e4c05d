"""benchmarks/gpu_check.py on a machine without CUDA: its refusal, its plan over perf-dit-xl2-256, its summary."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from harness.runner import run_suite
from harness.store import RecordStore
from harness.suite import load_suite
from test_runner import tiny_suite

SPEC = importlib.util.spec_from_file_location("gpu_check", Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_check)


def test_without_cuda_it_exits_with_one_line(capsys):
    assert gpu_check.cuda_refusal(lambda: False) == gpu_check.NO_CUDA and gpu_check.cuda_refusal(lambda: True) is None
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would run")
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err
    assert err.strip() == gpu_check.NO_CUDA and "\n" not in err.strip()


def test_plan_selects_the_essentials_of_perf_dit_xl2_256_in_order():
    groups = gpu_check.plan(load_suite(gpu_check.SUITE).cells())
    cells = [c for _, _, group in groups for c in group]
    assert len({c.config_hash() for c in cells}) == len(cells) <= 20
    first = groups[0][2]
    assert {(c.method, c.steps, c.batch_size, c.mode) for c in first} == {("ddim", 50, 1, "eager"), ("ddim", 50, 1, "compile")}
    lazy = next(group for label, _, group in groups if label.startswith("LazyDiT"))
    assert all(c.method_args["schedule"].endswith("lazy50.pt") and c.batch_size == 8 for c in lazy)
    assert {c.method for c in cells} == {"ddim", "lazydit-static", *gpu_check.CACHING}
    assert any(c.batch_size == 64 and c.mode == "compile" for c in cells)


def test_plan_fails_loudly_when_the_suite_no_longer_has_an_essential():
    cells = [c for c in load_suite(gpu_check.SUITE).cells() if c.method != "fora"]
    with pytest.raises(ValueError, match="fora"):
        gpu_check.plan(cells)


def test_summary_rows_come_from_the_records(tmp_path, one_thread):
    suite = tiny_suite(methods=["ddim", {"name": "fora", "args": {"interval": 2}}], steps=[4], metrics=["macs", "latency"],
                       latency={"warmup": 1, "repeats": 10, "batch": 2})
    run_suite(suite, tmp_path, progress=False)
    records = RecordStore.for_suite(tmp_path, suite.name).read()
    rows = gpu_check.summarize(records)
    assert [r["cell"] for r in rows] == [r["cell_id"] for r in records]
    fora = rows[1]
    latency = records[1]["metrics"]["latency"]
    assert fora["step_ms"] == pytest.approx(1000 * latency["median_s"] / 4)
    assert fora["realised_over_implied"] == pytest.approx(latency["speedup"] / latency["macs_implied_speedup"])
    assert fora["macs_implied_speedup"] > 1 and rows[0]["tflops"] > 0
