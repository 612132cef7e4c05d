"""Which real digits play which role in the embedded models' domain evaluation.

scikit-learn ships 1,797 digits; the embedded DiTs were trained on the 1,438-image train split
(`harness.data`). Three disjoint roles, so that no set is compared in a feature space fitted to it:

- "classifier": the 359 held-out digits train the domain classifier (the feature space). The DiTs
  never saw them, and the images a metric compares (generated ones, the reference, the floor) are
  none of them.
- "reference": half of the train split (per class, a seeded permutation): the distribution generated
  images are scored against (like ADM's ImageNet reference batches, which are training images).
- "floor": the other half: real images from the same distribution as the reference and disjoint from
  it. Scored like a method cell of the same size, they give the real-data floor no model should beat.
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch

from harness.data import NUM_CLASSES, load_digits_split, tensor_hash

ROLES = ("classifier", "reference", "floor")
ROLE_SEED = 20261129  # the per-class permutation that halves the train split


def _train_role_indices(labels: np.ndarray, role: str) -> np.ndarray:
    """Indices into the train split of `role` ("reference" or "floor"), class-interleaved for floor subsets.

    The floor's order cycles through the classes (its first n images have n // 10 or n // 10 + 1 of each),
    so a floor set of n images has the class balance of a cell's labels (i mod 10).
    """
    rng = np.random.default_rng(ROLE_SEED)
    halves = []
    for cls in range(NUM_CLASSES):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        half = len(members) // 2
        halves.append(members[:half] if role == "reference" else members[half:])
    if role == "reference":
        return np.sort(np.concatenate(halves))
    longest = max(len(h) for h in halves)
    return np.array([h[i] for i in range(longest) for h in halves if i < len(h)])


@functools.lru_cache(maxsize=None)  # read-only tensors, reused by every cell of a run
def role_images(role: str, resolution: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The digits of `role` at `resolution`: images (N, 1, H, W) in [-1, 1], labels (N,), content hash."""
    if role not in ROLES:
        raise ValueError(f"unknown domain evaluation role {role!r}; accepted: {', '.join(ROLES)}")
    if role == "classifier":
        split = load_digits_split("heldout", resolution)
        return split.images, split.labels, split.data_hash
    train = load_digits_split("train", resolution)
    keep = torch.from_numpy(_train_role_indices(train.labels.numpy(), role))
    images, labels = train.images[keep], train.labels[keep]
    return images, labels, tensor_hash(images, labels)


def role_digest() -> str:
    """A short hash of the role assignment itself (seed and rule), for cache names."""
    return hashlib.sha256(f"{ROLE_SEED}:{ROLES}".encode()).hexdigest()[:8]
