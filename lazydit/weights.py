"""The official lazy-weights file: {"model": {"block_{b}_{attn|mlp}_lazy_learning_weight_{i}": (1, hidden)}}.

i is the respaced step index in ascending order (i = 0 is the last denoising step), b the
block. Files written here add plain values next to "model": what they are for
(`harness.inputs.file_identity`: "model_name", "image_size", "steps", "method"), the
threshold and the training recipe; the official loader reads "model" only. Files are read
with `harness.cache.load_torch_dict`: a pickled object in a stranger's file never runs.
"""
from __future__ import annotations

import os
import re
from typing import Any

import torch

from harness.cache import atomic_torch_save, load_torch_dict
from harness.methods import BRANCHES
from lazydit.layers import LazyLayers

KEY_PATTERN = re.compile(r"^block_(\d+)_(attn|mlp)_lazy_learning_weight_(\d+)$")
WEIGHTS_KEY = "model"
METHOD_KEY = "method"  # which method name trained the file ("lazydit" when absent, as in official files)


def official_key(block: int, kind: int, step: int) -> str:
    return f"block_{block}_{BRANCHES[kind]}_lazy_learning_weight_{step}"


def layers_to_state(layers: LazyLayers) -> dict[str, torch.Tensor]:
    """The official "model" dict: one (1, hidden) float32 tensor per block x branch x step."""
    w = layers.weight.float().cpu()
    return {
        official_key(b, k, i): w[i, b, k].clone().unsqueeze(0)
        for b in range(layers.depth) for k in range(len(BRANCHES)) for i in range(layers.num_steps)
    }


def layers_from_state(state: dict[str, Any]) -> LazyLayers:
    """LazyLayers from an official "model" dict; every block x branch x step must be present."""
    found = {}
    for key, value in state.items():
        match = KEY_PATTERN.match(key)
        if match is None:
            raise ValueError(f"unexpected key {key!r} in a lazy-weights file; accepted: block_B_(attn|mlp)_lazy_learning_weight_I")
        b, kind, i = int(match[1]), BRANCHES.index(match[2]), int(match[3])
        found[(i, b, kind)] = torch.as_tensor(value).float().reshape(-1)
    if not found:
        raise ValueError("the lazy-weights file holds no block_B_(attn|mlp)_lazy_learning_weight_I keys")
    steps = 1 + max(i for i, _, _ in found)
    depth = 1 + max(b for _, b, _ in found)
    hidden = {v.numel() for v in found.values()}
    if len(hidden) != 1:
        raise ValueError(f"lazy weights of mixed widths {sorted(hidden)}; expected one hidden size")
    width = hidden.pop()
    weight = torch.zeros(steps, depth, len(BRANCHES), width)
    for i in range(steps):
        for b in range(depth):
            for k in range(len(BRANCHES)):
                if (i, b, k) not in found:
                    raise ValueError(f"lazy-weights file lacks {official_key(b, k, i)!r} ({steps} steps x {depth} blocks expected)")
                weight[i, b, k] = found[(i, b, k)]
    return LazyLayers(steps, depth, width).copy_weight_(weight)


def save_lazy_weights(layers: LazyLayers, path: str | os.PathLike, **extra: Any) -> None:
    """Writes the official format atomically; `extra` (method, steps, threshold, train args) sits beside "model".

    Args:
        layers: the lazy layers to write.
        path: destination file (.pt).
        extra: plain values stored next to "model": the file's identity (`harness.inputs.file_identity`),
            threshold, recipe.
    """
    payload = {WEIGHTS_KEY: layers_to_state(layers), "steps": layers.num_steps, **extra}
    atomic_torch_save(payload, path)


def read_lazy_file(path: str | os.PathLike) -> dict[str, Any]:
    """The whole file as a dict (official files: "model", "opt", "args", "epoch", "step")."""
    return load_torch_dict(path, WEIGHTS_KEY, "lazy-weights", "train one with `python -m harness train lazydit`")


def load_lazy_weights(path: str | os.PathLike) -> LazyLayers:
    """LazyLayers from an official (or harness-written) lazy-weights file.

    Args:
        path: a .pt file whose "model" entry maps block_B_(attn|mlp)_lazy_learning_weight_I to (1, hidden).
    """
    return layers_from_state(read_lazy_file(path)[WEIGHTS_KEY])
