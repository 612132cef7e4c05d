"""Content-addressed cache for expensive results (reference statistics, cost tables, full-compute references).

Entries live under $HARNESS_CACHE_DIR (default ~/.cache/lazydit-harness)/<kind>/<hash>.<ext>
and are written atomically (temporary file in the same folder, then `os.replace`), so an
interrupted run never leaves a half-written entry that a later run would trust.
"""
from __future__ import annotations

import hashlib
import json
import os
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
    """Writes `payload` to `path` all at once: readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from other users
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int = 1) -> Path:
    return atomic_write_bytes(path, (json.dumps(data, indent=indent, sort_keys=True) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` with the all-or-nothing guarantee of `atomic_write_bytes`."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_torch_dict(path: str | os.PathLike, key: str, kind: str, make_hint: str) -> dict[str, Any]:
    """A torch-saved dict that must hold `key`; the errors name the file, the kind and how to make one.

    Args:
        path: the file.
        key: the entry that makes the dict a `kind` file.
        kind: what the file is, for the errors (e.g. "lazy-weights").
        make_hint: how a user makes one, appended to the missing-file error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {str(path)!r} not found; {make_hint}")
    import torch

    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or key not in payload:
        raise ValueError(f"{str(path)!r} is not a {kind} file: expected a dict with a {key!r} entry")
    return payload


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
