"""Pareto plots: quality vs MACs and quality vs latency, one PNG per model and resolution.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch),
and writes PNGs without a timestamp so the same records give the same bytes.
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.tables import FULL_COMPUTE, LATENCY, MACS_LINEAR, macs_unit, metric_info, section_file_stem, section_groups

TITLES = {"macs": "MACs", "latency": "latency"}
LOG_SCALE_RATIO = 5.0  # quality spanning more than this factor is drawn on a log axis
AXES = {"macs": (MACS_LINEAR, "MACs per image (linear layers, no CFG doubling)"),
        "latency": (LATENCY, "latency p50 (s)")}
# One hollow marker shape per method row, shrinking from row to row: rows with equal values stay visible, nested.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
# One colour per method (DDIM first), so a method's settings read as one family; the legend names methods.
COLORS = ("#222222", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
          "#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78")


def pareto_front(x: np.ndarray, y: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Indices of the points no other point beats on both cost (x, lower) and quality (y), by cost."""
    order = np.lexsort((-y if higher_is_better else y, x))
    front, best = [], None
    for i in order:
        if best is None or (y[i] > best if higher_is_better else y[i] < best):
            front.append(i)
            best = y[i]
    return np.asarray(front, dtype=int)


def pareto_png(table: pd.DataFrame, axis: str, primary: str, title: str) -> bytes | None:
    """One Pareto plot as PNG bytes; None when the table lacks the cost or the quality column."""
    fig = pareto_figure(table, axis, primary, title)
    if fig is None:
        return None
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def pareto_figure(table: pd.DataFrame, axis: str, primary: str, title: str) -> Figure | None:
    """The Pareto plot of `pareto_png` as a figure: one colour per method, each setting with its own hollow
    marker (and, where the table has `paired.` columns, the 95% interval of its paired difference to DDIM at
    the same steps as an error bar), a method's settings
    joined by cost, DDIM's step budgets annotated, the Pareto front in grey with its points marked."""
    x_col, x_label = AXES[axis]
    y_col = f"quality.{primary}"
    if x_col not in table or y_col not in table:
        return None
    # Error bars: the paired interval of the setting's difference to DDIM at the same steps, drawn around its
    # value (absolute intervals are as wide as the seed-to-seed spread and would hide every difference).
    ci = [f"paired.{primary}", f"paired.{primary}:low", f"paired.{primary}:high"]
    data = table[[x_col, y_col, "method", "params", "steps", *[c for c in ci if c in table]]].dropna(subset=[x_col, y_col])
    if data.empty:
        return None
    scale, unit = 1.0, ""
    if axis == "macs":
        unit, scale = macs_unit(data[x_col])
        x_label = x_label.replace("MACs", unit)
    info = metric_info(primary)
    fig = Figure(figsize=(8.4, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    methods = sorted(data["method"].unique(), key=lambda m: (m != FULL_COMPUTE, m))
    colors = {m: COLORS[k % len(COLORS)] for k, m in enumerate(methods)}
    labelled = set()
    for i, ((method, params), group) in enumerate(data.groupby(["method", "params"], sort=True)):
        group = group.sort_values(x_col)
        ax.plot(group[x_col] / scale, group[y_col], "-" if method == FULL_COMPUTE else "none", color=colors[method],
                label=None if method in labelled else method, marker=MARKERS[i % len(MARKERS)],
                markersize=max(11 - 1.5 * (i % len(MARKERS)), 4), fillstyle="none", markeredgewidth=1.2)
        labelled.add(method)
        if all(c in group for c in ci) and method != FULL_COMPUTE:
            diff, low, high = (group[c].to_numpy(float) for c in ci)
            y = group[y_col].to_numpy(float)
            yerr = np.vstack([np.clip(diff - low, 0, None), np.clip(high - diff, 0, None)])
            ax.errorbar(group[x_col] / scale, y, yerr=np.nan_to_num(yerr), fmt="none", ecolor=colors[method],
                        elinewidth=0.8, capsize=2, alpha=0.8)
        if method == FULL_COMPUTE:  # the step budgets along the DDIM curve
            for _, row in group.iterrows():
                ax.annotate(str(row["steps"]), (row[x_col] / scale, row[y_col]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
    for method in methods[1:]:  # a method's settings as one curve, by cost
        points = data[data["method"] == method].sort_values(x_col)
        if len(points) > 1:
            ax.plot(points[x_col] / scale, points[y_col], ":", color=colors[method], linewidth=1, alpha=0.7)
    x, y = data[x_col].to_numpy(float), data[y_col].to_numpy(float)
    front = pareto_front(x, y, bool(info.higher_is_better))
    ax.step(x[front] / scale, y[front], where="post", color="0.5", linewidth=1, alpha=0.6, label="Pareto front")
    ax.plot(x[front] / scale, y[front], "o", color="0.3", markersize=3)  # the front's settings, one legend entry
    arrow = {True: " (higher is better)", False: " (lower is better)", None: ""}[info.higher_is_better]
    ddim = data.loc[data["method"] == FULL_COMPUTE, y_col].to_numpy(float)
    off = _clip_to_ddim_range(ax, y, ddim, info.higher_is_better)
    if off:
        ax.text(0.99, 0.98, f"{off} setting(s) off the chart", transform=ax.transAxes, ha="right", va="top", fontsize=7)
    elif y.min() > 0 and y.max() / y.min() > LOG_SCALE_RATIO:
        ax.set_yscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(info.label + arrow)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def _clip_to_ddim_range(ax, y: np.ndarray, ddim: np.ndarray, higher_is_better: bool | None) -> int:
    """Limits the quality axis to the DDIM curve's range widened by half of it, so that a broken setting does not
    flatten the rest; returns how many points fall outside (0: nothing clipped, limits left alone)."""
    if len(ddim) < 2 or higher_is_better is None:
        return 0
    span = ddim.max() - ddim.min()
    lo, hi = ddim.min() - 0.5 * span, ddim.max() + 0.5 * span
    outside = int(((y < lo) if higher_is_better else (y > hi)).sum())
    if outside:
        inside = y[(y >= lo) if higher_is_better else (y <= hi)]
        if higher_is_better:
            ax.set_ylim(lo, max(inside.max(), ddim.max()) + 0.05 * span)
        else:
            ax.set_ylim(min(inside.min(), ddim.min()) - 0.05 * span, hi)
    return outside


def suite_plots(measured: pd.DataFrame, primary: str, suite_name: str, records: list | None = None) -> dict[str, bytes]:
    """File name -> PNG bytes: pareto-<model>-<res>-{macs,latency}.png for each model and resolution.

    With the suite's records, each method setting carries the 95% interval of its paired difference to DDIM
    at the same steps as an error bar around its value.
    """
    files = {}
    for (model, resolution), table in section_groups(measured):
        if records:
            from harness.comparisons import paired_columns

            table = paired_columns(records, table)
        for axis in AXES:
            png = pareto_png(table, axis, primary, f"{suite_name}: {model} @ {resolution}px, quality vs {TITLES[axis]}")
            if png is not None:
                files[f"pareto-{section_file_stem(model, resolution)}-{axis}.png"] = png
    return files
