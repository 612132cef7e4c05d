"""Tables from records: leaderboards, matched-budget comparisons, paper vs measured.

Records -> one flat row per record (`records_frame`) -> one row per (method, steps,
parameters) aggregated over seed sets (`aggregate`) -> display tables, all rendered by
`render_table` to Markdown, LaTeX or CSV. Arrows say whether higher or lower is better,
"±" the seed-to-seed spread; regeneration from the same records is byte-identical.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from tabulate import tabulate

from harness.cache import atomic_write_bytes
from harness.devices import is_program_device
from harness.suite import Suite, slug

PUBLISHED_CSV = Path(__file__).resolve().parent / "reference" / "published_results.csv"
FULL_COMPUTE = "ddim"
MACS_ALL, MACS_LINEAR = "macs.macs_all_per_image", "macs.macs_linear_per_image"  # conventions (a), (b)
LATENCY, SPEEDUP, LAZY, LAZY_TARGET = "latency.median_s", "latency.speedup", "laziness.all", "laziness.target"
SETUP_KEYS = ["model", "resolution", "device", "dtype", "batch_size", "sampler"]  # rows compared with each other
# A method row is compared with the DDIM curve of the same setup at any batch size: DDIM's images do not depend
# on it (batch-invariant sampling), while a batch-coupled method's batch is part of its setting.
CURVE_KEYS = [k for k in SETUP_KEYS if k != "batch_size"]
GROUP_KEYS = SETUP_KEYS + ["method", "params", "steps"]
TIMED_IMPLIED = "latency.macs_implied_speedup"  # from the timed run's own decision log


@dataclass(frozen=True)
class MetricInfo:
    label: str
    higher_is_better: bool | None  # None: no direction
    shown: bool = True  # False: bookkeeping values (sample counts, KID's std), not tabled or gated
    on_board: bool = True  # False: kept in the CSV and gated, left out of the Markdown / LaTeX leaderboards


# Quality / fidelity metric names (as evaluators return them) -> label and direction.
METRICS = {
    "fid": MetricInfo("FID", False), "sfid": MetricInfo("sFID", False), "kid": MetricInfo("KID", False),
    "is": MetricInfo("IS", True), "precision": MetricInfo("precision", True), "recall": MetricInfo("recall", True),
    "accuracy": MetricInfo("cond. acc.", True), "psnr": MetricInfo("PSNR", True), "ssim": MetricInfo("SSIM", True),
    "latent_mse": MetricInfo("latent MSE", False, on_board=False),
    "domain_fid": MetricInfo("domain FID", False), "domain_kid_mean": MetricInfo("domain KID", False, on_board=False),
    "domain_kid": MetricInfo("domain KID", False), "psnr_capped": MetricInfo("PSNR (capped)", True, on_board=False),
    "domain_feature_distance": MetricInfo("feature dist.", False, on_board=False),
    "domain_precision": MetricInfo("domain precision", True), "domain_recall": MetricInfo("domain recall", True),
    "domain_f_score": MetricInfo("domain F", True, on_board=False),
    "domain_class_accuracy": MetricInfo("cond. acc.", True),
    "is_mean": MetricInfo("IS", True), "kid_mean": MetricInfo("KID", False),
    **{name: MetricInfo(name, None, shown=False) for name in (
        "domain_kid_std", "domain_num_samples", "domain_num_reference", "is_std", "kid_std", "num_samples", "num_reference", "psnr_std",
        "ssim_std", "identical_images")},
}
ARROWS = {True: " ↑", False: " ↓", None: ""}


def metric_info(name: str) -> MetricInfo:
    return METRICS.get(name.split(".")[-1], MetricInfo(name.split(".")[-1], None))


def quality_columns(frame: pd.DataFrame) -> list[str]:
    """The shown quality and fidelity columns of a frame (bookkeeping values left out)."""
    return [c for c in frame.columns if c.startswith(("quality.", "fidelity.")) and ":" not in c
            and metric_info(c).shown]


def header(name: str) -> str:
    info = metric_info(name)
    return info.label + ARROWS[info.higher_is_better]


# ----------------------------------------------------------------------------------------
#                                 Records -> data frames
# ----------------------------------------------------------------------------------------

def params_label(args: dict[str, Any]) -> str:
    """Method arguments as "k=v" text; paths shown by file name."""
    def show(v: Any) -> str:
        return Path(v).name if isinstance(v, str) and ("/" in v or v.endswith((".pt", ".pth"))) else str(v)
    return " ".join(f"{k}={show(v)}" for k, v in sorted(args.items())) or "-"


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """One record -> one flat row: axes, then metrics as "<group>.<name>" numbers."""
    cell, metrics = record["cell"], record["metrics"]
    row = {"model": cell["model"], "resolution": record["model_info"]["image_size"], "device": device_label(cell),
           "dtype": cell["dtype"], "batch_size": cell["batch_size"], "sampler": sampler_label(cell),
           "method": cell["method"],
           "params": params_label(cell["method_args"]), "steps": cell["steps"], "seed": cell["seed"],
           "variant_hash": record["variant_hash"], "config_hash": record["config_hash"]}
    for group in ("quality", "fidelity", "macs", "laziness"):
        for name, value in (metrics.get(group) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) or value is None:
                row[f"{group}.{name}"] = np.nan if value is None else float(value)
    latency = metrics.get("latency") or {}
    for name in ("median_s", "p10_s", "p90_s", "speedup", "macs_implied_speedup"):
        if name in latency:
            row[f"latency.{name}"] = float(latency[name])
    return row


def device_label(cell: dict[str, Any]) -> str:
    """The device with the execution mode and thread count where not the defaults: "cuda", "cuda/compile",
    "cpu/threads=1" (rows of different modes are different setups, compared with their own DDIM curve)."""
    parts = [cell["device"]]
    if cell.get("mode", "eager") != "eager":
        parts.append(cell["mode"])
    if cell.get("threads") is not None:
        parts.append(f"threads={cell['threads']}")
    return "/".join(parts)


def sampler_label(cell: dict[str, Any]) -> str:
    """"ddim", "ddim(eta=0.5)" or "ddpm" (records from before the sampler axis are DDIM, eta 0)."""
    sampler, eta = cell.get("sampler", "ddim"), float(cell.get("eta", 0.0))
    return f"ddim(eta={eta:g})" if sampler == "ddim" and eta else sampler


def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    rows = [flatten(r) for r in records]
    return pd.DataFrame(rows)


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per variant (cells differing only in seed set): mean, "<col>:std" and n_seeds."""
    if frame.empty:
        return frame
    frame = frame.assign(steps_key=frame["steps"].map(_steps_key))
    numeric = sorted(c for c in frame.columns if "." in c)  # column order must not depend on record order
    keys = GROUP_KEYS + ["variant_hash", "steps_key"]
    grouped = frame.groupby(keys, sort=False, dropna=False)
    mean = grouped[numeric].mean()
    std = grouped[numeric].std(ddof=1).add_suffix(":std")
    out = pd.concat([mean, std], axis=1).reset_index()
    out["n_seeds"] = grouped.size().to_numpy()
    metric_cols = [c for col in numeric for c in (col, col + ":std")]
    out = out[keys + ["n_seeds"] + metric_cols]
    order = out["method"].map(lambda m: (m != FULL_COMPUTE, m))
    out = out.assign(_order=order).sort_values([*SETUP_KEYS, "_order", "params", "steps_key", "variant_hash"],
                                               ascending=[True] * (len(SETUP_KEYS) + 2) + [False, True], kind="stable")
    return out.drop(columns=["_order"]).reset_index(drop=True)


