"""The adb layer: pick a phone, and the four things the harness does with it (shell, push, pull, free space).

`AdbTransport` is the narrow interface the Android device uses; `AdbutilsTransport` is the real
one (adbutils talks to the adb server at $ANDROID_ADB_SERVER_HOST/PORT, default 127.0.0.1:5037).
Tests stand in a local folder for the phone (tests/fake_adb.py).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from harness.devices import DeviceError


class AdbTransport(Protocol):
    """One attached phone."""

    serial: str

    def shell(self, command: str, timeout: float | None = None) -> tuple[int, str]:
        """Runs `command` in the phone's shell; (exit status, stdout and stderr together)."""
        ...

    def push(self, local: Path, remote: str) -> None: ...

    def pull(self, remote: str, local: Path) -> None: ...


class AdbutilsTransport:
    """`AdbTransport` over an adbutils `AdbDevice`."""

    def __init__(self, device: Any):
        self.device = device
        self.serial = device.serial

    def shell(self, command: str, timeout: float | None = None) -> tuple[int, str]:
        from adbutils import AdbError

        try:
            result = self.device.shell2(command, timeout=timeout)
        except (AdbError, OSError) as err:
            raise DeviceError(f"phone {self.serial!r}: adb shell failed ({err}); is it still attached?") from None
        return int(result.returncode), result.output

    def push(self, local: Path, remote: str) -> None:
        self._sync("push", lambda: self.device.sync.push(str(local), remote), remote)

    def pull(self, remote: str, local: Path) -> None:
        self._sync("pull", lambda: self.device.sync.pull(remote, str(local)), remote)

    def _sync(self, what: str, call: Any, remote: str) -> None:
        from adbutils import AdbError

        try:
            call()
        except (AdbError, OSError) as err:
            if "No space left" in str(err):
                raise DeviceError(f"phone {self.serial!r} has no space left for {remote!r}; free some storage") from None
            raise DeviceError(f"phone {self.serial!r}: adb {what} {remote!r} failed ({err})") from None


def server_address() -> str:
    return f"{os.environ.get('ANDROID_ADB_SERVER_HOST', '127.0.0.1')}:{os.environ.get('ANDROID_ADB_SERVER_PORT', '5037')}"


def select_serial(states: dict[str, str], serial: str | None) -> str:
    """The phone to use among `states` (serial -> adb state): one line naming the problem otherwise.

    Args:
        states: what `adb devices` lists ("device", "unauthorized", "offline", ...).
        serial: the requested serial ("android:SERIAL"), or None for the only attached phone.
    """
    if serial is not None:
        if serial not in states:
            raise DeviceError(f"no phone with serial {serial!r} is attached; attached: {', '.join(states) or 'none'}")
        chosen = serial
    elif not states:
        raise DeviceError("no phone is attached (adb devices lists none); connect one with USB debugging on")
    elif len(states) > 1:
        raise DeviceError(f"{len(states)} phones are attached ({', '.join(sorted(states))}); name one as "
                          "'android:<serial>' in the suite's devices")
    else:
        chosen = next(iter(states))
    state = states[chosen]
    if state == "unauthorized":
        raise DeviceError(f"phone {chosen!r} is unauthorised: accept the USB debugging prompt on the phone")
    if state != "device":
        raise DeviceError(f"phone {chosen!r} is {state!r}, not ready; reconnect it (adb state must be 'device')")
    return chosen


def connect(serial: str | None = None, client: Any = None) -> AdbutilsTransport:
    """The attached phone `serial` (None: the only one) through the adb server.

    Args:
        serial: a serial from `adb devices`, or None.
        client: an adbutils `AdbClient` (default: adbutils' client for the server at $ANDROID_ADB_SERVER_*).
    """
    try:
        from adbutils import AdbError, adb
    except ImportError as err:
        raise ImportError(f"adbutils is not installed ({err}); install the mobile extra: "
                          "pip install 'lazydit-harness[mobile]'") from None
    client = client or adb
    try:
        states = {info.serial: info.state for info in client.list()}
    except (AdbError, OSError) as err:
        raise DeviceError(f"no adb server at {server_address()} ({err}); start one with `adb start-server` "
                          "or set ANDROID_ADB_SERVER_HOST/PORT") from None
    return AdbutilsTransport(client.device(serial=select_serial(states, serial)))


def free_bytes(df_output: str) -> int:
    """Available bytes from `df -k PATH` output (toybox and busybox: the 4th column of the last line)."""
    lines = [line.split() for line in df_output.strip().splitlines() if line.strip()]
    try:
        return int(lines[-1][3]) * 1024
    except (IndexError, ValueError):
        raise DeviceError(f"cannot read free space from df output {df_output.strip()[-120:]!r}") from None
