"""Files the harness writes and reads: the content-addressed cache, atomic writes, safe torch files.

Cache entries (reference statistics, cost tables, full-compute references) live under
$HARNESS_CACHE_DIR (default ~/.cache/lazydit-harness)/<kind>/<hash>.<ext>. Every write is
atomic (temporary file in the same folder, then `os.replace`), so an interrupted run never
leaves a half-written file that a later run would trust. Torch files are written as plain
data and read with weights_only=True (`load_torch_dict`): a file from a stranger cannot run
code unless the user opts in ($HARNESS_ALLOW_PICKLE=1 / --allow-pickle).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

CACHE_ENV = "HARNESS_CACHE_DIR"


def cache_root() -> Path:
    """The cache folder: $HARNESS_CACHE_DIR or ~/.cache/lazydit-harness."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lazydit-harness").expanduser()


def cache_path(kind: str, key: str, ext: str) -> Path:
    """Where the entry `key` of `kind` (e.g. "cost", "reference") lives."""
    return cache_root() / kind / f"{key}.{ext}"


def content_hash(data: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of `data` (sorted keys), shortened to `length` hex digits."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> Path:
    """Writes `payload` to `path` all at once: readers see the old file or the new one, never a part.

    An unwritable destination raises an OSError of the same kind whose message names the path.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _unwritable(path, err) from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from other users
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _unwritable(path, err) from None
        raise
    return path


def _unwritable(path: Path, err: OSError) -> OSError:
    return type(err)(f"cannot write {str(path)!r}: {err.strerror or err}")


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int = 1) -> Path:
    return atomic_write_bytes(path, (json.dumps(data, indent=indent, sort_keys=True) + "\n").encode())


# ----------------------------------------------------------------------------------------
#                 Torch files: written as plain data, read without running code
# ----------------------------------------------------------------------------------------

ALLOW_PICKLE_ENV = "HARNESS_ALLOW_PICKLE"
ALLOW_PICKLE_HINT = f"pass --allow-pickle or set {ALLOW_PICKLE_ENV}=1"
# Classes a weights-only load may build: plain attribute bags whose values are themselves
# unpickled under the same restrictions (official L2C routers and DiT training checkpoints
# pickle their argparse options).
SAFE_GLOBALS = (argparse.Namespace,)
PLAIN_TYPES = (str, int, float, bool, type(None))


class UnsafeFileError(ValueError):
    """A torch file that only full unpickling (which can run code) would load."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` with the all-or-nothing guarantee of `atomic_write_bytes`.

    `obj` must be plain data (tensors, dicts with str / int keys, lists, tuples, str / int /
    float / bool / None), so that every file the harness writes loads with weights_only=True.
    """
    import io

    import torch

    _check_plain(obj, str(path))
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _check_plain(obj: Any, where: str) -> None:
    import torch

    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}; torch files the harness writes use str / int keys")
            _check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
    elif not isinstance(obj, (torch.Tensor, *PLAIN_TYPES)):
        raise TypeError(f"{where} is a {type(obj).__name__}; torch files the harness writes hold tensors and plain values only")


def pickle_allowed() -> bool:
    """Whether the user opted in to full unpickling ($HARNESS_ALLOW_PICKLE=1, set by --allow-pickle)."""
    return os.environ.get(ALLOW_PICKLE_ENV, "") == "1"


def load_torch_dict(path: str | os.PathLike, key: str | None = None, kind: str = "torch",
                    make_hint: str = "", allow_pickle: bool | None = None) -> dict[str, Any]:
    """A torch-saved dict read without running code in it; every failure is one error naming the file.

    The file is loaded with weights_only=True (tensors, containers, plain values and the
    classes in `SAFE_GLOBALS`). A file that needs any other class (a pickled object, which
    can run code while it loads) is refused with `UnsafeFileError` naming the class and the
    opt-in, unless the user opted in (`allow_pickle`, default: `pickle_allowed()`): then it
    is fully unpickled after a warning. Use it for every third-party file (weights,
    schedules, routers, checkpoints, calibration data).

    Args:
        path: the file.
        key: an entry the dict must hold to be a `kind` file (None: any dict).
        kind: what the file is, for the errors (e.g. "lazy-weights", "L2C router").
        make_hint: how a user makes or gets one, appended to the missing-file error.
        allow_pickle: full unpickling for files that need it (None: $HARNESS_ALLOW_PICKLE == "1").
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {str(path)!r} not found" + (f"; {make_hint}" if make_hint else ""))
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{kind} file {str(path)!r} is not readable")
    payload = _torch_load(path, kind, pickle_allowed() if allow_pickle is None else allow_pickle)
    if not isinstance(payload, dict):
        raise ValueError(f"{kind} file {str(path)!r} holds a {type(payload).__name__}, not a dict")
    if key is not None and key not in payload:
        found = ", ".join(sorted(map(str, payload))[:6]) or "none"
        raise ValueError(f"{str(path)!r} is not a {kind} file: it lacks the {key!r} entry (keys: {found})")
    return payload


def _torch_load(path: Path, kind: str, allow_pickle: bool) -> Any:
    import pickle
    import warnings

    import torch

    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path, err)
        if not unsafe:
            raise ValueError(f"{kind} file {str(path)!r} is not a readable torch file (corrupt or another format)") from None
    except Exception as err:  # noqa: BLE001  a truncated, empty or foreign file fails in many ways inside torch
        raise _unreadable(path, kind, err) from None
    if not allow_pickle:
        raise UnsafeFileError(f"{kind} file {str(path)!r} holds pickled objects ({', '.join(unsafe)}) that could run "
                              f"code while loading; it was not loaded. If you trust the file, {ALLOW_PICKLE_HINT}")
    warnings.warn(f"fully unpickling {kind} file {str(path)!r} ({', '.join(unsafe)}): {ALLOW_PICKLE_ENV}=1 / "
                  "--allow-pickle trusts it to run code", stacklevel=3)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001  e.g. a class the file names that this environment lacks
        raise _unreadable(path, kind, err) from None


def _unreadable(path: Path, kind: str, err: Exception) -> ValueError:
    detail = str(err).splitlines()[0] if str(err) else "empty or truncated"
    return ValueError(f"{kind} file {str(path)!r} is not a readable torch file ({type(err).__name__}: {detail})")


def _unsafe_globals(path: Path, err: Exception) -> list[str]:
    """The classes / functions a weights-only load refused ([] when the file is simply unreadable)."""
    import torch

    safe = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001  legacy (non-zip) files: read the refusal itself
        found = re.findall(r"Unsupported global: GLOBAL (\S+)", str(err))
    return sorted(set(found) - safe)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cached_json(kind: str, key: str, compute: Callable[[], Any]) -> Any:
    """The JSON entry `key` of `kind`, computed and stored atomically on a miss."""
    path = cache_path(kind, key, "json")
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # unreadable entry: recompute and replace it
    data = compute()
    atomic_write_json(path, data)
    return data