def _steps_key(steps: Any) -> int:
    text = str(steps)
    digits = "".join(ch for ch in text.split(",")[0] if ch.isdigit())
    return sum(int(x) for x in text.split(",")) if "," in text else int(digits or 0)


# ----------------------------------------------------------------------------------------
#                                   Matched budgets
# ----------------------------------------------------------------------------------------

def ddim_curve_at(ddim: pd.DataFrame, x_col: str, y_col: str, x: float) -> float:
    """The DDIM step-count curve's quality interpolated at cost x (NaN outside the measured range)."""
    points = ddim[[x_col, y_col]].dropna().groupby(x_col)[y_col].mean().sort_index()
    if len(points) == 0 or not np.isfinite(x) or x < points.index[0] or x > points.index[-1]:
        return math.nan
    return float(np.interp(x, points.index.to_numpy(), points.to_numpy()))


def add_macs_implied(table: pd.DataFrame) -> pd.DataFrame:
    """Adds the MACs-implied speedup over full compute and the measured share of it.

    The implied speedup is the timed run's own (its decision log's full-compute MACs over its
    MACs, convention (a)) where the record has it, else full DDIM's MACs at the same steps over the cell's.
    """
    table = table.copy()
    implied = []
    for _, row in table.iterrows():
        if row["method"] != FULL_COMPUTE and TIMED_IMPLIED in table and np.isfinite(row[TIMED_IMPLIED]):
            implied.append(row[TIMED_IMPLIED])
            continue
        same = table[(table[CURVE_KEYS] == row[CURVE_KEYS]).all(axis=1) & (table["method"] == FULL_COMPUTE)
                     & (table["steps"] == row["steps"])]
        ok = row["method"] != FULL_COMPUTE and MACS_ALL in table and len(same) >= 1
        implied.append(same[MACS_ALL].iloc[0] / row[MACS_ALL] if ok else math.nan)
    table["macs_implied.speedup"] = implied
    if SPEEDUP in table:
        table["macs_implied.share"] = table[SPEEDUP] / table["macs_implied.speedup"]
    return table


