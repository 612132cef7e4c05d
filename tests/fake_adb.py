"""A phone without a phone: a local folder as its storage, its shell run locally, props from a dict.

The narrow stand-in for `harness.devices.adb.AdbTransport`: device paths under /data/local/tmp map
to `root/data/local/tmp`, `getprop` answers from `props`, `df` reports `free_kib` when set (a full
disk); every other command runs in the local shell, so the pushed runner really executes.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

DEVICE_ROOT = "/data/local/tmp"
PROPS = {"ro.product.model": "Fake Pixel", "ro.product.manufacturer": "Fake", "ro.soc.model": "FakeSoC 1",
         "ro.product.cpu.abi": "arm64-v8a", "ro.build.version.release": "14", "ro.build.version.sdk": "34"}


class FolderPhone:
    def __init__(self, root: Path, serial: str = "fake-1", free_kib: int | None = None, props: dict | None = None):
        self.root, self.serial, self.free_kib = Path(root), serial, free_kib
        self.props = PROPS if props is None else props
        self.commands: list[str] = []

    def local(self, remote: str) -> Path:
        return self.root / remote.lstrip("/")

    def shell(self, command: str, timeout: float | None = None) -> tuple[int, str]:
        self.commands.append(command)
        if command.startswith("getprop "):
            value = self.props.get(command.split()[1])
            return (0, value + "\n") if value is not None else (0, "\n")
        if command.startswith("df ") and self.free_kib is not None:
            return 0, f"Filesystem 1K-blocks Used Available Use% Mounted on\n/dev/fake 1000000 990000 {self.free_kib} 99% /data\n"
        local = command.replace(DEVICE_ROOT, str(self.local(DEVICE_ROOT)))
        done = subprocess.run(["bash", "-c", local], capture_output=True, text=True, timeout=timeout)
        return done.returncode, done.stdout + done.stderr

    def push(self, local: Path, remote: str) -> None:
        self.local(remote).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, self.local(remote))

    def pull(self, remote: str, local: Path) -> None:
        shutil.copyfile(self.local(remote), local)
