"""Sampling split across torchrun ranks, written as one ADM-format `.npz` (and optional PNGs).

Rank r of W samples image indices r, r + W, r + 2W, ...; since image i's noise comes from
seeds[i] alone, the union equals a single-process run image for image.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from harness.cache import atomic_write_bytes
from harness.sampling import sample


def parse_seed_range(text: str) -> list[int]:
    """"0-63" -> [0, ..., 63] (inclusive); "1,5,9" -> [1, 5, 9]; seeds are distinct and non-negative."""
    from harness.inputs import check_seeds

    try:
        if "-" in text.strip("-"):
            lo, hi = text.split("-", 1)
            seeds = list(range(int(lo), int(hi) + 1))
        else:
            seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {text!r} is not a range A-B or a list 1,2,3 of non-negative integers") from None
    if not seeds:
        raise ValueError(f"--seeds {text!r} is empty; write A-B with A <= B")
    return check_seeds(seeds, "--seeds")


@contextlib.contextmanager
def torchrun_group() -> Iterator[tuple[int, int]]:
    """(rank, world size) under torchrun, with a process group (gloo on CPU) for the block; (0, 1) otherwise.

    The group is torn down after a barrier: a rank that exits while gloo peers still talk aborts.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or dist.is_initialized():
        yield (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        return
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def save_npz_atomic(path: Path, images: np.ndarray, labels: Sequence[int], seeds: Sequence[int]) -> None:
    """Writes `arr_0` (uint8 N, H, W, C, the layout the ADM evaluator reads) with each image's `labels` and `seeds`."""
    buffer = io.BytesIO()
    np.savez(buffer, arr_0=images, labels=np.asarray(labels, dtype=np.int64), seeds=np.asarray(seeds, dtype=np.int64))
    atomic_write_bytes(path, buffer.getvalue())


def save_pngs(folder: Path, images: np.ndarray, indices: Sequence[int]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in zip(indices, images):
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(folder / f"{i:06d}.png")


def sample_to_npz(model: nn.Module, class_labels: Sequence[int], seeds: Sequence[int], out: str | os.PathLike,
                  png_dir: str | os.PathLike | None = None, **sample_args: Any) -> Path | None:
    """Samples this rank's share of the images; rank 0 writes the full `.npz` in index order (images, labels, seeds).

    Args:
        model, class_labels, seeds: as for `harness.sample`.
        out: the `.npz` path (written by rank 0 only, atomically).
        png_dir: also write one PNG per image, named by image index.
        sample_args: passed on to `harness.sample` (steps, cfg_scale, method, ...).
    """
    with torchrun_group() as (rank, world):
        mine = list(range(rank, len(seeds), world))
        result = sample(model, [class_labels[i] for i in mine], [seeds[i] for i in mine], decode=True, **sample_args)
        if png_dir is not None:
            save_pngs(Path(png_dir), result.images, mine)
        images = gather_in_index_order(result.images, len(seeds), rank, world)
        if rank != 0:
            return None
        path = Path(out)
        save_npz_atomic(path, images, class_labels, seeds)
        return path


def gather_in_index_order(images: np.ndarray, n: int, rank: int, world: int) -> np.ndarray:
    """Collects every rank's images on rank 0, interleaved back into image-index order."""
    if world == 1:
        return images
    parts: list[np.ndarray | None] = [None] * world
    dist.all_gather_object(parts, images)
    full = np.empty((n, *images.shape[1:]), dtype=np.uint8)
    for r, part in enumerate(parts):
        full[r::world] = part
    return full