def add_matched_budget(table: pd.DataFrame, primary: str) -> pd.DataFrame:
    """Adds DDIM quality at the method's MACs and latency, and the method's gain over it (positive = better)."""
    table = table.copy()
    y = f"quality.{primary}"
    sign = 1.0 if metric_info(primary).higher_is_better is not False else -1.0
    for x_col, tag in ((MACS_LINEAR, "macs"), (LATENCY, "latency")):
        at, gain = [], []
        for _, row in table.iterrows():
            same = table[(table[CURVE_KEYS] == row[CURVE_KEYS]).all(axis=1) & (table["method"] == FULL_COMPUTE)]
            if row["method"] == FULL_COMPUTE or y not in table or x_col not in table:
                at.append(math.nan)
                gain.append(math.nan)
                continue
            value = ddim_curve_at(same, x_col, y, row[x_col])
            at.append(value)
            gain.append(sign * (row[y] - value))
        table[f"matched.{tag}.ddim"] = at
        table[f"matched.{tag}.gain"] = gain
    return table


# ----------------------------------------------------------------------------------------
#                                      Formatting
# ----------------------------------------------------------------------------------------

def fmt(value: Any, spread: Any = None, digits: int = 3) -> str:
    """A number with ~`digits` significant digits, "± spread" when given; "—" when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if spread is not None and isinstance(spread, float) and math.isfinite(spread) and spread > 0:
        spread_text = _num(spread, 2)
        decimals = len(spread_text.split(".")[1]) if "." in spread_text else 0
        return f"{float(value):.{decimals}f} ± {spread_text}"
    return _num(float(value), digits)


def _num(x: float, digits: int) -> str:
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))
    return f"{x:.{min(decimals, 6)}f}"


def macs_unit(values: Iterable[float]) -> tuple[str, float]:
    peak = max([abs(v) for v in values if np.isfinite(v)], default=0.0)
    for unit, scale in (("TMACs", 1e12), ("GMACs", 1e9), ("MMACs", 1e6)):
        if peak >= scale:
            return unit, scale
    return "MACs", 1.0


def with_comparisons(table: pd.DataFrame, primary: str) -> pd.DataFrame:
    """`aggregate(...)` rows of one model and resolution plus the matched-budget and MACs-implied columns."""
    return add_macs_implied(add_matched_budget(table, primary))


def leaderboard(table: pd.DataFrame, primary: str) -> pd.DataFrame:
    """The display table of one model and resolution (strings, headers with arrows).

    Args:
        table: `aggregate(...)` rows of one model and resolution.
        primary: the quality metric of the matched-budget columns (e.g. "fid", "domain_fid").
    """
    return display_table(with_comparisons(table, primary), primary)


def display_table(table: pd.DataFrame, primary: str) -> pd.DataFrame:
    """`leaderboard` of a table that already has `with_comparisons`' columns."""
    quality = [c for c in quality_columns(table) if metric_info(c).on_board]
    quality.sort(key=lambda c: (c.split(".")[0] != "quality", c.split(".")[-1] != primary, c))
    unit, scale = macs_unit(list(table.get(MACS_ALL, [])) + list(table.get(MACS_LINEAR, [])))
    varying = [k for k in SETUP_KEYS[2:] if table[k].nunique() > 1]
    out = pd.DataFrame({"method": table["method"], "steps": table["steps"].astype(str), "params": table["params"]})
    for key in varying:
        out[key] = table[key].astype(str)
    for col in quality:
        out[header(col)] = [fmt(m, s) for m, s in zip(table[col], table.get(col + ":std", [None] * len(table)))]
    label = metric_info(primary).label
    columns = [
        (MACS_ALL, f"{unit}/img all+CFG ↓", lambda v: fmt(v / scale)),
        (MACS_LINEAR, f"{unit}/img linear ↓", lambda v: fmt(v / scale)),
        (LATENCY, "latency p50 (s) ↓", fmt),
        (SPEEDUP, "speedup ↑", lambda v: fmt(v) + "×" if np.isfinite(v) else "—"),
        ("macs_implied.speedup", "MACs-implied speedup", lambda v: fmt(v) + "×" if np.isfinite(v) else "—"),
        ("macs_implied.share", "speedup / MACs-implied ↑", fmt),
        (LAZY, "lazy % ↑", lambda v: fmt(100 * v)),
        (LAZY_TARGET, "lazy target %", lambda v: fmt(100 * v)),
        ("matched.macs.ddim", f"DDIM {label} @MACs", fmt),
        ("matched.macs.gain", "gain @MACs ↑", fmt),
        ("matched.latency.ddim", f"DDIM {label} @latency", fmt),
        ("matched.latency.gain", "gain @latency ↑", fmt),
    ]
    for col, title, show in columns:
        if col in table:
            out[title] = [show(v) for v in table[col]]
    return add_paired_display(out, table, primary).reset_index(drop=True)


