"""Provenance of a record: what software, hardware, settings and files produced a number.

Every record carries `collect_provenance(...)`: package versions, device name, driver /
CUDA, thread count, TF32 flags, git commit (dirty only through changes outside the results
folders, with a hash of those changes), the config hash and the sha256 of the files the
number depends on (checkpoint, reference statistics, feature-extractor weights).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Mapping

import torch

from harness.cache import content_hash

PACKAGES = ("torch", "torchvision", "numpy", "scipy", "torch-fidelity", "clean-fid", "diffusers", "psutil", "lazydit-harness")
REPO_ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------
#                                        File hashes
# ----------------------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes; memoised per (path, size, mtime) so big checkpoints hash once."""
    stat = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, chunk)


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int, chunk: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(folder: str | os.PathLike) -> str:
    """sha256 over a folder's files (relative names and bytes, sorted), for image folders."""
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()


def file_hashes(files: Mapping[str, str | os.PathLike | None]) -> dict[str, str | None]:
    """{role: sha256} for files given by role (e.g. "checkpoint"); missing or None -> None."""
    out: dict[str, str | None] = {}
    for role, path in files.items():
        if path is None or not Path(path).exists():
            out[role] = None
        else:
            out[role] = sha256_tree(path) if Path(path).is_dir() else sha256_file(path)
    return out


# ----------------------------------------------------------------------------------------
#                                  Software and hardware
# ----------------------------------------------------------------------------------------

def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


RESULTS_FOLDERS = ("results",)  # written by the harness itself: never what makes a checkout "dirty"


@functools.lru_cache(maxsize=8)
def git_state(root: str = str(REPO_ROOT), exclude: tuple[str, ...] = RESULTS_FOLDERS) -> dict[str, str | None]:
    """HEAD's commit ("-dirty" when tracked or new files differ, `exclude` folders aside) and, when dirty,
    the sha256 of the difference (the diff against HEAD and the new files' names and bytes); None outside a checkout.

    Args:
        root: the checkout.
        exclude: folders (relative to root) left out, e.g. the results folders a run writes.
    """
    specs = ["--", ".", *(f":(exclude){folder}" for folder in exclude)]
    try:
        head = _git(root, "rev-parse", "HEAD")
        diff = _git(root, "diff", "--binary", "HEAD", *specs, text=False)
        new = _git(root, "ls-files", "--others", "--exclude-standard", "-z", *specs, text=False)
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_diff_sha256": None}
    if head is None:
        return {"git_commit": None, "git_diff_sha256": None}
    if not diff and not new:
        return {"git_commit": head, "git_diff_sha256": None}
    digest = hashlib.sha256(diff or b"")
    for name in sorted(filter(None, (new or b"").split(b"\0"))):
        file = Path(root) / name.decode()
        digest.update(name + b"\0" + (sha256_file(file).encode() if file.is_file() else b""))
    return {"git_commit": head + "-dirty", "git_diff_sha256": digest.hexdigest()}


def _git(root: str, *args: str, text: bool = True) -> str | bytes | None:
    out = subprocess.run(["git", "-C", root, *args], capture_output=True, timeout=60)
    if out.returncode:
        return None
    return out.stdout.decode().strip() if text else out.stdout


def results_exclusions(results_dir: str | os.PathLike | None, root: str | os.PathLike = REPO_ROOT) -> tuple[str, ...]:
    """`RESULTS_FOLDERS` plus `results_dir` when it lies inside the checkout `root`."""
    if results_dir is None:
        return RESULTS_FOLDERS
    try:
        inside = Path(results_dir).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return RESULTS_FOLDERS
    return tuple(sorted({*RESULTS_FOLDERS, inside})) if inside != "." else RESULTS_FOLDERS


def code_fingerprint(modules: tuple[str, ...]) -> str:
    """sha256 (16 hex digits) over the source files of `modules`: a cache key that follows code changes."""
    import importlib

    digest = hashlib.sha256()
    for name in modules:
        source = getattr(importlib.import_module(name), "__file__", None)
        digest.update(name.encode() + b"\0" + (sha256_file(source).encode() if source else b""))
    return digest.hexdigest()[:16]


def device_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Device name, driver / CUDA versions and the numerics flags that change results."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,  # the CUDA torch was built with
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(device_name=props.name, device_memory_bytes=props.total_memory,
                    compute_capability=f"{props.major}.{props.minor}", driver=_nvidia_driver(),
                    clocks=nvidia_clocks(index))
    else:
        info["device_name"] = info["cpu"]
    return info


@functools.lru_cache(maxsize=1)
def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


# ----------------------------------------------------------------------------------------
#                                        The record
# ----------------------------------------------------------------------------------------

def config_hash(config: Any) -> str:
    """Content hash of a JSON-able configuration (sorted keys)."""
    return content_hash(config)


def collect_provenance(config: Any = None, files: Mapping[str, str | os.PathLike | None] | None = None,
                       device: str | torch.device = "cpu", exclude: tuple[str, ...] = RESULTS_FOLDERS) -> dict[str, Any]:
    """Everything a reviewer needs to trust and reproduce one record.

    Args:
        config: the cell's configuration (JSON-able); its content hash is recorded.
        files: files by role, e.g. {"checkpoint": ..., "reference": ..., "inception_weights": ...};
            each is hashed (sha256), missing ones are recorded as None.
        device: the device the numbers were measured on.
        exclude: checkout folders whose changes do not make the git state dirty (results).
    """
    return {
        "packages": package_versions(),
        **git_state(exclude=exclude),
        "config_hash": config_hash(config) if config is not None else None,
        "files_sha256": file_hashes(files or {}),
        **device_info(device),
    }


CLOCK_FIELDS = ("clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem", "power.limit", "persistence_mode")


def nvidia_clocks(index: int) -> dict[str, str] | None:
    """Current and maximum SM / memory clocks, power limit and persistence mode of GPU `index` (nvidia-smi);
    None where nvidia-smi is missing. Read when the cell's provenance is collected (after its timed runs)."""
    try:
        out = subprocess.run(["nvidia-smi", f"--id={index}", f"--query-gpu={','.join(CLOCK_FIELDS)}",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    values = [v.strip() for v in out.stdout.strip().split(",")] if out.returncode == 0 else []
    return dict(zip(CLOCK_FIELDS, values)) if len(values) == len(CLOCK_FIELDS) else None
