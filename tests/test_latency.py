"""The latency protocol and peak memory: raw values kept, one timer, >= 10 repeats, labelled scopes and modes."""
from __future__ import annotations

import platform
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from harness import build_model
from harness.cost.latency import (LATENCY_MEDIAN, LATENCY_P10, LATENCY_P90, MIN_REPEATS, SPEEDUP, Latency, Timer,
                                  compare_latency, measure_latency, sampling_latency, speedups)
from harness.cost.memory import PEAK_RSS, track_peak_memory


def test_latency_keeps_raw_values_and_derives_median_p10_p90():
    values = [float(v) for v in range(1, 12)]
    lat = Latency.from_values(values)
    assert lat.values_s == values
    assert (lat.median_s, lat.p10_s, lat.p90_s) == (6.0, 2.0, 10.0)
    record = lat.to_dict()
    assert record[LATENCY_MEDIAN] == 6.0 and record[LATENCY_P10] == 2.0 and record[LATENCY_P90] == 10.0
    assert record["values_s"] == values


def test_cpu_timer_uses_perf_counter_and_measures_the_region():
    timer = Timer("cpu")
    with timer:
        time.sleep(0.02)
    assert timer.clock == "perf_counter"
    assert 0.015 < timer.elapsed_s() < 0.5


def test_measure_latency_warms_up_then_times_at_least_ten_repeats_with_threads_recorded():
    calls = []
    lat = measure_latency(lambda: calls.append(1), warmup=3, repeats=MIN_REPEATS)
    assert len(calls) == 3 + MIN_REPEATS
    assert len(lat.values_s) == MIN_REPEATS and lat.warmup == 3
    assert lat.threads == torch.get_num_threads() and lat.clock == "perf_counter"


def test_fewer_than_ten_repeats_are_rejected():
    with pytest.raises(ValueError, match="repeats=5"):
        measure_latency(lambda: None, repeats=5)


def test_compare_latency_interleaves_candidates_and_speedup_is_a_ratio_of_medians():
    order = []
    lats = compare_latency({"slow": lambda: (order.append("s"), time.sleep(0.004)),
                            "fast": lambda: (order.append("f"), time.sleep(0.001))}, warmup=1, repeats=10)
    assert order[2:6] == ["s", "f", "s", "f"]  # after warm-up, repeats alternate
    ratio = speedups(lats, "slow")
    assert ratio["slow"] == 1.0
    assert ratio["fast"] == pytest.approx(lats["slow"].median_s / lats["fast"].median_s)
    assert ratio["fast"] > 1.5


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on shared cores: one thread is faster and steadier
    yield
    torch.set_num_threads(threads)


def test_sampling_latency_reports_sampler_and_end_to_end_eager_and_compiled_separately(one_thread):
    model = build_model("embedded/digits-8", image_size=8)
    report = sampling_latency(model, dict(class_labels=[0, 1], seeds=[0, 1], steps=2, cfg_scale=1.5),
                              {"ddim": {"method": "ddim"}}, warmup=1, repeats=10,
                              scopes=("sampler", "end_to_end"), modes=("eager", "compile"), compile_backend="eager")
    for mode in ("eager", "compile"):
        for scope in ("sampler", "end_to_end"):
            entry = report[mode][scope]["ddim"]
            assert (entry["mode"], entry["scope"], entry["repeats"]) == (mode, scope, 10)
            assert entry[SPEEDUP] == 1.0 and entry[LATENCY_P10] <= entry[LATENCY_MEDIAN] <= entry[LATENCY_P90]
    assert report["threads"] == 1


def test_each_method_may_override_sampling_arguments_such_as_its_step_budget(one_thread):
    model = build_model("embedded/digits-8", image_size=8)
    report = sampling_latency(model, dict(class_labels=[0], seeds=[0], cfg_scale=1.0),
                              {"ddim-8": {"method": "ddim", "steps": 8}, "ddim-1": {"method": "ddim", "steps": 1}},
                              warmup=1, repeats=10)
    assert report["baseline"] == "ddim-8"
    assert report["eager"]["sampler"]["ddim-1"]["speedup"] > 2


def test_peak_rss_sees_a_short_lived_allocation():
    with track_peak_memory("cpu", interval_s=0.001) as mem:
        # 256 MiB, touched: far above glibc's mmap threshold, also when the allocator is pinned
        # (harness.cost.latency.pin_cpu_allocator), so the pages are new to the process, not reused.
        block = np.ones(256 * 2**20 // 8)
        time.sleep(0.5)  # the sampler thread must get scheduled while the block lives, even on a loaded machine
        del block
    record = mem.to_dict()
    assert record[PEAK_RSS] - mem.rss_before_bytes > 128 * 2**20
    assert record["peak_cuda_allocated_bytes"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_timer_and_peak_allocated_on_gpu():
    with track_peak_memory("cuda") as mem:
        timer = Timer("cuda")
        with timer:
            x = torch.empty(2**26, device="cuda")  # 256 MiB
        del x
    assert timer.clock == "cuda_events" and timer.elapsed_s() >= 0
    assert mem.peak_cuda_allocated_bytes >= 2**28


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_pinning_the_cpu_allocator_is_accepted_by_glibc():
    code = "from harness.cost.latency import pin_cpu_allocator; raise SystemExit(0 if pin_cpu_allocator() else 1)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # own process: the setting is process-wide
