"""The embedded default's data: scikit-learn's handwritten digits, split and upsampled offline.

`sklearn.datasets.load_digits` ships 1,797 real 8x8 grayscale digits (values 0..16, 10
classes) inside the installed package, so nothing is downloaded. The train / held-out
split is fixed by a numpy PCG64 permutation per class (stable across numpy and sklearn
versions); images are scaled to [-1, 1] and bilinearly upsampled to the model resolution.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SPLITS = ("train", "heldout")
NATIVE_SIZE = 8
NUM_CLASSES = 10
HELDOUT_FRACTION = 0.2
SPLIT_SEED = 20231128
PIXEL_MAX = 16.0  # load_digits' intensity range is 0..16
UPSAMPLE_MODE = "bilinear"


@dataclass(frozen=True)
class DigitsSplit:
    """One split at one resolution: images (N, 1, H, W) float32 in [-1, 1], labels (N,) int64."""

    name: str
    resolution: int
    images: torch.Tensor
    labels: torch.Tensor
    data_hash: str  # sha256 of the split's float32 images and labels at this resolution

    def __len__(self) -> int:
        return len(self.labels)


def raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as (N, 8, 8) float32 in 0..16 and labels (N,) int64, in sklearn's order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def split_indices(labels: np.ndarray, split: str, seed: int = SPLIT_SEED) -> np.ndarray:
    """Sorted indices of `split`: per class, the first 20% of a seeded permutation are held out."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in range(NUM_CLASSES):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        n_held = int(round(HELDOUT_FRACTION * len(members)))
        chosen.append(members[:n_held] if split == "heldout" else members[n_held:])
    return np.sort(np.concatenate(chosen))


def upsample(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, resolution, resolution), bilinear (identity at the same size)."""
    if resolution < 1:
        raise ValueError(f"resolution must be a positive number of pixels; got {resolution!r}")
    if images.shape[-1] == resolution:
        return images
    return F.interpolate(images, size=(resolution, resolution), mode=UPSAMPLE_MODE, align_corners=False)


def tensor_hash(*tensors: torch.Tensor) -> str:
    """sha256 over the tensors' contiguous CPU bytes (dtype and shape included)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def load_digits_split(split: str, resolution: int = NATIVE_SIZE) -> DigitsSplit:
    """The train or held-out digits at `resolution`, in [-1, 1].

    Args:
        split: "train" (1,438 images) or "heldout" (359 images).
        resolution: output size in pixels (8 is native; larger sizes are bilinear upsamples).
    """
    images, labels = raw_digits()
    keep = split_indices(labels, split)
    x = torch.from_numpy(images[keep]).unsqueeze(1) / PIXEL_MAX * 2.0 - 1.0  # (N, 1, 8, 8)
    x = upsample(x, resolution).clamp(-1.0, 1.0)
    y = torch.from_numpy(labels[keep])
    return DigitsSplit(split, resolution, x, y, tensor_hash(x, y))


