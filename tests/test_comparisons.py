"""Paired differences, matched-budget gains with intervals, who-wins tables, the floor row, the merged leaderboard."""
from __future__ import annotations

import pandas as pd
import pytest

from harness.comparisons import paired_columns
from harness.leaderboard import merged_reports
from harness.rankings import pareto_marks, resolving_power, who_wins
from harness.store import RecordStore
from harness.suite import Suite
from harness.tables import aggregate, records_frame, section_tables
from paired_records import paired_record

MODEL = "embedded/digits-8"


def suite(name: str = "pairs", model: str = MODEL) -> Suite:
    return Suite.from_dict({"name": name, "models": [model], "steps": [10, 20], "seeds": [0, 1],
                            "primary_metric": "domain_fid",
                            "methods": ["ddim", {"name": "fora", "steps": [20], "args": {"interval": 2}},
                                        {"name": "fora", "steps": [20], "args": {"interval": 4}}]})


def cell(s: Suite, method: str, steps: int, seed: int, interval: int | None = None):
    return next(c for c in s.cells() if c.method == method and c.steps == steps and c.seed == seed
                and c.method_args.get("interval") == interval)


def suite_records(s: Suite | None = None, fora2_fid: float = 12.0) -> list[dict]:
    """DDIM-10 (FID 20, MACs 10), DDIM-20 (FID 10, MACs 20); FORA-2 (FID `fora2_fid`, MACs 15), FORA-4 (FID 30, MACs 12)."""
    s = s or suite()
    out = []
    for seed in (0, 1):
        out += [paired_record(cell(s, "ddim", 10, seed), 20.0, 10.0, 1.0, floor_fid=4.0),
                paired_record(cell(s, "ddim", 20, seed), 10.0, 20.0, 2.0, floor_fid=4.0),
                paired_record(cell(s, "fora", 20, seed, 2), fora2_fid, 15.0, 1.5, speedup=1.33),
                paired_record(cell(s, "fora", 20, seed, 4), 30.0, 12.0, 1.2, speedup=1.67)]
    return out


def table(records: list[dict]) -> pd.DataFrame:
    return paired_columns(records, aggregate(records_frame(records)))


def row(t: pd.DataFrame, method: str, params: str = "-") -> pd.Series:
    return t[(t["method"] == method) & (t["params"] == params)].iloc[0] if method != "ddim" else \
        t[(t["method"] == method) & (t["steps"] == 20)].iloc[0]


def test_a_method_is_paired_with_ddim_at_the_same_steps_on_the_same_seeds():
    fora = row(table(suite_records()), "fora", "interval=2")
    assert fora["paired.domain_fid"] == pytest.approx(2.0)
    assert fora["paired.domain_fid:low"] > 1.0 and fora["paired.domain_fid:high"] < 3.0  # shared noise cancels
    assert fora["paired.domain_fid:sig"] == 1.0


def test_the_absolute_interval_is_much_wider_than_the_paired_one():
    fora = row(table(suite_records()), "fora", "interval=2")
    absolute = fora["ci.domain_fid:high"] - fora["ci.domain_fid:low"]
    paired = fora["paired.domain_fid:high"] - fora["paired.domain_fid:low"]
    assert absolute > 5 * paired


def test_a_difference_inside_the_noise_is_not_marked_significant():
    fora = row(table(suite_records(fora2_fid=10.05)), "fora", "interval=2")
    assert fora["paired.domain_fid:sig"] == 0.0


def test_gain_at_matched_macs_interpolates_the_ddim_curve_replicate_by_replicate():
    fora = row(table(suite_records()), "fora", "interval=2")
    # the curve at MACs 15 is FID 15; FORA's 12 is 3 better (positive = better for a lower-is-better metric)
    assert fora["gain.macs.domain_fid"] == pytest.approx(3.0)
    assert fora["gain.macs.domain_fid:low"] > 2.0 and fora["gain.macs.domain_fid:sig"] == 1.0
    assert row(table(suite_records()), "fora", "interval=4")["gain.macs.domain_fid"] == pytest.approx(-12.0)  # worse


def test_pareto_marks_name_the_frontier_of_each_axis():
    t = table(suite_records())
    marks = dict(zip(t["method"] + t["params"] + t["steps"].astype(str), pareto_marks(t, "domain_fid")))
    assert marks["ddim" + "-" + "10"] == "ML"  # cheapest of all
    assert marks["fora" + "interval=2" + "20"] == "ML"  # better than DDIM-10 for less than DDIM-20
    assert marks["fora" + "interval=4" + "20"] == ""  # costs more than DDIM-10 and is worse


def test_who_wins_names_the_best_setting_at_or_under_each_ddim_budget_with_its_lead():
    records = suite_records()
    wins = who_wins(table(records), "domain_fid", records)
    at_20 = wins[(wins["axis"] == "macs") & wins["budget"].str.contains("DDIM-20")].iloc[0]
    assert at_20["best"] == "ddim-20" and at_20["runner-up"] == "fora-20 interval=2"
    assert at_20["lead over runner-up"].startswith("-2") and at_20["lead over runner-up"].endswith("*")
    at_10 = wins[(wins["axis"] == "macs") & wins["budget"].str.contains("DDIM-10")].iloc[0]
    assert at_10["best"] == "ddim-10"


def test_resolving_power_pairs_each_ddim_budget_with_the_largest_and_counts_resolved_methods():
    records = suite_records()
    power = resolving_power(table(records), "domain_fid", records).set_index("quantity")["domain FID [95% CI]"]
    assert power["DDIM-10 − DDIM-20 (paired)"].startswith("+10.0") and power["DDIM-10 − DDIM-20 (paired)"].endswith("*")
    assert power["method rows resolved from DDIM at the same steps"] == "2 of 2"
    assert float(power["seed-to-seed SD of domain FID (median over variants, 2 seed sets)"]) == pytest.approx(0.0, abs=1e-9)


def test_the_floor_is_the_first_row_of_the_leaderboard():
    records = suite_records()
    _, shown, _, _ = section_tables(aggregate(records_frame(records)), "domain_fid", records)
    assert shown.iloc[0]["method"] == "real data (floor)"
    assert shown.iloc[0]["domain FID [95% CI]"].startswith("4.00")


def test_one_report_per_model_merges_every_suite_and_shows_published_numbers(tmp_path):
    for name, model in (("pairs", MODEL), ("other", MODEL), ("paper", "DiT-XL/2")):
        store = RecordStore.for_suite(tmp_path, name)
        records = suite_records(suite(name, model))
        for r in records:
            if model != MODEL:
                r["model_info"]["image_size"] = 256
                r["metrics"]["quality"]["fid"] = 3.0
            store.append(r)
    files = merged_reports(tmp_path)
    assert sorted(files) == ["DiT-XL-2-256-cpu.md", "README.md", "embedded-digits-8-8-cpu.md"]
    digits = files["embedded-digits-8-8-cpu.md"]
    assert "suite `pairs`" in digits and "suite `other`" in digits and "who wins" in digits
    dit = files["DiT-XL-2-256-cpu.md"]
    assert "LazyDiT Table 1" in dit and "-0.530" in dit  # DDIM-20: ours 3.0 beside the paper's 3.53
