"""The regression gate: fresh records against a committed baseline.

A baseline (JSON) holds, per variant (a cell without its seed set): the mean of every
quality and fidelity metric over seed sets, the MACs, and the speedup; plus a tolerance
per quality metric derived from the measured seed-to-seed spread (k x the median standard
deviation over seed sets of the variants of the same model and resolution). The gate fails
when quality moves beyond its tolerance (either way: the numbers no longer reproduce),
when MACs differ at all, or when a speedup falls below baseline x (1 - tolerance).

Paired differences gate tighter: per method variant, its quality minus full-compute DDIM's at the same
steps on the same seed sets, and its fidelity to full compute (`harness.comparisons`), may move by
`paired_k` x the baseline's 95% half-interval of that difference. The images of both cells share their
seeds, so seed-set noise cancels and a method that silently got worse stands out long before its
absolute FID leaves the seed-to-seed band.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.cache import atomic_write_json

from harness.suite import Suite
from harness.tables import (MACS_ALL, MACS_LINEAR, SPEEDUP, aggregate, fmt, metric_info, quality_columns, records_frame,
                            render_table)

BASELINE_SCHEMA = 1
MACS_COLUMNS = (MACS_ALL, MACS_LINEAR)
# A baseline variant's entries: key -> (accepted types, what to call them in an error).
VARIANT_SHAPE = {"label": (str, "string"), "quality": (dict, "object"), "quality_tolerance": (dict, "object"),
                 "macs": (dict, "object"), "speedup": ((int, float, type(None)), "number or null")}
PAIRED_SHAPE = {"paired": (dict, "object"), "paired_tolerance": (dict, "object")}  # optional (older baselines lack them)


def variant_label(row: pd.Series) -> str:
    sampler = "" if row.get("sampler", "ddim") == "ddim" else f" {row['sampler']}"
    return f"{row['model']}@{row['resolution']} {row['method']}({row['params']}) steps={row['steps']}{sampler} " \
           f"{row['device']}/{row['dtype']}/bs={row['batch_size']}"


def _number(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


# ----------------------------------------------------------------------------------------
#                                      Baselines
# ----------------------------------------------------------------------------------------

def pooled_spread(measured: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """"model@res" -> metric -> seed-to-seed standard deviation pooled over variants (None without repeated seeds).

    The pool is the median of the variants' standard deviations: robust to a degenerate variant
    (e.g. a method pushed far past its useful range) whose spread would otherwise loosen every tolerance.
    """
    out: dict[str, dict[str, float | None]] = {}
    for (model, resolution), group in measured.groupby(["model", "resolution"], sort=True):
        spreads = {}
        repeated = group[group["n_seeds"] > 1]
        for col in quality_columns(group):
            stds = repeated[col + ":std"].dropna()
            spreads[col] = float(stds.median()) if len(stds) else None
        out[f"{model}@{resolution}"] = spreads
    return out


def make_baseline(suite: Suite, records: list[dict[str, Any]]) -> dict[str, Any]:
    """A baseline from records: per-variant means, MACs, speedups and spread-derived tolerances.

    Args:
        suite: the suite (its `check` section gives k, the floor and the speedup tolerance).
        records: the suite's current records (`tables.current_records`).
    """
    measured = aggregate(records_frame(records))
    if measured.empty:
        raise ValueError(f"no records of suite {suite.name!r} to make a baseline from")
    paired = paired_frame(records, measured)
    spread = pooled_spread(measured)
    columns = quality_columns(measured)
    variants = {}
    for index, row in measured.iterrows():
        group_spread = spread[f"{row['model']}@{row['resolution']}"]
        quality, tolerance = {}, {}
        for col in columns:
            if _number(row[col]) is None:
                continue
            quality[col] = float(row[col])
            sigma = group_spread.get(col)
            tolerance[col] = max(suite.check.quality_k * sigma, suite.check.quality_floor) if sigma is not None \
                else suite.check.quality_floor
        variants[row["variant_hash"]] = {
            "label": variant_label(row), "n_seeds": int(row["n_seeds"]), "quality": quality,
            "quality_tolerance": tolerance,
            "macs": {c: float(row[c]) for c in MACS_COLUMNS if c in row and _number(row[c]) is not None},
            "speedup": _number(row.get(SPEEDUP)),
            **paired_entries(paired.loc[index], suite.check.paired_k, suite.check.quality_floor),
        }
    return {
        "schema": BASELINE_SCHEMA, "suite": suite.name,
        "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "git_commit": next((r["provenance"].get("git_commit") for r in records), None),
        "tolerances": {"quality_k": suite.check.quality_k, "quality_floor": suite.check.quality_floor,
                       "speedup_tolerance": suite.check.speedup_tolerance, "paired_k": suite.check.paired_k},
        "spread": spread, "variants": dict(sorted(variants.items())),
    }


def paired_frame(records: list[dict[str, Any]], measured: pd.DataFrame) -> pd.DataFrame:
    """`measured` with the paired columns of `harness.comparisons` (same index)."""
    from harness.comparisons import paired_columns

    return paired_columns(records, measured)


def paired_gate_columns(row: pd.Series) -> list[str]:
    """The paired differences a variant is gated on: quality vs DDIM at the same steps, fidelity to full compute."""
    return [c for c in row.index if (c.startswith("paired.") or c.startswith("fidelity_ci.")) and ":" not in c
            and _number(row[c]) is not None]


def paired_entries(row: pd.Series, k: float, floor: float) -> dict[str, dict[str, float]]:
    """The variant's paired values and their tolerances (k x the 95% half-interval, at least `floor`)."""
    values, tolerance = {}, {}
    for col in paired_gate_columns(row):
        values[col] = float(row[col])
        low, high = _number(row.get(col + ":low")), _number(row.get(col + ":high"))
        half = (high - low) / 2 if low is not None and high is not None else 0.0
        tolerance[col] = max(k * half, floor)
    return {"paired": values, "paired_tolerance": tolerance} if values else {}


