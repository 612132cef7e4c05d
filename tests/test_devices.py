"""Device kinds in suites, the host ExecuTorch runtime as a device, and an executorch-host cell end to end."""
from __future__ import annotations

import pytest

from harness.devices import DeviceError, is_program_device, open_device, torch_device
from harness.suite import SpecError, Suite
from test_runner import TINY, build_tiny  # noqa: F401  (registers the tiny model and the test evaluator)


def suite(devices: list[str], **overrides) -> Suite:
    data = {"name": "devices", "models": [{"name": TINY, "random_init": True, "evaluator": "test-stats"}],
            "methods": ["ddim"], "steps": [1], "num_samples": 2, "batch_sizes": [2], "devices": devices,
            "metrics": ["macs", "latency"], "latency": {"batch": 1, "repeats": 10}}
    return Suite.from_dict({**data, **overrides})


def test_suites_accept_torch_devices_the_host_runtime_and_phones():
    assert suite(["cpu", "executorch-host", "android:R58M123", "android"]).devices[1:] == (
        "executorch-host", "android:R58M123", "android")


def test_an_unknown_device_kind_names_the_accepted_ones():
    with pytest.raises(SpecError, match="unknown device 'iphone' .*android, executorch-host"):
        suite(["iphone"])


def test_program_devices_sample_eagerly_on_the_cpu():
    assert [torch_device(d) for d in ("cuda:1", "executorch-host", "android:X")] == ["cuda:1", "cpu", "cpu"]
    assert not is_program_device("cpu") and is_program_device("android")


def test_the_host_runtime_takes_no_serial():
    with pytest.raises(ValueError, match="takes no serial"):
        open_device("executorch-host:1")


def test_host_runtime_device_times_repeats_and_returns_the_outputs():
    from harness.export import run_program
    from programs import inputs, sampler_program

    run = open_device("executorch-host").run_program(sampler_program("ddim"), list(inputs()), warmup=1, repeats=10)
    assert len(run.values_s) == 10 and min(run.values_s) > 0 and run.load_s > 0
    assert run.outputs[0].equal(run_program(sampler_program("ddim"), list(inputs()))[0])


def test_an_executorch_host_cell_records_program_latency_parity_and_provenance(tmp_path, monkeypatch):
    from harness.runner import run_suite
    from harness.store import RecordStore

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    summary = run_suite(suite(["executorch-host"]), tmp_path, progress=False)
    assert summary.ok, summary.failed
    latency = RecordStore.for_suite(tmp_path, "devices").read()[0]["metrics"]["latency"]
    assert latency["repeats"] == 10 and latency["mode"] == "executorch" and latency["device"] == "executorch-host"
    assert latency["parity"]["method"]["max_rel"] <= latency["parity"]["method"]["rtol"]
    assert latency["programs"]["method"]["bytes"] > 0 and latency["per_forward"]["median_s"] > 0
    assert latency["device_provenance"]["kind"] == "executorch-host" and latency["macs_implied_speedup"] == 1.0


def test_a_dynamic_method_on_a_program_device_fails_its_cell_with_the_reason(tmp_path):
    from harness.runner import run_suite

    summary = run_suite(suite(["executorch-host"], methods=["fbcache"]), tmp_path, progress=False)
    assert len(summary.failed) == 1 and "'fbcache' cannot be exported" in summary.failed[0][1]
