"""Ranking at matched budgets: the Pareto frontier and "who wins" at each MACs and latency budget.

Budgets are the DDIM curve's own costs (the MACs and measured latency of each DDIM step budget), so a
row reads "with what DDIM-k costs, the best one can do is ...". The winner is the variant with the best
primary quality among those at or under the budget; its lead over the runner-up is a paired difference
(same seed sets) with its bootstrap interval, so a reader sees whether the ranking is resolved.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from harness.tables import FULL_COMPUTE, LATENCY, MACS_LINEAR, fmt, macs_unit, metric_info

BUDGET_AXES = {"macs": (MACS_LINEAR, "MACs budget (linear)"), "latency": (LATENCY, "latency budget p50 (s)")}
TOLERANCE = 1e-9  # relative: a cost equal to the budget is at the budget


def quality_of(table: pd.DataFrame, primary: str) -> pd.Series:
    """The primary quality per row: the bootstrap point (`ci.` column) where present, else the seed mean."""
    col, mean = f"ci.{primary}", f"quality.{primary}"
    if col in table and table[col].notna().any():
        return table[col]
    # A cost-only suite (perf-*) measures no quality: nothing to rank by.
    return table[mean] if mean in table else pd.Series(np.nan, index=table.index)


def pareto_marks(table: pd.DataFrame, primary: str) -> pd.Series:
    """Per row: "M" on the quality-vs-MACs frontier, "L" on the quality-vs-latency frontier ("ML" both, "" none)."""
    from harness.plots import pareto_front

    higher = bool(metric_info(primary).higher_is_better)
    y = quality_of(table, primary).to_numpy(float)
    marks = [""] * len(table)
    for tag, (x_col, _) in BUDGET_AXES.items():
        if x_col not in table:
            continue
        x = table[x_col].to_numpy(float)
        ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
        for i in ok[pareto_front(x[ok], y[ok], higher)]:
            marks[i] += tag[0].upper()
    return pd.Series(marks, index=table.index)


def who_wins(table: pd.DataFrame, primary: str, records: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """Display table: per budget of each axis, the best variant at or under it, its quality and lead.

    Args:
        table: one model and resolution's rows with `comparisons.paired_columns` (ci.* columns) or plain means.
        primary: the quality metric that ranks (e.g. "domain_fid").
        records: the suite's records, for the winner's paired lead over the runner-up (None: no lead column).
    """
    from harness.comparisons import pair_of_variants

    higher = bool(metric_info(primary).higher_is_better)
    quality = quality_of(table, primary)
    label = metric_info(primary).label
    rows = []
    for axis, (x_col, title) in BUDGET_AXES.items():
        if x_col not in table:
            continue
        ddim = table[(table["method"] == FULL_COMPUTE) & table[x_col].notna()].sort_values(x_col)
        unit, scale = macs_unit(table[x_col].dropna()) if axis == "macs" else ("s", 1.0)
        for _, budget_row in ddim.iterrows():
            budget = float(budget_row[x_col])
            fits = table[(table[x_col] <= budget * (1 + TOLERANCE)) & quality.notna()]
            if fits.empty:
                continue
            ranked = fits.assign(_q=quality[fits.index]).sort_values("_q", ascending=not higher, kind="stable")
            best = ranked.iloc[0]
            row = {"axis": axis, "budget": f"{fmt(budget / scale)} {unit if axis == 'macs' else 's'} (DDIM-{budget_row['steps']})",
                   "best": _variant_name(best), f"{label} [95% CI]": _with_ci(best, primary),
                   "cost": fmt(best[x_col] / scale)}
            if len(ranked) > 1:
                second = ranked.iloc[1]
                row["runner-up"] = _variant_name(second)
                lead = pair_of_variants(records, best["variant_hash"], second["variant_hash"], primary) \
                    if records else None
                row["lead over runner-up"] = ci_text(lead.value, lead.low, lead.high, lead.significant) \
                    if lead is not None and math.isfinite(lead.value) else "—"
            rows.append(row)
    return pd.DataFrame(rows).fillna("—")


def resolving_power(table: pd.DataFrame, primary: str, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Display table: can this suite's evaluation tell its cells apart?

    Rows: every DDIM budget minus the largest (paired, same seed sets: the step-budget curve resolved or
    not), then the spread a reader must compare differences with: the seed-to-seed standard deviation of
    the absolute metric (suites with several seed sets), the typical paired 95% half-width and size of the
    methods' differences to DDIM at the same steps, and how many of those differences are resolved.

    Args:
        table: one model and resolution's rows with `comparisons.paired_columns`.
        primary: the quality metric (e.g. "domain_fid").
        records: the suite's records (the DDIM cells' replicates).
    """
    from harness.comparisons import difference, samples_by_variant

    label = metric_info(primary).label
    value_col = f"{label} [95% CI]"
    samples = samples_by_variant(records, "quality", primary)
    rows = []
    ddim = table[table["method"] == FULL_COMPUTE]
    ddim = ddim.assign(_steps=pd.to_numeric(ddim["steps"], errors="coerce")).dropna(subset=["_steps"]).sort_values("_steps")
    if len(ddim) > 1:
        top = ddim.iloc[-1]
        for _, row in ddim.iloc[:-1].iterrows():
            est = difference(samples.get(row["variant_hash"], []), samples.get(top["variant_hash"], []))
            rows.append({"quantity": f"DDIM-{row['steps']} − DDIM-{top['steps']} (paired)",
                         value_col: ci_text(est.value, est.low, est.high, est.significant, signed=True)})
    spread = table.get(f"quality.{primary}:std")
    if spread is not None and spread.notna().any():
        rows.append({"quantity": f"seed-to-seed SD of {label} (median over variants, {int(table['n_seeds'].max())} seed sets)",
                     value_col: fmt(float(spread.median()))})
    col = f"paired.{primary}"
    methods = table[(table["method"] != FULL_COMPUTE) & table[col].notna()] if col in table else table.iloc[0:0]
    if len(methods):
        half = (methods[col + ":high"] - methods[col + ":low"]) / 2
        rows += [{"quantity": "paired 95% half-width, method − DDIM same steps (median over method rows)",
                  value_col: fmt(float(half.median()))},
                 {"quantity": "absolute method − DDIM same steps (median over method rows)", value_col: fmt(float(methods[col].abs().median()))},
                 {"quantity": "method rows resolved from DDIM at the same steps",
                  value_col: f"{int(methods[col + ':sig'].sum())} of {len(methods)}"}]
    return pd.DataFrame(rows)


def _variant_name(row: pd.Series) -> str:
    params = "" if row["params"] == "-" else f" {row['params']}"
    return f"{row['method']}-{row['steps']}{params}"


def _with_ci(row: pd.Series, primary: str) -> str:
    col = f"ci.{primary}"
    if col in row and math.isfinite(row.get(col, math.nan)):
        return ci_text(row[col], row[col + ":low"], row[col + ":high"])
    return fmt(row[f"quality.{primary}"])


def ci_text(value: float, low: float, high: float, significant: bool | None = None, signed: bool = False) -> str:
    """"90.1 [88.0, 92.3]", with a trailing "*" when `significant` (the interval excludes zero)."""
    if value is None or not math.isfinite(value):
        return "—"
    show = (lambda v: ("+" if v > 0 else "") + fmt(v)) if signed else fmt
    body = show(value) if not (math.isfinite(low) and math.isfinite(high)) else f"{show(value)} [{show(low)}, {show(high)}]"
    return body + ("*" if significant else "")
