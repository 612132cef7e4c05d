"""Paired bootstrap over images: one resampling plan shared by every cell, replicates stored compactly.

Cells of one suite with the same seed set draw image i from the same seed and label, so two cells'
images pair up by index. Every cell resamples its images with the *same* plan (`resample_counts`:
B rows of multiplicities, a function of the image count only), so replicate b of one cell and
replicate b of another are computed on the same images: their difference is a draw of the paired
bootstrap, and a table can difference any two cells of a suite (a method and DDIM at the same steps,
or the two DDIM budgets around a method's MACs) from their records alone. A record stores each
metric's B replicates as float16 offsets from its point value (base64), about 1 KB per metric.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

REPLICATES = 400  # B: percentiles at 2.5% / 97.5% rest on 10 replicates each
PLAN_SEED = 1729  # the resampling plan's seed (a constant: the plan must be the same in every run)
CONFIDENCE = 0.95
ENCODING = "float16 offsets from the point value, little-endian, base64"


def resample_counts(n: int, replicates: int = REPLICATES) -> np.ndarray:
    """(replicates, n) int multiplicities: row b says how often each of n images is drawn in replicate b."""
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 images; got {n}")
    rng = np.random.default_rng([PLAN_SEED, n])
    draws = rng.integers(0, n, size=(replicates, n))
    counts = np.zeros((replicates, n), dtype=np.int64)
    np.add.at(counts, (np.arange(replicates)[:, None], draws), 1)
    return counts


def encode(point: float, replicates: np.ndarray) -> str:
    """Replicates -> compact text (offsets from `point` in float16; exact enough for CIs of differences)."""
    offsets = (np.asarray(replicates, dtype=np.float64) - point).astype("<f2")
    return base64.b64encode(offsets.tobytes()).decode("ascii")


def decode(point: float, text: str) -> np.ndarray:
    """`encode`'s text -> float64 replicates."""
    return point + np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float64)


@dataclass(frozen=True)
class Estimate:
    """A point value with a bootstrap confidence interval (centred on the point: percentile of offsets)."""

    value: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        """The interval excludes zero (for a difference: the two cells differ)."""
        return bool(self.low > 0 or self.high < 0)


def interval(point: float, replicates: np.ndarray, confidence: float = CONFIDENCE) -> Estimate:
    """Percentile interval of the replicates' offsets from their mean, placed around `point`.

    Resampling with replacement duplicates images, which shifts set statistics such as FID (fewer
    distinct images); the shift is common to the replicates, so the interval uses their spread only.
    """
    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if not np.isfinite(point) or len(reps) < 2:
        return Estimate(float(point), float("nan"), float("nan"))
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(reps - reps.mean(), [tail, 1 - tail])
    return Estimate(float(point), float(point + lo), float(point + hi))


def over_seed_sets(points: list[float], replicates: list[np.ndarray], seed: int = PLAN_SEED) -> tuple[float, np.ndarray]:
    """Mean over seed sets and its replicates: images resampled within each set, and the sets resampled too.

    Replicate b averages replicate b of a resample (with replacement) of the seed sets, so the interval
    covers both the image-to-image and the set-to-set variation (a single set: image resampling only).
    """
    points_arr = np.asarray(points, dtype=np.float64)
    reps = np.stack([np.asarray(r, dtype=np.float64) for r in replicates])  # (sets, B)
    if len(points_arr) == 1:
        return float(points_arr[0]), reps[0]
    rng = np.random.default_rng([seed, len(points_arr), reps.shape[1]])
    pick = rng.integers(0, len(points_arr), size=(reps.shape[1], len(points_arr)))  # (B, sets)
    # Resampled sets contribute their own image replicate b, re-centred on the resampled sets' points.
    combined = reps[pick, np.arange(reps.shape[1])[:, None]].mean(axis=1)
    return float(points_arr.mean()), combined
