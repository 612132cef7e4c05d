"""Embedded models shipped with the package: small pixel-space DiTs trained on sklearn's digits.

Each name in `EMBEDDED_ARCHS` is registered in `MODELS` (so `build_model("embedded/digits-8")`
builds the random-init architecture); `load_embedded` reads `harness/zoo/manifest.json`,
checks the checkpoint's sha256 and returns the EMA weights in eval mode.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from harness.cache import atomic_write_json, load_torch_dict
from harness.models import MODELS, ModelSpec
from harness.models.dit import DiT, DiTConfig
from harness.provenance import sha256_file

EMBEDDED_PREFIX = "embedded/"
ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"
MANIFEST = "manifest.json"

# name -> DiT architecture; 16 tokens per image at both resolutions (8x8 / patch 2, 16x16 / patch 4).
EMBEDDED_ARCHS = {
    "embedded/digits-8": dict(input_size=8, patch_size=2, in_channels=1, hidden_size=128, depth=6,
                              num_heads=4, num_classes=10, class_dropout_prob=0.1, learn_sigma=True),
    "embedded/digits-16": dict(input_size=16, patch_size=4, in_channels=1, hidden_size=128, depth=6,
                               num_heads=4, num_classes=10, class_dropout_prob=0.1, learn_sigma=True),
}


def is_embedded(name: str) -> bool:
    return str(name).lower().startswith(EMBEDDED_PREFIX)


def canonical_name(name: str) -> str:
    """"digits-8" or "embedded/digits-8" -> "embedded/digits-8"; unknown names raise with the accepted ones."""
    key = str(name).lower()
    key = key if key.startswith(EMBEDDED_PREFIX) else EMBEDDED_PREFIX + key
    if key not in EMBEDDED_ARCHS:
        raise ValueError(f"unknown embedded model {name!r}; accepted: {', '.join(sorted(EMBEDDED_ARCHS))}")
    return key


#################################################################################
#                               Architectures                                   #
#################################################################################

def _embedded_builder(name: str, arch: dict):
    native = arch["input_size"]

    def build(image_size: int = native, **overrides) -> DiT:
        if image_size != native:
            raise ValueError(f"image_size={image_size!r} does not fit {name}; accepted: {native} (pixel space)")
        config = dataclasses.replace(DiTConfig(**arch), **overrides)
        model = DiT(config)
        model.spec = ModelSpec(name, native, native, config.in_channels, config.num_classes, None, "dit")
        return model

    return build


for _name, _arch in EMBEDDED_ARCHS.items():
    MODELS.register(_name)(_embedded_builder(_name, _arch))


#################################################################################
#                              Manifest and loading                             #
#################################################################################

def read_manifest(zoo_dir: str | os.PathLike = ZOO_DIR) -> dict[str, dict]:
    """The zoo manifest: {name: entry}; entries have kind "model" (the DiTs) or "classifier" ({} when absent)."""
    path = Path(zoo_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def shipped_models(zoo_dir: str | os.PathLike = ZOO_DIR) -> dict[str, dict]:
    """The manifest's DiT entries, by model name."""
    return {name: e for name, e in read_manifest(zoo_dir).items() if e.get("kind") == "model"}


def record_entry(entry: dict, zoo_dir: str | os.PathLike = ZOO_DIR) -> None:
    """Adds or replaces `entry` (keyed by its "name") in the manifest, written atomically."""
    manifest = read_manifest(zoo_dir)
    manifest[entry["name"]] = entry
    atomic_write_json(Path(zoo_dir) / MANIFEST, manifest, indent=2)


def verified_file(entry: dict, what: str, zoo_dir: str | os.PathLike = ZOO_DIR) -> Path:
    """The file an entry names, after checking its sha256 against the manifest."""
    path = Path(zoo_dir) / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"{what}: checkpoint {path} is missing from the zoo (the manifest lists it)")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ValueError(f"{what}: sha256 of {path.name} is {actual}, the manifest says {entry['sha256']}; the file is corrupt")
    return path


def load_embedded(name: str, zoo_dir: str | os.PathLike = ZOO_DIR) -> DiT:
    """A shipped embedded model with its EMA weights (float32), hash-checked, in eval mode.

    Args:
        name: "embedded/digits-8" or "embedded/digits-16" (the prefix may be omitted).
        zoo_dir: the folder with the checkpoints and manifest.json (default: the package's zoo).
    """
    key = canonical_name(name)
    entries = shipped_models(zoo_dir)
    if key not in entries:
        shipped = ", ".join(sorted(entries)) or "none"
        raise FileNotFoundError(f"embedded model {key!r} is not in {Path(zoo_dir) / MANIFEST} (shipped: {shipped}); "
                                f"train it with `python -m harness train embedded --name {key[len(EMBEDDED_PREFIX):]} --install`")
    entry = entries[key]
    path = verified_file(entry, key, zoo_dir)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = MODELS.get(key)()
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model.checkpoint_path = str(path)
    model.checkpoint_sha256 = entry["sha256"]
    return model.eval()


def install_run(run_dir: str | os.PathLike, command: str | None = None, zoo_dir: str | os.PathLike = ZOO_DIR) -> dict:
    """Copies a finished run's EMA weights (fp16) into the zoo and records it in the manifest.

    Args:
        run_dir: a folder written by `harness.training.train_embedded` (holds checkpoint.pt).
        command: the training command line to record (default: the one stored in the run).
        zoo_dir: the zoo folder to write (default: the package's zoo).
    Returns the manifest entry.
    """
    from harness.cache import atomic_torch_save
    from harness.training import CHECKPOINT

    checkpoint = load_torch_dict(Path(run_dir) / CHECKPOINT, "ema", "training-run checkpoint",
                                 "train one with `python -m harness train embedded`")
    summary = checkpoint["summary"]
    key = canonical_name(summary["config"]["name"])
    zoo = Path(zoo_dir)
    zoo.mkdir(parents=True, exist_ok=True)
    file = key[len(EMBEDDED_PREFIX):] + ".pt"
    atomic_torch_save({k: v.half() for k, v in checkpoint["ema"].items()}, zoo / file)
    arch = EMBEDDED_ARCHS[key]
    entry = {
        "name": key, "kind": "model", "file": file, "sha256": sha256_file(zoo / file), "dtype": "float16 (EMA weights)",
        "architecture": dict(arch, family="dit"), "resolution": arch["input_size"],
        "data": "sklearn.datasets.load_digits, harness.data train split", "data_hash": summary["data_hash"],
        "training_command": command or summary.get("command"), "steps": summary["steps"],
        "batch_size": summary["config"]["batch_size"], "lr": summary["config"]["lr"],
        "ema_decay": summary["config"]["ema_decay"], "seed": summary["config"]["seed"],
        "final_loss": summary["final_loss"], "device": summary["device"], "wall_time_s": summary["wall_time_s"],
        "torch": summary["torch"],
    }
    record_entry(entry, zoo)
    return entry
