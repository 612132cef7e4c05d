"""`executorch-host`: ExecuTorch's Python runtime (XNNPACK backend) on this machine."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.devices import DEVICES, DeviceError, ProgramDevice, ProgramRun


@DEVICES.register("executorch-host")
class HostRuntimeDevice(ProgramDevice):
    """Times a program's `forward` with perf_counter around `Method.execute` (the load is timed once)."""

    kind: ClassVar[str] = "executorch-host"
    clock: ClassVar[str] = "perf_counter"

    @classmethod
    def open(cls, serial: str | None, runner: str | None) -> "HostRuntimeDevice":
        if serial:
            raise ValueError(f"device 'executorch-host:{serial}' takes no serial; accepted: 'executorch-host'")
        return cls()

    def run_program(self, program: Path, inputs: list[torch.Tensor], warmup: int, repeats: int) -> ProgramRun:
        from harness.export import load_method

        started = time.perf_counter()
        method = load_method(program)
        load_s = time.perf_counter() - started
        outputs: list[torch.Tensor] = []
        for _ in range(warmup):
            outputs = list(method.execute(inputs))
        values = []
        for _ in range(repeats):
            started = time.perf_counter()
            outputs = list(method.execute(inputs))
            values.append(time.perf_counter() - started)
        if not outputs:
            raise DeviceError(f"{program} returned no outputs")
        return ProgramRun(values_s=values, outputs=[o.clone() for o in outputs], load_s=load_s)

    @staticmethod
    def cpus_available() -> int:
        """Cores this process may run on (the runtime's threadpool size is not exposed to Python)."""
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    def provenance(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {"kind": self.kind, "runtime": "executorch.runtime (Python)", "executorch": version("executorch"),
                "machine": platform.machine(), "cpu": platform.processor() or platform.machine(),
                "cpus_available": self.cpus_available(), "backend": "xnnpack"}
