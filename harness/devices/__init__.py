"""Devices that run exported ExecuTorch programs: the host runtime and Android phones over adb.

A suite's `devices` entry is a torch device ("cpu", "cuda:0", ...) or a program device:
"executorch-host" (ExecuTorch's Python runtime on this machine), "android:<serial>" or
"android" (the only attached phone). On a program device the cell samples in eager torch on
the CPU (quality, MACs) and its latency is that of the exported sampler run on the device.
Every program device implements `ProgramDevice`; `open_device` picks one through `DEVICES`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.registry import Registry

class DeviceError(RuntimeError):
    """A program device that cannot serve a cell (no phone, a crashed runner, a full disk ...): one line."""


@dataclass
class ProgramRun:
    """What timing a program on a device gave: raw timed repeats and the outputs of one run."""

    values_s: list[float]  # one per timed execution
    outputs: list[torch.Tensor]
    load_s: float | None = None  # program load time, when the device reports it
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ProgramDevice:
    """Runs a .pte with warm-up and repeats and says what it is (provenance)."""

    kind: ClassVar[str] = ""
    clock: ClassVar[str] = ""

    def run_program(self, program: Path, inputs: list[torch.Tensor], warmup: int, repeats: int) -> ProgramRun:
        """Loads `program`, runs it `warmup` untimed and `repeats` timed times on `inputs`."""
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        """What the numbers were measured on (model, SoC, ABI, OS, runner hash ...)."""
        raise NotImplementedError

    def close(self) -> None:
        """Releases what the device holds (scratch files on a phone)."""


DEVICES: Registry[type[ProgramDevice]] = Registry("program device", plugins=("harness.devices.host",
                                                                             "harness.devices.android"),
                                                  base=ProgramDevice)


def device_kind(device: str) -> str:
    """"android:SERIAL" -> "android", "cuda:1" -> "cuda"."""
    return device.split(":", 1)[0]


def device_kinds() -> tuple[str, ...]:
    """Every accepted device kind: torch's and the program devices'."""
    from harness.suite import DEVICE_KINDS

    return (*DEVICE_KINDS, *DEVICES.names())


def is_program_device(device: str) -> bool:
    return device_kind(device) in DEVICES


def torch_device(device: str) -> str:
    """Where eager torch runs for a cell on `device`: program devices sample on the CPU."""
    return "cpu" if is_program_device(device) else device


def open_device(device: str, runner: str | None = None) -> ProgramDevice:
    """The program device named by a suite entry ("executorch-host", "android", "android:SERIAL").

    Args:
        device: the suite's device string.
        runner: the on-device ExecuTorch runner binary (android; default $HARNESS_ET_RUNNER).
    """
    kind, _, serial = device.partition(":")
    return DEVICES.get(kind).open(serial or None, runner)
