"""What users hand the harness, checked before any work: values (CLI flags, suite keys) and method files.

Each check raises one ValueError that names the flag or key (`name`), the value and what is
accepted, so the CLI exits 2 with one line and a suite fails at load time, not after other
cells ran. Method files (lazy weights, schedules, routers, calibration files) written by the
harness record what they are for (`file_identity`); `check_identity` compares that with the
run. Official files without the record are left to the method's own shape checks.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch.nn as nn

IDENTITY_KEYS = ("model_name", "image_size", "steps", "method")
TORCH_SUFFIXES = (".pt", ".pth")


# ----------------------------------------------------------------------------------------
#                                        Values
# ----------------------------------------------------------------------------------------

def check_cfg_scale(value: float, name: str = "cfg_scale") -> float:
    """A finite guidance scale >= 1: DiT's sampler turns guidance off at 1 and has no meaning for it below."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1.0:
        raise ValueError(f"{name}={value!r} is not a guidance scale; accepted: a finite number >= 1 (1 = no guidance)")
    return float(value)


def check_seeds(seeds: Sequence[int], name: str = "seeds") -> list[int]:
    """At least one seed, each a distinct non-negative integer (numpy's SeedSequence takes no negatives)."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError(f"{name} is empty; give at least one non-negative integer seed")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{name}: seed {seed!r} is not a non-negative integer")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"{name}: seed {repeated[0]} appears more than once; each seed draws the same images")
    return seeds


def check_labels(labels: Sequence[int], count: int, num_classes: int, name: str = "labels") -> list[int]:
    """One class label in 0..num_classes-1 per image."""
    labels = list(labels)
    if len(labels) != count:
        raise ValueError(f"{name}: got {len(labels)} label(s) for {count} image(s); give one label per seed")
    bad = [y for y in labels if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < num_classes]
    if bad:
        raise ValueError(f"{name}: label {bad[0]!r} is out of range; accepted: 0..{num_classes - 1}")
    return labels


def parse_method_args(text: str, name: str = "--method-args") -> dict[str, Any]:
    """A method's parameters given as a JSON object on the command line."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name} {text!r} is not valid JSON ({err.msg}); expected an object like '{{\"threshold\": 0.5}}'") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} {text!r} is not a JSON object; expected an object like '{{\"threshold\": 0.5}}'")
    return value


def parse_ints(text: str, name: str) -> list[int]:
    """Comma-separated integers, e.g. --labels 1,2,3."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a comma-separated list of integers") from None


def check_positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return value


def check_ratio(value: float | None, name: str) -> float | None:
    """A share of branches to skip: 0 <= r < 1 (None passes)."""
    if value is not None and (not math.isfinite(value) or not 0.0 <= value < 1.0):
        raise ValueError(f"{name}={value!r} is out of range; accepted: 0 <= ratio < 1")
    return value


def check_sampler(sampler: str, eta: float, name: str = "") -> None:
    """A known sampler and a finite eta >= 0 (eta adds DDIM step noise; DDPM draws its own)."""
    from harness.sampling import SAMPLERS

    prefix = f"{name}: " if name else ""
    if sampler not in SAMPLERS:
        raise ValueError(f"{prefix}unknown sampler {sampler!r}; accepted: {', '.join(SAMPLERS)}")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"{prefix}eta={eta!r} is out of range; accepted: a finite number >= 0")


def check_readable(path: str | os.PathLike, what: str) -> Path:
    """An existing, readable file (or folder)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} not found")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{what} {str(path)!r} is not readable")
    return path


def check_writable(path: str | os.PathLike, what: str) -> Path:
    """A file that can be written, tried with a temporary file in its nearest existing folder (before long work)."""
    import tempfile

    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if path.is_dir():
            raise IsADirectoryError("it is a folder")
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise PermissionError(f"{what} {str(path)!r} cannot be written ({err.strerror or err})") from None
    return path


# ----------------------------------------------------------------------------------------
#                                   Method files' identity
# ----------------------------------------------------------------------------------------

def num_steps(steps: int | str) -> int:
    """Sampling steps of a step budget (50, "ddim50" or section counts)."""
    from harness.diffusion import Diffusion

    return Diffusion(steps).num_timesteps


def file_identity(model: nn.Module, steps: int | str, method: str) -> dict[str, Any]:
    """What a method file made for `model` at `steps` records: model name, image size, step count, method."""
    return {"model_name": model.spec.name, "image_size": model.spec.image_size, "steps": num_steps(steps),
            "method": method}


def check_identity(stored: Mapping[str, Any], path: str | os.PathLike, kind: str, model_name: str,
                   image_size: int | None, steps: int | str) -> None:
    """Raises one ValueError naming both sides when a file's recorded model, image size or steps differ from the run.

    Keys the file does not record (official files) and an unknown `image_size` are not compared;
    the method checks its file's "method" itself, since it knows which files it reads.

    Args:
        stored: the file's entries (those of `IDENTITY_KEYS` it has are compared).
        path, kind: the file and what it is, for the error.
        model_name, image_size, steps: the run's model, decoded image size and step budget.
    """
    want = {"model_name": model_name, "image_size": image_size, "steps": num_steps(steps)}
    differ = [key for key, value in want.items()
              if stored.get(key) is not None and value is not None and _norm(stored[key]) != _norm(value)]
    if differ:
        raise ValueError(f"{kind} file {str(path)!r} is for {_describe(stored)}; this run is {_describe(want)} "
                         f"(differs: {', '.join(differ)})")


def check_method_files(method_args: Mapping[str, Any], model_name: str, image_size: int | None,
                       steps: int | str) -> None:
    """`check_identity` for every torch file among a method's arguments (read without running code)."""
    from harness.cache import load_torch_dict

    for key, value in method_args.items():
        if isinstance(value, str) and Path(value).suffix in TORCH_SUFFIXES:
            stored = load_torch_dict(value, kind=f"method_args[{key!r}]")
            check_identity(stored, value, f"method_args[{key!r}]", model_name, image_size, steps)


def _norm(value: Any) -> Any:
    return str(value).lower() if isinstance(value, str) else value


def _describe(identity: Mapping[str, Any]) -> str:
    parts = [f"model {identity['model_name']!r}" if identity.get("model_name") is not None else None,
             f"{identity['image_size']} px" if identity.get("image_size") is not None else None,
             f"{identity['steps']} steps" if identity.get("steps") is not None else None]
    return ", ".join(p for p in parts if p) or "an unrecorded model"
