"""Paired comparisons between cells, from the bootstrap replicates their records carry.

Every method cell is compared with full-compute DDIM at the same steps on the same seed sets (the quality
difference and fidelity to full compute), and with the DDIM step-budget curve at the same MACs and the same
latency (the curve's two neighbouring budgets interpolated replicate by replicate). Intervals come from the
paired bootstrap over images (and over seed sets where there are several): see `harness.bootstrap`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from harness import bootstrap
from harness.tables import CURVE_KEYS, FULL_COMPUTE, LATENCY, MACS_LINEAR, flatten, metric_info

# Quality and fidelity metrics whose replicates records carry (record group, metric).
PAIRED_QUALITY = ("domain_fid", "domain_kid", "domain_class_accuracy")
FIDELITY_CI = ("psnr_capped", "ssim", "domain_feature_distance")


@dataclass(frozen=True)
class CellSample:
    """One cell's point value and replicates of one metric (one seed set)."""

    seed: int
    n: int
    point: float
    replicates: np.ndarray


def replicates_of(record: dict[str, Any], group: str, metric: str) -> CellSample | None:
    """The record's replicates of `group.metric` (None when it has none, e.g. records from before the bootstrap)."""
    values = (record.get("metrics") or {}).get(group) or {}
    boot = values.get("bootstrap") or {}
    if metric not in boot or not isinstance(values.get(metric), (int, float)):
        return None
    point = float(values[metric])
    return CellSample(int(record["cell"]["seed"]), int(record["cell"]["num_samples"]), point,
                      bootstrap.decode(point, boot[metric]))


def samples_by_variant(records: Iterable[dict[str, Any]], group: str, metric: str) -> dict[str, list[CellSample]]:
    """variant_hash -> its seed sets' replicates of one metric, ordered by seed."""
    out: dict[str, list[CellSample]] = {}
    for record in records:
        sample = replicates_of(record, group, metric)
        if sample is not None:
            out.setdefault(record["variant_hash"], []).append(sample)
    return {k: sorted(v, key=lambda s: s.seed) for k, v in out.items()}


def combine(pairs: list[tuple[float, np.ndarray]]) -> bootstrap.Estimate:
    """Per-seed-set (point, replicates) -> the mean over seed sets with its interval."""
    if not pairs:
        return bootstrap.Estimate(math.nan, math.nan, math.nan)
    point, reps = bootstrap.over_seed_sets([p for p, _ in pairs], [r for _, r in pairs])
    return bootstrap.interval(point, reps)


def estimate(samples: list[CellSample]) -> bootstrap.Estimate:
    """A variant's value (mean over seed sets) with its interval."""
    return combine([(s.point, s.replicates) for s in samples])


def difference(a: list[CellSample], b: list[CellSample]) -> bootstrap.Estimate:
    """a - b on the seed sets both have (same seed, same image count: the images pair up)."""
    other = {(s.seed, s.n): s for s in b}
    pairs = [(s.point - other[(s.seed, s.n)].point, s.replicates - other[(s.seed, s.n)].replicates)
             for s in a if (s.seed, s.n) in other]
    return combine(pairs)


def curve_difference(method: list[CellSample], x: float, curve: list[tuple[float, list[CellSample]]]) -> bootstrap.Estimate:
    """method - (DDIM curve at cost x), the curve linear between its two budgets around x, per replicate.

    NaN outside the curve's measured range or without paired seed sets.
    """
    curve = sorted((cx, samples) for cx, samples in curve if np.isfinite(cx))
    if not np.isfinite(x) or len(curve) < 1 or x < curve[0][0] or x > curve[-1][0]:
        return bootstrap.Estimate(math.nan, math.nan, math.nan)
    hi = next(i for i, (cx, _) in enumerate(curve) if cx >= x)
    lo = hi if curve[hi][0] == x else hi - 1
    (x0, s0), (x1, s1) = curve[lo], curve[hi]
    t = 0.0 if x1 == x0 else (x - x0) / (x1 - x0)
    at0, at1 = {(s.seed, s.n): s for s in s0}, {(s.seed, s.n): s for s in s1}
    pairs = []
    for s in method:
        key = (s.seed, s.n)
        if key in at0 and key in at1:
            point = (1 - t) * at0[key].point + t * at1[key].point
            reps = (1 - t) * at0[key].replicates + t * at1[key].replicates
            pairs.append((s.point - point, s.replicates - reps))
    return combine(pairs)


def _columns(prefix: str, est: bootstrap.Estimate, sign: float = 1.0) -> dict[str, float]:
    low, high = sorted((sign * est.low, sign * est.high))
    value = sign * est.value
    significant = float(est.significant) if np.isfinite(est.value) and np.isfinite(est.low) else math.nan
    return {f"{prefix}": value, f"{prefix}:low": low, f"{prefix}:high": high, f"{prefix}:sig": significant}


