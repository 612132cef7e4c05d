"""The android device kind without a phone: a folder as its storage, a Python stand-in for executor_runner.

Everything but the phone is real: adb device selection, the push / run / pull / clean-up sequence,
the runner's log format, ExecuTorch executing the program; errors are one line each.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fake_adb import FolderPhone
from harness.devices import DeviceError, open_device
from harness.devices.adb import connect, free_bytes, select_serial
from harness.devices.android import RUNNER_ENV, AndroidDevice, resolve_runner
from harness.devices.runner_log import parse_runner_log
from harness.export import run_program
from programs import inputs, sampler_program

FAKE_RUNNER = Path(__file__).with_name("fake_executor_runner.py")
CAPTURED_LOG = """\
I 00:00:00.000512 executorch:executor_runner.cpp:98] Model file dit.pte is loaded.
I 00:00:00.000530 executorch:executor_runner.cpp:107] Running method forward
I 00:00:00.012003 executorch:executor_runner.cpp:140] Model loaded in 11.402 ms
I 00:00:00.015100 executorch:executor_runner.cpp:290] Iteration 0 of 3: 4.125 ms
I 00:00:00.018200 executorch:executor_runner.cpp:290] Iteration 1 of 3: 3.5 ms
I 00:00:00.021300 executorch:executor_runner.cpp:290] Iteration 2 of 3: 3.25 ms
I 00:00:00.021400 executorch:executor_runner.cpp:300] Model executed successfully 3 time(s) in 10.875 ms.
I 00:00:00.021500 executorch:executor_runner.cpp:310] 1 outputs:
"""


def phone(tmp_path: Path, **kwargs) -> FolderPhone:
    return FolderPhone(tmp_path / "phone", **kwargs)


def runner_script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "runner.sh"
    path.write_text("#!/bin/bash\n" + body + "\n")
    return path


# ---- the runner's log ----------------------------------------------------------------------

def test_runner_log_gives_load_and_per_iteration_times():
    timings = parse_runner_log(CAPTURED_LOG)
    assert timings.load_ms == 11.402 and timings.executions == 3 and timings.total_ms == 10.875
    assert timings.iterations_ms == [4.125, 3.5, 3.25] and timings.per_iteration


def test_runner_log_without_iteration_lines_spreads_the_total():
    timings = parse_runner_log("Model executed successfully 4 time(s) in 10.0 ms.\n")
    assert timings.iterations_ms == [2.5] * 4 and not timings.per_iteration and timings.load_ms is None


def test_runner_log_with_nothing_parseable_names_the_last_line():
    with pytest.raises(ValueError, match="no 'Model executed successfully.*last line: 'Segmentation fault'"):
        parse_runner_log("loading...\nSegmentation fault\n")


def test_df_output_gives_available_bytes():
    df = "Filesystem     1K-blocks    Used Available Use% Mounted on\n/dev/block/dm-48 115450416 78512 4096 99% /data\n"
    assert free_bytes(df) == 4096 * 1024


# ---- the phone path end to end -------------------------------------------------------------

def test_android_run_matches_the_host_runtime_and_cleans_up(tmp_path):
    fake = phone(tmp_path)
    device = AndroidDevice(fake, FAKE_RUNNER, threads=2)
    noise, labels = inputs()
    run = device.run_program(sampler_program("ddim"), [noise, labels], warmup=1, repeats=3)
    host = run_program(sampler_program("ddim"), [noise, labels])[0]
    assert len(run.values_s) == 3 and all(v > 0 for v in run.values_s) and run.load_s > 0
    assert torch.allclose(run.outputs[0].reshape(host.shape), host, rtol=0, atol=1e-6)
    assert any("--num_executions 4" in c and "--cpu_threads 2" in c for c in fake.commands)
    scratch = fake.local(device.folder)
    assert [p.name for p in scratch.iterdir()] == ["executor_runner"]  # the program and its inputs are gone
    device.close()
    assert not scratch.exists()


def test_android_provenance_records_the_phone_and_the_runner_hash(tmp_path):
    info = AndroidDevice(phone(tmp_path), FAKE_RUNNER).provenance()
    assert info["model"] == "Fake Pixel" and info["soc"] == "FakeSoC 1" and info["abi"] == "arm64-v8a"
    assert info["android_version"] == "14" and len(info["runner_sha256"]) == 64 and info["serial"] == "fake-1"
    assert "cpu0_governor" in info and "thermal_zone0_millicelsius" in info  # None where unreadable


# ---- errors: one line each -----------------------------------------------------------------

@pytest.mark.parametrize("states, serial, message", [
    ({}, None, "no phone is attached"),
    ({"a": "device", "b": "device"}, None, "2 phones are attached .*'android:<serial>'"),
    ({"a": "unauthorized"}, None, "'a' is unauthorised: accept the USB debugging prompt"),
    ({"a": "offline"}, None, "'a' is 'offline', not ready"),
    ({"a": "device"}, "b", "no phone with serial 'b' is attached; attached: a"),
])
def test_phone_selection_errors_name_the_problem(states, serial, message):
    with pytest.raises(DeviceError, match=message) as err:
        select_serial(states, serial)
    assert "\n" not in str(err.value)


def test_the_only_ready_phone_is_chosen_without_a_serial():
    assert select_serial({"ZX1": "device"}, None) == "ZX1"


def test_no_adb_server_is_one_line():
    from adbutils import AdbError

    class NoServer:
        def list(self):
            raise AdbError("[Errno 111] Connection refused")

    with pytest.raises(DeviceError, match="no adb server at .*adb start-server"):
        connect(None, client=NoServer())


def test_missing_runner_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv(RUNNER_ENV, raising=False)
    with pytest.raises(DeviceError, match=f"--runner PATH or set \\${RUNNER_ENV}"):
        open_device("android:any")
    with pytest.raises(DeviceError, match="does not exist"):
        resolve_runner(tmp_path / "executor_runner")


def test_crashing_runner_is_one_line_and_leaves_no_files(tmp_path):
    fake = phone(tmp_path)
    device = AndroidDevice(fake, runner_script(tmp_path, 'echo "E executor_runner] Missing operator" >&2; exit 134'))
    with pytest.raises(DeviceError, match=r"runner crashed .*exit 134.*Missing operator"):
        device.run_program(sampler_program("ddim"), list(inputs()), 1, 10)
    assert [p.name for p in fake.local(device.folder).iterdir()] == ["executor_runner"]


def test_runner_printing_nothing_parseable_is_one_line(tmp_path):
    device = AndroidDevice(phone(tmp_path), runner_script(tmp_path, "echo hello; touch \"${@: -3:1}\"; exit 0"))
    with pytest.raises(DeviceError, match="printed no 'Model executed successfully"):
        device.run_program(sampler_program("ddim"), list(inputs()), 1, 10)


def test_full_phone_disk_is_refused_before_pushing(tmp_path):
    fake = phone(tmp_path, free_kib=512)
    with pytest.raises(DeviceError, match="has 0 MiB free .*free some storage"):
        AndroidDevice(fake, FAKE_RUNNER).run_program(sampler_program("ddim"), list(inputs()), 1, 10)
    assert not any(c.startswith("cd ") for c in fake.commands)  # nothing ran


def test_a_failing_phone_cell_is_reported_and_the_sweep_keeps_the_other_records(tmp_path, monkeypatch):
    from harness.runner import run_suite
    from harness.store import RecordStore
    from harness.suite import Suite

    monkeypatch.setenv(RUNNER_ENV, str(FAKE_RUNNER))
    monkeypatch.setattr("harness.devices.android.connect", lambda serial: select_serial({}, serial))
    suite = Suite.from_dict({"name": "phones", "models": ["embedded/digits-8"], "methods": ["ddim"], "steps": [2],
                             "devices": ["cpu", "android:ZX1"], "num_samples": 2, "batch_sizes": [2],
                             "metrics": ["macs", "latency"], "latency": {"batch": 1, "repeats": 10}})
    summary = run_suite(suite, tmp_path, progress=False)
    assert summary.ran == 1 and len(summary.failed) == 1
    assert "no phone with serial 'ZX1'" in summary.failed[0][1]
    records = RecordStore.for_suite(tmp_path, "phones").read()
    assert [r["cell"]["device"] for r in records] == ["cpu"]
