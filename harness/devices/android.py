"""`android` / `android:<serial>`: a phone over adb running ExecuTorch's `executor_runner`.

The runner is a user-supplied binary (`--runner PATH` or $HARNESS_ET_RUNNER; the ExecuTorch wheel
ships none: README "Phones" says how to build it with the NDK). Per program: check the free space,
push the program and its inputs (raw little-endian tensor bytes) to a scratch folder, run
`warmup + repeats` executions in one runner call, read its per-iteration log lines (the first
`warmup` are dropped), pull output 0 (raw float32 bytes) and delete the program's files.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import tempfile
import uuid
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from harness.devices import DEVICES, DeviceError, ProgramDevice, ProgramRun
from harness.devices.adb import AdbTransport, connect, free_bytes
from harness.devices.runner_log import RunnerTimings, parse_runner_log

RUNNER_ENV = "HARNESS_ET_RUNNER"
THREADS_ENV = "HARNESS_ET_THREADS"  # the runner's --cpu_threads (default: the runner's own choice)
SCRATCH = "/data/local/tmp/lazydit-harness"
RUN_TIMEOUT_S = 1800.0
HEADROOM_BYTES = 16 << 20  # outputs and logs beside the pushed files
PROPS = {"model": "ro.product.model", "manufacturer": "ro.product.manufacturer", "soc": "ro.soc.model",
         "soc_manufacturer": "ro.soc.manufacturer", "hardware": "ro.hardware", "abi": "ro.product.cpu.abi",
         "android_version": "ro.build.version.release", "sdk": "ro.build.version.sdk"}
READABLE = {"cpu0_governor": "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
            "cpu0_max_freq_khz": "/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq",
            "thermal_zone0_millicelsius": "/sys/class/thermal/thermal_zone0/temp"}


def resolve_runner(runner: str | os.PathLike | None) -> Path:
    """The runner binary: the given path or $HARNESS_ET_RUNNER; one line naming what is missing."""
    value = runner or os.environ.get(RUNNER_ENV)
    if not value:
        raise DeviceError(f"android devices need an ExecuTorch executor_runner built for the phone: pass --runner PATH "
                          f"or set ${RUNNER_ENV} (README, section Phones, shows how to build it with the NDK)")
    path = Path(value).expanduser()
    if not path.is_file():
        raise DeviceError(f"runner {str(path)!r} does not exist (from --runner or ${RUNNER_ENV})")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@DEVICES.register("android")
class AndroidDevice(ProgramDevice):
    """A phone: programs run by `executor_runner` in a scratch folder that is removed on `close`."""

    kind: ClassVar[str] = "android"
    clock: ClassVar[str] = "executor_runner"  # the runner's own per-iteration timer

    def __init__(self, transport: AdbTransport, runner: Path, threads: int | None = None, scratch: str = SCRATCH):
        self.transport, self.runner, self.threads = transport, Path(runner), threads
        self.folder = f"{scratch}/{uuid.uuid4().hex[:12]}"  # one per session: parallel sweeps do not collide
        self.runner_remote = f"{self.folder}/executor_runner"
        self.runner_sha256 = sha256_of(self.runner)
        self._ready = False

    @classmethod
    def open(cls, serial: str | None, runner: str | None) -> "AndroidDevice":
        path = resolve_runner(runner)
        threads = os.environ.get(THREADS_ENV)
        if threads is not None and not threads.isdigit():
            raise DeviceError(f"${THREADS_ENV}={threads!r} is not a thread count; accepted: a positive integer")
        return cls(connect(serial), path, int(threads) if threads else None)

    # ---- files on the phone -----------------------------------------------------------
    def _sh(self, command: str, what: str, timeout: float | None = 60.0) -> str:
        status, output = self.transport.shell(command, timeout=timeout)
        if status != 0:
            raise DeviceError(f"phone {self.transport.serial!r}: {what} failed (exit {status}): {_last_line(output)}")
        return output

    def _prepare(self) -> None:
        if self._ready:
            return
        self._sh(f"mkdir -p {self.folder}", "creating the scratch folder")
        self._check_space(self.runner.stat().st_size)
        self.transport.push(self.runner, self.runner_remote)
        self._sh(f"chmod 755 {self.runner_remote}", "making the runner executable")
        self._ready = True

    def _check_space(self, needed: int) -> None:
        free = free_bytes(self._sh(f"df -k {self.folder}", "reading free space"))
        if free < needed + HEADROOM_BYTES:
            raise DeviceError(f"phone {self.transport.serial!r} has {free >> 20} MiB free in {self.folder}; "
                              f"{(needed + HEADROOM_BYTES) >> 20} MiB needed: free some storage")

    # ---- running ------------------------------------------------------------------------
    def run_program(self, program: Path, inputs: list[torch.Tensor], warmup: int, repeats: int) -> ProgramRun:
        self._prepare()
        name = uuid.uuid4().hex[:8]
        remote = {"program": f"{self.folder}/{name}.pte", "output": f"{self.folder}/{name}.out"}
        with tempfile.TemporaryDirectory() as tmp:
            local_inputs = []
            for i, tensor in enumerate(inputs):
                local_inputs.append(Path(tmp) / f"input{i}.bin")
                local_inputs[-1].write_bytes(tensor.contiguous().numpy().tobytes())
            remote_inputs = [f"{self.folder}/{name}.input{i}.bin" for i in range(len(inputs))]
            self._check_space(Path(program).stat().st_size + sum(p.stat().st_size for p in local_inputs))
            try:
                self.transport.push(Path(program), remote["program"])
                for local, target in zip(local_inputs, remote_inputs):
                    self.transport.push(local, target)
                output = self._run_runner(remote["program"], remote_inputs, remote["output"], warmup + repeats)
                self.transport.pull(remote["output"], Path(tmp) / "output.bin")
                result = np.frombuffer((Path(tmp) / "output.bin").read_bytes(), dtype=np.float32).copy()
            finally:
                self.transport.shell(f"rm -f {self.folder}/{name}.*", timeout=60.0)
        timings = _timings(output, self.transport.serial)
        if timings.executions != warmup + repeats:
            raise DeviceError(f"the runner ran {timings.executions} executions; {warmup + repeats} were asked for")
        return ProgramRun(values_s=[ms / 1000.0 for ms in timings.iterations_ms[warmup:]], outputs=[torch.from_numpy(result)],
                          load_s=None if timings.load_ms is None else timings.load_ms / 1000.0, threads=self.threads,
                          extra={"per_iteration_timings": timings.per_iteration})

    def _run_runner(self, program: str, inputs: list[str], output: str, executions: int) -> str:
        args = [self.runner_remote, "--model_path", program, "--inputs", ",".join(inputs), "--output_file", output,
                "--num_executions", str(executions), *(["--cpu_threads", str(self.threads)] if self.threads else [])]
        status, text = self.transport.shell(f"cd {self.folder} && {shlex.join(args)}", timeout=RUN_TIMEOUT_S)
        if status != 0:
            raise DeviceError(f"the runner crashed on phone {self.transport.serial!r} (exit {status}): {_last_line(text)}")
        return text

    # ---- what it is ---------------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "serial": self.transport.serial, "runner": str(self.runner),
                               "runner_sha256": self.runner_sha256, "threads": self.threads or "runner default"}
        for key, prop in PROPS.items():
            status, value = self.transport.shell(f"getprop {prop}", timeout=30.0)
            out[key] = value.strip() if status == 0 and value.strip() else None
        for key, path in READABLE.items():  # often unreadable without root: recorded as None then
            status, value = self.transport.shell(f"cat {path}", timeout=30.0)
            out[key] = value.strip() if status == 0 and value.strip() else None
        return out

    def close(self) -> None:
        if self._ready:
            self.transport.shell(f"rm -rf {self.folder}", timeout=60.0)
            self._ready = False


def _timings(output: str, serial: str) -> RunnerTimings:
    try:
        return parse_runner_log(output)
    except ValueError as err:
        raise DeviceError(f"phone {serial!r}: {err}") from None


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "<no output>")
