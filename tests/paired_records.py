"""Synthetic records with bootstrap replicates, for the paired-comparison, ranking and gate tests.

Each seed set has an image-level noise vector common to every cell of that seed set (the images pair up),
plus a small cell-specific part: what a shared resampling plan produces for cells sampled from the same seeds.
"""
from __future__ import annotations

import numpy as np

from harness import bootstrap
from harness.suite import Cell

REPLICATES = 200


def shared_noise(seed: int) -> np.ndarray:
    return np.random.default_rng([7, seed]).normal(0, 3.0, REPLICATES)


def paired_record(cell: Cell, fid: float, macs: float, latency: float, speedup: float = 1.0, own_noise: float = 0.2,
                  lazy: float = 0.0, floor_fid: float | None = None) -> dict:
    """A record whose quality carries replicates: shared seed-set noise + `own_noise` of its own."""
    own = np.random.default_rng([11, cell.seed, abs(hash(cell.cell_id())) % 2**31]).normal(0, own_noise, REPLICATES)
    reps = fid + shared_noise(cell.seed) + own
    acc = 0.95 + 0.001 * (shared_noise(cell.seed) + own)
    boot = {"replicates": REPLICATES, "domain_fid": bootstrap.encode(fid, reps),
            "domain_class_accuracy": bootstrap.encode(0.95, acc)}
    quality = {"domain_fid": fid, "domain_class_accuracy": 0.95, "bootstrap": boot}
    if floor_fid is not None:
        quality["floor"] = {"domain_fid": floor_fid, "bootstrap": {"domain_fid": bootstrap.encode(floor_fid, floor_fid + own)}}
    return {"config_hash": cell.config_hash(), "variant_hash": cell.variant_hash(), "status": "ok",
            "cell": cell.to_dict(), "model_info": {"image_size": 8},
            "metrics": {"quality": quality,
                        "macs": {"macs_linear_per_image": macs, "macs_all_per_image": 2.5 * macs},
                        "latency": {"median_s": latency, "p10_s": latency, "p90_s": latency, "speedup": speedup},
                        "laziness": {"all": lazy}},
            "provenance": {"git_commit": "abc"}}