def write_baseline(path: str | os.PathLike, baseline: dict[str, Any]) -> Path:
    """Writes the baseline JSON atomically (sorted keys, so diffs stay small)."""
    return atomic_write_json(path, baseline)


def read_baseline(path: str | os.PathLike, suite: Suite) -> dict[str, Any]:
    """A baseline written by `write_baseline`; a malformed one raises one error naming the file and the entry."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"baseline {str(path)!r} does not exist; write one with "
                                f"`python -m harness check {suite.name} --baseline {path} --write-baseline`")
    try:
        baseline = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"baseline {str(path)!r} is not valid JSON ({err})") from None
    problem = baseline_problem(baseline)
    if problem:
        raise ValueError(f"baseline {str(path)!r} is malformed: {problem}; rewrite it with --write-baseline")
    if baseline["suite"] != suite.name:
        raise ValueError(f"baseline {str(path)!r} is for suite {baseline['suite']!r}, not {suite.name!r}")
    return baseline


def baseline_problem(baseline: Any) -> str | None:
    """What `compare` would trip over in a parsed baseline (None: nothing)."""
    if not isinstance(baseline, dict):
        return f"a JSON {type(baseline).__name__}, not an object"
    for key, kind in (("suite", str), ("tolerances", dict), ("variants", dict)):
        if not isinstance(baseline.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__}"
    if not isinstance(baseline["tolerances"].get("speedup_tolerance"), (int, float)):
        return "'tolerances.speedup_tolerance' is missing or not a number"
    for name, variant in baseline["variants"].items():
        if not isinstance(variant, dict):
            return f"variant {name!r} is not an object"
        for key, (kind, label) in VARIANT_SHAPE.items():
            if key not in variant or not isinstance(variant[key], kind):
                return f"variant {name!r}: {key!r} is missing or not a {label}"
        if set(variant["quality"]) - set(variant["quality_tolerance"]):
            return f"variant {name!r}: a quality metric has no tolerance"
        for key, (kind, label) in PAIRED_SHAPE.items():
            if key in variant and not isinstance(variant[key], kind):
                return f"variant {name!r}: {key!r} is not a {label}"
        if set(variant.get("paired", {})) - set(variant.get("paired_tolerance", {})):
            return f"variant {name!r}: a paired difference has no tolerance"
    return None


# ----------------------------------------------------------------------------------------
#                                       The gate
# ----------------------------------------------------------------------------------------

@dataclass
class Violation:
    variant: str
    check: str  # "quality", "paired", "macs", "speedup", "missing"
    metric: str
    baseline: str
    fresh: str
    allowed: str

    def row(self) -> dict[str, str]:
        return {"variant": self.variant, "check": self.check, "metric": self.metric, "baseline": self.baseline,
                "fresh": self.fresh, "allowed": self.allowed}


def compare(baseline: dict[str, Any], records: list[dict[str, Any]]) -> tuple[list[Violation], list[str]]:
    """Violations of the gate, and notes (variants that are new since the baseline).

    Args:
        baseline: a baseline from `make_baseline` / `read_baseline`.
        records: the fresh records of the same suite.
    """
    measured = aggregate(records_frame(records))
    measured = paired_frame(records, measured) if not measured.empty else measured
    fresh = {row["variant_hash"]: row for _, row in measured.iterrows()}
    speedup_tol = baseline["tolerances"]["speedup_tolerance"]
    violations, notes = [], []
    for key, base in baseline["variants"].items():
        row = fresh.get(key)
        if row is None:
            violations.append(Violation(base["label"], "missing", "-", "recorded", "no record", "a record"))
            continue
        violations += _quality_violations(base, row)
        violations += _paired_violations(base, row)
        for col, value in base["macs"].items():
            now = _number(row.get(col))
            if now != value:
                violations.append(Violation(base["label"], "macs", col, f"{value:.0f}",
                                            "—" if now is None else f"{now:.0f}", "exactly equal"))
        now, then = _number(row.get(SPEEDUP)), base.get("speedup")
        if then is not None and (now is None or now < then * (1 - speedup_tol)):
            violations.append(Violation(base["label"], "speedup", "speedup", fmt(then), fmt(now),
                                        f">= {fmt(then * (1 - speedup_tol))}"))
    for key, row in fresh.items():
        if key not in baseline["variants"]:
            notes.append(f"new variant not in the baseline (not gated): {variant_label(row)}")
    return violations, notes


def _quality_violations(base: dict[str, Any], row: pd.Series) -> list[Violation]:
    out = []
    for col, value in base["quality"].items():
        tol = base["quality_tolerance"][col]
        now = _number(row.get(col))
        if now is not None and abs(now - value) <= tol:
            continue
        info = metric_info(col)
        direction = ""
        if now is not None and info.higher_is_better is not None:
            direction = " (better)" if (now > value) == info.higher_is_better else " (worse)"
        out.append(Violation(base["label"], "quality", col, fmt(value), ("—" if now is None else fmt(now)) + direction,
                             f"± {fmt(tol)}"))
    return out


def _paired_violations(base: dict[str, Any], row: pd.Series) -> list[Violation]:
    out = []
    for col, value in base.get("paired", {}).items():
        tol = base["paired_tolerance"][col]
        now = _number(row.get(col))
        if now is not None and abs(now - value) <= tol:
            continue
        out.append(Violation(base["label"], "paired", col, fmt(value), "—" if now is None else fmt(now),
                             f"± {fmt(tol)}"))
    return out


def violations_table(violations: list[Violation]) -> str:
    return render_table(pd.DataFrame([v.row() for v in violations]), "markdown")