def paired_columns(records: list[dict[str, Any]], measured: pd.DataFrame) -> pd.DataFrame:
    """`measured` (aggregate rows) plus paired columns, for every bootstrapped quality metric m:

    - `ci.m`, `ci.m:low`, `ci.m:high`: the variant's value and interval;
    - `paired.m` (+ :low/:high/:sig): method - full-compute DDIM at the same steps, same seed sets;
    - `gain.macs.m` / `gain.latency.m` (+ ...): the method's advantage over the DDIM curve at its MACs /
      latency, positive = better (sign follows the metric's direction);
    and for fidelity `fidelity_ci.f` (+ :low/:high) from the records' per-image replicates.
    """
    if measured.empty:
        return measured
    table = measured.copy()
    rows: dict[str, dict[str, float]] = {h: {} for h in table["variant_hash"]}
    for metric in PAIRED_QUALITY:
        samples = samples_by_variant(records, "quality", metric)
        if not samples:
            continue
        sign = -1.0 if metric_info(metric).higher_is_better is False else 1.0
        for _, row in table.iterrows():
            own = samples.get(row["variant_hash"])
            if not own:
                continue
            out = rows[row["variant_hash"]]
            out.update(_columns(f"ci.{metric}", estimate(own)))
            if row["method"] == FULL_COMPUTE:
                continue
            same_setup = table[(table[CURVE_KEYS] == row[CURVE_KEYS]).all(axis=1) & (table["method"] == FULL_COMPUTE)]
            at_steps = same_setup[same_setup["steps"].astype(str) == str(row["steps"])]
            if len(at_steps):
                out.update(_columns(f"paired.{metric}", difference(own, samples.get(at_steps["variant_hash"].iloc[0], []))))
            for x_col, tag in ((MACS_LINEAR, "macs"), (LATENCY, "latency")):
                if x_col not in table:
                    continue
                curve = [(float(r[x_col]), samples.get(r["variant_hash"], [])) for _, r in same_setup.iterrows()]
                out.update(_columns(f"gain.{tag}.{metric}", curve_difference(own, float(row[x_col]), curve), sign))
    for metric in FIDELITY_CI:
        samples = samples_by_variant(records, "fidelity", metric)
        for h, own in samples.items():
            if h in rows:
                est = estimate(own)
                rows[h].update({f"fidelity_ci.{metric}": est.value, f"fidelity_ci.{metric}:low": est.low,
                                f"fidelity_ci.{metric}:high": est.high})
    extra = pd.DataFrame([rows[h] for h in table["variant_hash"]], index=table.index)
    return pd.concat([table, extra], axis=1)


def pair_of_variants(records: list[dict[str, Any]], a: str, b: str, metric: str, group: str = "quality") -> bootstrap.Estimate:
    """a - b for two variant hashes of one suite (same seed sets), e.g. the best setting against the runner-up."""
    samples = samples_by_variant(records, group, metric)
    return difference(samples.get(a, []), samples.get(b, []))


def floor_rows(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The real-data floor per setup: from the full-compute cells' `quality.floor` (one per seed set and size)."""
    rows = []
    seen = set()
    for record in records:
        floor = ((record.get("metrics") or {}).get("quality") or {}).get("floor")
        if not floor:
            continue
        base = flatten({**record, "metrics": {}})
        key = (base["model"], base["resolution"], base["device"], base["seed"], record["cell"]["num_samples"])
        if key in seen:
            continue
        seen.add(key)
        row = {k: base[k] for k in ("model", "resolution", "device", "seed")}
        row["num_samples"] = record["cell"]["num_samples"]
        for metric in PAIRED_QUALITY + ("domain_precision", "domain_recall"):
            if isinstance(floor.get(metric), (int, float)):
                row[f"quality.{metric}"] = float(floor[metric])
                if metric in (floor.get("bootstrap") or {}):
                    row[f"reps.{metric}"] = bootstrap.decode(float(floor[metric]), floor["bootstrap"][metric])
        rows.append(row)
    return pd.DataFrame(rows)


def floor_estimates(records: list[dict[str, Any]]) -> dict[tuple, dict[str, bootstrap.Estimate]]:
    """(model, resolution, device, num_samples) -> metric -> the floor's mean over seed sets with its interval."""
    frame = floor_rows(records)
    out: dict[tuple, dict[str, bootstrap.Estimate]] = {}
    if frame.empty:
        return out
    for key, group in frame.groupby(["model", "resolution", "device", "num_samples"], sort=True):
        out[key] = {}
        for metric in PAIRED_QUALITY + ("domain_precision", "domain_recall"):
            col = f"quality.{metric}"
            if col not in group or group[col].isna().all():
                continue
            if f"reps.{metric}" in group and group[f"reps.{metric}"].notna().all():
                out[key][metric] = combine(list(zip(group[col], group[f"reps.{metric}"])))
            else:
                out[key][metric] = bootstrap.Estimate(float(group[col].mean()), math.nan, math.nan)
    return out
