"""Loading official checkpoints with strict=True, and the errors that say what is wrong."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from harness.cache import load_torch_dict
from harness.models import MODELS, build_model

CHECKPOINT_ENV = "HARNESS_CHECKPOINT_DIR"
# Alpha-VLLM releases a folder per model; its EMA weights are this file (a plain state dict).
LARGE_DIT_EMA_FILE = "consolidated_ema.00-of-01.pth"
_LARGE_DIT = "https://huggingface.co/Alpha-VLLM/Large-DiT/tree/main/{folder} (the folder, or its " + LARGE_DIT_EMA_FILE + ")"
OFFICIAL_SOURCES = {
    "dit-xl/2": "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-{size}x{size}.pt",
    "large-dit-3b": _LARGE_DIT.format(folder="240218_3b_bs256_step1350k"),
    "dit_llama_3b_patch2": _LARGE_DIT.format(folder="240218_3b_bs256_step1350k"),
    "large-dit-7b": _LARGE_DIT.format(folder="240218_7b_bs512_step620k"),
    "dit_llama_7b_patch2": _LARGE_DIT.format(folder="240218_7b_bs512_step620k"),
}


def resolve_checkpoint(name: str, path: str | os.PathLike, image_size: int | None) -> Path:
    """The checkpoint file: `path` itself, or its file name under $HARNESS_CHECKPOINT_DIR or the torch hub cache.

    A folder stands for the EMA file inside it (Alpha-VLLM's release layout).
    """
    path = Path(path).expanduser()
    candidates = [path]
    if not path.is_absolute():
        if os.environ.get(CHECKPOINT_ENV):
            candidates.append(Path(os.environ[CHECKPOINT_ENV]) / path.name)
        candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / path.name)
    for candidate in candidates:
        if candidate.is_dir() and (candidate / LARGE_DIT_EMA_FILE).is_file():
            return candidate / LARGE_DIT_EMA_FILE
        if candidate.is_file():
            return candidate
    source = OFFICIAL_SOURCES.get(name.lower(), "the method's official release")
    source = source.format(size=image_size or 256)
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"checkpoint {path.name!r} for {name} not found (looked in: {looked}); it comes from {source}; "
        f"pass its path with --checkpoint or put it in ${CHECKPOINT_ENV}"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The EMA weights of an official file: the state dict itself or one held under "ema" / "model".

    Read with `load_torch_dict` (no code runs; training checkpoints' argparse options are allowed).
    """
    obj = load_torch_dict(path, kind="checkpoint")
    for key in ("ema", "model", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    strays = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if strays or not obj:
        raise ValueError(f"checkpoint {str(path)!r} is not a state dict: " +
                         (f"{strays[0]!r} holds a {type(obj[strays[0]]).__name__}" if strays else "it is empty"))
    return obj


def infer_image_size(name: str, state: dict[str, torch.Tensor]) -> int | None:
    """Image size implied by a DiT checkpoint's positional grid (None when the model has none)."""
    pos = state.get("pos_embed")
    proj = state.get("x_embedder.proj.weight")
    if pos is None or proj is None:
        return None
    grid = int(round(pos.shape[1] ** 0.5))
    return grid * proj.shape[-1] * 8


def check_layout(model: nn.Module, state: dict[str, torch.Tensor], name: str, image_size: int) -> None:
    """Raises one error listing missing, unexpected and mis-shaped keys against the built model."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if not (missing or unexpected or shapes):
        return

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key(s): {few(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s): {few(unexpected)}")
    if shapes:
        parts.append("shape mismatch: " + few([f"{k} {found[k]} vs expected {expected[k]}" for k in shapes]))
    raise ValueError(f"checkpoint does not have the layout of {name} at image size {image_size}: " + "; ".join(parts))


def load_checkpoint(name: str, path: str | os.PathLike, image_size: int | None = None, **overrides) -> nn.Module:
    """Builds `name` and loads the official checkpoint at `path` with strict=True."""
    MODELS.get(name)  # unknown names fail before any file is read
    file = resolve_checkpoint(name, path, image_size)
    state = read_state_dict(file)
    size = image_size or infer_image_size(name, state) or 256
    with torch.device("meta"):
        model = build_model(name, image_size=size, **overrides)
    check_layout(model, state, name, size)
    # Assigning the file's tensors to a meta skeleton needs no second copy of a 7B model in memory.
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    model.checkpoint_path = str(file)
    return model.eval()