def add_paired_display(out: pd.DataFrame, table: pd.DataFrame, primary: str) -> pd.DataFrame:
    """Columns from `comparisons.paired_columns`, where the records carried replicates: the primary metric
    with its 95% interval, its paired difference to DDIM at the same steps, the DDIM-curve gains at matched
    MACs / latency (replacing the interval-less ones), the feature distance to full compute, Pareto marks."""
    from harness.rankings import ci_text, pareto_marks

    if f"ci.{primary}" not in table or table[f"ci.{primary}"].isna().all():
        return out
    label = metric_info(primary).label

    def shown(col: str, signed: bool = False, significance: bool = False) -> list[str]:
        return [ci_text(r.get(col, math.nan), r.get(col + ":low", math.nan), r.get(col + ":high", math.nan),
                        bool(r.get(col + ":sig", 0) == 1) if significance else None, signed)
                for _, r in table.iterrows()]

    out.insert(3, f"{label} [95% CI]", shown(f"ci.{primary}"))
    paired = {f"paired.{primary}": f"Δ{label} vs DDIM same steps",
              "paired.domain_class_accuracy": "Δcond. acc. vs DDIM same steps",
              f"gain.macs.{primary}": "gain @MACs ↑", f"gain.latency.{primary}": "gain @latency ↑"}
    for col, title in paired.items():
        if col in table and table[col].notna().any():
            out[title] = shown(col, signed=True, significance=True)
    if "fidelity_ci.domain_feature_distance" in table:
        out["feature dist. to full compute ↓"] = shown("fidelity_ci.domain_feature_distance")
    out["Pareto"] = pareto_marks(table, primary).to_numpy()
    return out


# ----------------------------------------------------------------------------------------
#                                  The one renderer
# ----------------------------------------------------------------------------------------

LATEX_SYMBOLS = {"↑": r"$\uparrow$", "↓": r"$\downarrow$", "±": r"$\pm$", "×": r"$\times$", "—": "--", "Δ": r"$\Delta$"}
LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "#": r"\#", "_": r"\_", "$": r"\$",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def latex_text(text: str) -> str:
    out = "".join(LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    for symbol, latex in LATEX_SYMBOLS.items():
        out = out.replace(symbol, latex)
    return out


def render_table(table: pd.DataFrame, fmt_name: str) -> str:
    """Renders a display table as "markdown", "latex" or "csv" (every table goes through here)."""
    if fmt_name == "csv":
        return table.to_csv(index=False, float_format="%.6g", lineterminator="\n")
    rows = table.astype(str).values.tolist()
    headers = [str(c) for c in table.columns]
    if fmt_name == "markdown":
        return tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True) + "\n"
    if fmt_name == "latex":
        rows = [[latex_text(v) for v in row] for row in rows]
        return tabulate(rows, headers=[latex_text(h) for h in headers], tablefmt="latex_raw",
                        disable_numparse=True) + "\n"
    raise ValueError(f"unknown table format {fmt_name!r}; accepted: markdown, latex, csv")


