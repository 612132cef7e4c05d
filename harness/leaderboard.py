"""One leaderboard over every suite under a results folder: one report per model x resolution x device.

Each suite keeps its own evaluation (seed sets, images per cell, hence FID's finite-sample bias), so rows
are compared within a suite: a report holds, per suite that measured the model, its leaderboard (with the
paired differences, the real-data floor and the who-wins table), then all suites' rows side by side, and
the published numbers (`harness/reference/published_results.csv`) beside the measured row they map to.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from harness.suite import SpecError, load_suite, slug
from harness.tables import (FULL_COMPUTE, LAZY, MACS_LINEAR, SPEEDUP, LEGEND, PAIRED_LEGEND, _match_measured, aggregate,
                            fmt, published_results, ranking_sections, records_frame, render_table,
                            section_tables)

LEADERBOARD_DIR = "leaderboard"
INDEX = "README.md"
PAPER_COLUMNS = {"fid": "fid", "sfid": "sfid", "is": "is_mean", "precision": "precision", "recall": "recall"}


def suite_records(results_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Suite name -> its latest records, for every <suite>/records.jsonl under the folder.

    A suite that is shipped (or otherwise loadable by name) keeps only its current cells' records.
    """
    from harness.store import RECORDS_FILE, RecordStore
    from harness.tables import current_records

    out = {}
    for path in sorted(Path(results_dir).glob(f"*/{RECORDS_FILE}")):
        name = path.parent.name
        try:
            records = current_records(load_suite(name), results_dir)
        except (SpecError, FileNotFoundError, ValueError):
            store = RecordStore(path)
            records = list(store.latest(store.read()).values())
        if records:
            out[name] = records
    return out


def _primary(name: str, records: list[dict[str, Any]]) -> str:
    try:
        return load_suite(name).primary_metric
    except (SpecError, FileNotFoundError, ValueError):
        quality = next((r["metrics"].get("quality") or {} for r in records if r["metrics"].get("quality")), {})
        return "domain_fid" if "domain_fid" in quality else "fid"


def merged_reports(results_dir: str | Path) -> dict[str, str]:
    """File name (under results/leaderboard/) -> Markdown: one report per model x resolution x device, and an index."""
    by_suite = suite_records(results_dir)
    if not by_suite:
        raise FileNotFoundError(f"no <suite>/records.jsonl under {str(results_dir)!r}; run a suite first")
    sections: dict[tuple, list[tuple[str, str, pd.DataFrame, list[dict]]]] = {}
    for name, records in by_suite.items():
        measured = aggregate(records_frame(records))
        primary = _primary(name, records)
        for key, table in measured.groupby(["model", "resolution", "device"], sort=True):
            hashes = set(table["variant_hash"])
            sections.setdefault(key, []).append((name, primary, table.reset_index(drop=True),
                                                 [r for r in records if r["variant_hash"] in hashes]))
    files, index = {}, ["# Leaderboard over all suites\n",
                        f"Regenerate: `python -m harness leaderboard --results-dir {Path(results_dir).as_posix()}` "
                        "(same as `harness table --all`).\n", "| model | resolution | device | suites | report |",
                        "|---|---|---|---|---|"]
    for (model, resolution, device), parts in sorted(sections.items()):
        stem = f"{slug(model)}-{resolution}-{device}.md"
        files[stem] = model_report(model, resolution, device, parts)
        index.append(f"| {model} | {resolution} | {device} | {', '.join(p[0] for p in parts)} | [{stem}]({stem}) |")
    files[INDEX] = "\n".join(index) + "\n"
    return files


def model_report(model: str, resolution: int, device: str, parts: list[tuple[str, str, pd.DataFrame, list[dict]]]) -> str:
    """The Markdown report of one model x resolution x device over the suites that measured it."""
    out = [f"# {model} @ {resolution}px on {device}: every suite\n"]
    merged = []
    for name, primary, table, records in parts:
        full, shown, wins, power = section_tables(table, primary, records)
        n = sorted({r["cell"]["num_samples"] for r in records})
        seeds = sorted({r["cell"]["seed"] for r in records})
        out.append(f"\n## suite `{name}` ({'/'.join(map(str, n))} images per cell, seed sets {seeds})\n\n"
                   f"{render_table(shown, 'markdown')}{ranking_sections(f'`{name}`', wins, power)}")
        merged.append(full.assign(suite=name, primary=primary))
    everything = pd.concat(merged, ignore_index=True)
    paper = published_beside_measured(everything)
    if not paper.empty:
        out.append(f"\n## Published numbers beside measured ones\n\n{render_table(paper, 'markdown')}")
    else:
        out.append("\n## Published numbers beside measured ones\n\nNo published row maps to this model and resolution.\n")
    out.append(f"\n{LEGEND}\n\n{PAIRED_LEGEND}\n")
    return "".join(out)


def published_beside_measured(measured: pd.DataFrame) -> pd.DataFrame:
    """Every published row of the measured model and resolution, the matched measured variant (same method,
    steps and lazy ratio within 5 points; the first suite that has it) and ours - paper where both exist."""
    rows = []
    published = published_results()
    for _, paper in published.iterrows():
        same = measured[(measured["model"].str.lower() == str(paper["model"]).lower())
                        & (measured["resolution"] == int(paper["resolution"]))]
        if same.empty:
            continue
        match = _match_measured(same, paper)
        row = {"source": paper["source"], "method": paper["method"], "steps": str(paper["steps"]),
               "suite": match["suite"] if match is not None else "—",
               "lazy % (paper / ours)": f"{fmt(100 * paper['lazy_ratio'])} / "
                                        f"{fmt(100 * match[LAZY]) if match is not None and LAZY in match else '—'}"}
        for name, key in PAPER_COLUMNS.items():
            ours = match.get(f"quality.{key}", math.nan) if match is not None else math.nan
            ours = 100 * ours if name in ("precision", "recall") else ours
            row[f"{name} paper"], row[f"{name} ours"] = fmt(paper[name]), fmt(ours)
            both = math.isfinite(ours) and math.isfinite(float(paper[name]))
            row[f"Δ{name} (ours − paper)"] = fmt(ours - float(paper[name])) if both else "—"
        ours_t = match.get(MACS_LINEAR, math.nan) / 1e12 if match is not None else math.nan
        row["TMACs paper"], row["TMACs ours"] = fmt(paper["tmacs_per_image"]), fmt(ours_t)
        speed = match.get(SPEEDUP, math.nan) if match is not None and match["method"] != FULL_COMPUTE else math.nan
        row["speedup ours"] = fmt(speed)
        rows.append(row)
    return pd.DataFrame(rows)


def write_leaderboard(results_dir: str | Path) -> list[Path]:
    """Writes results_dir/leaderboard/*.md from every suite's records; returns the files written."""
    from harness.cache import atomic_write_bytes

    folder = Path(results_dir) / LEADERBOARD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return [atomic_write_bytes(folder / name, text.encode()) for name, text in sorted(merged_reports(results_dir).items())]