# ----------------------------------------------------------------------------------------
#                               Paper vs measured
# ----------------------------------------------------------------------------------------

PAPER_METRICS = {"fid": "fid", "sfid": "sfid", "is": "is_mean", "precision": "precision", "recall": "recall"}
LAZY_MATCH = 0.05  # a measured lazy ratio matches a published one within 5 points


def published_results(sources: Iterable[str] = ()) -> pd.DataFrame:
    """Rows of the shipped published_results.csv, optionally only from the given sources."""
    frame = pd.read_csv(PUBLISHED_CSV)
    sources = list(sources)
    if sources:
        unknown = sorted(set(sources) - set(frame["source"]))
        if unknown:
            raise ValueError(f"unknown paper source {unknown[0]!r}; accepted: {', '.join(sorted(set(frame['source'])))}")
        frame = frame[frame["source"].isin(sources)]
    return frame.reset_index(drop=True)


def paper_vs_measured(measured: pd.DataFrame, sources: Iterable[str]) -> pd.DataFrame:
    """Published rows next to the measured variant of the same model, resolution, method, steps and lazy ratio.

    Rows of models and resolutions that were not measured are left out; a lazy-method row
    matches the measured variant whose achieved lazy ratio is within `LAZY_MATCH` of the paper's.
    """
    rows = []
    published = published_results(sources)
    if measured.empty:
        return pd.DataFrame()
    shown = {(str(m).lower(), int(r)) for m, r in zip(measured["model"], measured["resolution"])}
    for _, paper in published.iterrows():
        if (str(paper["model"]).lower(), int(paper["resolution"])) not in shown:
            continue  # only the models and resolutions this suite measured
        match = _match_measured(measured, paper)
        row = {"source": paper["source"], "model": paper["model"], "res": str(paper["resolution"]),
               "method": paper["method"], "steps": str(paper["steps"]),
               "lazy % (paper / ours)": f"{fmt(100 * paper['lazy_ratio'])} / "
                                        f"{fmt(100 * match[LAZY]) if match is not None and LAZY in match else '—'}"}
        for name, key in PAPER_METRICS.items():
            ours = match.get(f"quality.{key}", math.nan) if match is not None else math.nan
            if name in ("precision", "recall"):
                ours = 100 * ours
            row[f"{header(name)} paper"] = fmt(paper[name])
            row[f"{header(name)} ours"] = fmt(ours)
        ours_tmacs = match.get(MACS_LINEAR, math.nan) / 1e12 if match is not None else math.nan
        row["TMACs paper"] = fmt(paper["tmacs_per_image"])
        row["TMACs ours"] = fmt(ours_tmacs)
        rows.append(row)
    return pd.DataFrame(rows)


def _match_measured(measured: pd.DataFrame, paper: pd.Series) -> pd.Series | None:
    same = measured[(measured["model"].str.lower() == str(paper["model"]).lower())
                    & (measured["resolution"] == int(paper["resolution"])) & (measured["method"] == paper["method"])
                    & (measured["steps"].astype(str) == str(paper["steps"]))]
    if np.isfinite(paper["lazy_ratio"]) and LAZY in same:
        distance = (same[LAZY] - paper["lazy_ratio"]).abs()
        same = same[distance <= LAZY_MATCH].assign(_d=distance).sort_values("_d", kind="stable")
    return None if same.empty else same.iloc[0]


# ----------------------------------------------------------------------------------------
#                                Files of a suite
# ----------------------------------------------------------------------------------------

def suite_tables(suite: Suite, measured: pd.DataFrame, records: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """File name -> content of every table of a suite (leaderboards in three formats, paper vs measured).

    Args:
        suite: the parsed suite.
        measured: `aggregate(records_frame(records))` of its current records.
        records: those records, for paired differences, the real-data floor and who-wins tables (None: without).
    """
    md, tex, csv_parts = [f"# {suite.name}: leaderboard\n", suite.description + "\n" if suite.description else ""], [], []
    for (model, resolution), table in section_groups(measured):
        full, shown, wins, power = section_tables(table, suite.primary_metric, records)
        title = f"{model} @ {resolution}px"
        md.append(f"\n## {title}\n\n{render_table(shown, 'markdown')}{ranking_sections(title, wins, power)}")
        tex.append(f"% {title}\n{render_table(shown, 'latex')}")
        csv_parts.append(full)
    md.append(f"\n{LEGEND}\n")
    if records:
        md.append(f"\n{PAIRED_LEGEND}\n")
    files = {"leaderboard.md": "".join(md), "leaderboard.tex": "\n".join(tex),
             "leaderboard.csv": render_table(pd.concat(csv_parts) if csv_parts else measured, "csv")}
    if len(suite.devices) > 1 or any(is_program_device(d) for d in suite.devices):
        by_device = latency_by_device(measured, suite.paper_sources)
        files["latency_by_device.md"] = (f"# {suite.name}: latency per device\n\n{render_table(by_device, 'markdown')}"
                                         f"\n{DEVICE_LEGEND}\n")
    if suite.paper_sources:
        paper = paper_vs_measured(measured, suite.paper_sources)
        body = render_table(paper, "markdown") if not paper.empty else "No measured model and resolution appears in the sources.\n"
        files["paper_vs_measured.md"] = f"# {suite.name}: paper vs measured ({', '.join(suite.paper_sources)})\n\n{body}"
        files["paper_vs_measured.csv"] = render_table(paper, "csv")
    return files


def latency_by_device(measured: pd.DataFrame, sources: Iterable[str] = ()) -> pd.DataFrame:
    """Median latency and speedup over DDIM (same steps, same cell) per device, one row per variant; below them,
    the published rows of `sources` that report a latency (the LazyDiT paper's phone figures), with the speedup
    over the same source's DDIM at the same steps."""
    rows = []
    if not measured.empty:
        keys = ["model", "resolution", "method", "params", "steps"]
        for key, group in measured.groupby(keys, sort=False, dropna=False):
            row = {"source": "measured", **dict(zip(keys, map(str, key)))}
            for _, r in group.iterrows():
                row[f"{r['device']} p50 (s) ↓"] = fmt(r.get(LATENCY, math.nan))
                row[f"{r['device']} speedup ↑"] = fmt(r.get(SPEEDUP, math.nan))
            rows.append(row)
    published = published_results(sources) if sources else pd.DataFrame()
    timed = published[published["latency_s"].notna()] if not published.empty else published
    for _, paper in timed.iterrows():
        ddim = timed[(timed["source"] == paper["source"]) & (timed["method"] == FULL_COMPUTE)
                     & (timed["steps"] == paper["steps"]) & (timed["model"] == paper["model"])
                     & (timed["resolution"] == paper["resolution"])]
        speedup = ddim["latency_s"].iloc[0] / paper["latency_s"] if len(ddim) else math.nan
        lazy = f" lazy={fmt(paper['lazy_ratio'])}" if np.isfinite(paper["lazy_ratio"]) else ""
        rows.append({"source": f"{paper['source']} ({paper['latency_device']})", "model": paper["model"],
                     "resolution": str(paper["resolution"]), "method": paper["method"], "params": lazy.strip() or "-",
                     "steps": str(paper["steps"]), "paper p50 (s) ↓": fmt(paper["latency_s"]),
                     "paper speedup ↑": fmt(speedup)})
    return pd.DataFrame(rows).fillna("—")


def section_tables(table: pd.DataFrame, primary: str, records: list[dict[str, Any]] | None
                   ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    """One model and resolution: the full numeric table, its display table (floor row first where the records
    have one), the who-wins table and the resolving-power table (both None without records)."""
    full = with_comparisons(table, primary)
    if not records:
        return full, display_table(full, primary), None, None
    from harness.comparisons import paired_columns
    from harness.rankings import resolving_power, who_wins

    full = paired_columns(records, full)
    shown = display_table(full, primary)
    return (full, with_floor_rows(shown, table, records, primary), who_wins(full, primary, records),
            resolving_power(full, primary, records))


def ranking_sections(heading: str, wins: pd.DataFrame | None, power: pd.DataFrame | None) -> str:
    """The who-wins and resolving-power tables of one section as Markdown sub-sections ("" for those missing)."""
    parts = [f"\n### {heading}: {name}\n\n{render_table(frame, 'markdown')}"
             for name, frame in (("who wins at each budget", wins), ("resolving power", power))
             if frame is not None and not frame.empty]
    return "".join(parts)


def with_floor_rows(shown: pd.DataFrame, table: pd.DataFrame, records: list[dict[str, Any]], primary: str) -> pd.DataFrame:
    """The real-data floor (`quality.floor` of the full-compute records) as the display table's first rows."""
    from harness.comparisons import floor_estimates
    from harness.rankings import ci_text

    rows = []
    for (model, resolution, device, n), metrics in floor_estimates(records).items():
        if model != table["model"].iloc[0] or resolution != table["resolution"].iloc[0] or primary not in metrics:
            continue
        row = {c: "—" for c in shown.columns}
        row.update({"method": "real data (floor)", "steps": "—", "params": f"{n} real digits per seed set"})
        est = metrics[primary]
        row[f"{metric_info(primary).label} [95% CI]"] = ci_text(est.value, est.low, est.high)
        for name, est in metrics.items():
            if header(name) in row:
                row[header(name)] = fmt(est.value)
        rows.append(row)
    return pd.concat([pd.DataFrame(rows, columns=shown.columns), shown], ignore_index=True) if rows else shown


def section_groups(measured: pd.DataFrame) -> list[tuple[tuple[str, int], pd.DataFrame]]:
    if measured.empty:
        return []
    return [(key, group.reset_index(drop=True)) for key, group in measured.groupby(["model", "resolution"], sort=True)]


LEGEND = (
    "Means over seed sets, ± their standard deviation. MACs per image: *all+CFG* counts every matmul "
    "(attention included) and both CFG halves; *linear* counts linear layers only without CFG doubling "
    "(the LazyDiT / Learning-to-Cache convention). Speedup: full-compute DDIM latency at the same steps over "
    "the method's, measured in the same cell. *DDIM @MACs / @latency*: the DDIM step-count curve interpolated "
    "at the method's MACs / latency; *gain*: the method's quality advantage over that curve (positive = better)."
)


DEVICE_LEGEND = (
    "Sampler latency (decode excluded) per device: torch devices time eager sampling; `executorch-host` and "
    "`android*` time the exported ExecuTorch program (XNNPACK). Speedup: DDIM at the same steps over the method, "
    "timed in the same cell. Paper rows are the published figures on their own device and model, for reference."
)

PAIRED_LEGEND = (
    "*[95% CI]*: bootstrap over images (and over seed sets where there are several) on a resampling plan shared "
    "by every cell, so two cells' replicates pair image by image. *Δ vs DDIM same steps*: the method minus "
    "full-compute DDIM at the same steps on the same seeds and labels; *gain @MACs / @latency*: the method's "
    "advantage over the DDIM curve interpolated (replicate by replicate) at its MACs / latency, positive = better; "
    "\\* = the interval excludes zero. *feature dist.*: per-image distance of the domain classifier's whitened, "
    "unit-normalised features to the full-compute image (LPIPS-like). *Pareto*: on the quality-vs-MACs (M) / quality-vs-latency (L) "
    "frontier. *real data (floor)*: real digits the classifier never saw, disjoint from the reference, as many per "
    "seed set as a cell generates: what a perfect model scores."
)


def section_file_stem(model: str, resolution: int) -> str:
    return f"{slug(model)}-{resolution}"


def current_records(suite: Suite, results_dir: str | Path) -> list[dict[str, Any]]:
    """The latest record of each of the suite's current cells (records of edited-away cells are left out)."""
    from harness.store import RecordStore

    store = RecordStore.for_suite(results_dir, suite.name)
    if not store.path.is_file():
        raise FileNotFoundError(f"no records at {store.path}; run `python -m harness run {suite.name}"
                                f" --results-dir {results_dir}` first")
    wanted = {cell.config_hash() for cell in suite.cells()}
    return [r for h, r in store.latest(store.read()).items() if h in wanted]


def write_reports(suite: Suite, results_dir: str | Path) -> list[Path]:
    """Regenerates every table and Pareto plot of a suite from its records; returns the files written.

    Args:
        suite: the parsed suite (its current cells select the records).
        results_dir: the folder holding <suite>/records.jsonl; outputs go next to the records.
    """
    from harness.plots import suite_plots
    from harness.store import suite_dir

    records = current_records(suite, results_dir)
    measured = aggregate(records_frame(records))
    folder = suite_dir(results_dir, suite.name)
    files: dict[str, str | bytes] = dict(suite_tables(suite, measured, records))
    files.update(suite_plots(measured, suite.primary_metric, suite.name, records))
    return [atomic_write_bytes(folder / name, content.encode() if isinstance(content, str) else content)
            for name, content in sorted(files.items())]
