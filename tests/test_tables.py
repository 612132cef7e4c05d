"""Tables and plots from records: arrows, spread, matched budgets, paper vs measured, byte-identical output."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from harness.plots import pareto_figure, pareto_front, suite_plots
from harness.store import RecordStore
from harness.suite import Cell, Suite
from harness.tables import (aggregate, leaderboard, paper_vs_measured, published_results, records_frame,
                            render_table, suite_tables, write_reports)

MODEL = "embedded/digits-8"


def suite(**overrides) -> Suite:
    data = {"name": "t", "models": [MODEL], "methods": ["ddim"], "steps": [10, 20], "seeds": [0, 1],
            "primary_metric": "fid"}
    data.update(overrides)
    return Suite.from_dict(data)


def fake_record(cell: Cell, fid: float, macs: float, latency: float, lazy: float = 0.0, speedup: float = 1.0,
                image_size: int = 8, psnr: float | None = None) -> dict:
    """A record with the fields tables read, for a cell of a suite."""
    metrics = {"quality": {"fid": fid, "accuracy": 0.9}, "macs": {"macs_linear_per_image": macs,
                                                                  "macs_all_per_image": 2.5 * macs},
               "latency": {"median_s": latency, "p10_s": latency, "p90_s": latency, "speedup": speedup},
               "laziness": {"all": lazy, "attn": lazy, "mlp": lazy}}
    if psnr is not None:
        metrics["fidelity"] = {"psnr": psnr}
    return {"config_hash": cell.config_hash(), "variant_hash": cell.variant_hash(), "status": "ok",
            "cell": cell.to_dict(), "model_info": {"image_size": image_size}, "metrics": metrics,
            "provenance": {"git_commit": "abc"}}


def manual_cell(method: str = "ddim", steps: int = 10, seed: int = 0, args: dict | None = None, model: str = MODEL) -> Cell:
    base = suite().cells()[0].to_dict()
    base.update(method=method, steps=steps, seed=seed, method_args=args or {}, model=model)
    return Cell.from_dict(base)


def ddim_and_method_records() -> list[dict]:
    """DDIM at 10 / 20 steps (MACs 10 / 20, FID 20 / 10) and a method at MACs 15 with FID 12."""
    return [fake_record(manual_cell("ddim", 10), fid=20.0, macs=10.0, latency=1.0),
            fake_record(manual_cell("ddim", 20), fid=10.0, macs=20.0, latency=2.0),
            fake_record(manual_cell("lazy-test", 20, args={"threshold": 0.5}), fid=12.0, macs=15.0, latency=1.25,
                        lazy=0.25, speedup=1.6, psnr=30.0)]


def board(records: list[dict]) -> pd.DataFrame:
    return leaderboard(aggregate(records_frame(records)), "fid")


# ---- leaderboards ----------------------------------------------------------------------------

def test_headers_say_whether_higher_or_lower_is_better():
    columns = list(board(ddim_and_method_records()).columns)
    assert {"FID ↓", "cond. acc. ↑", "PSNR ↑", "speedup ↑", "latency p50 (s) ↓"} <= set(columns)


def test_one_row_per_method_steps_and_parameters_ddim_first():
    table = board(ddim_and_method_records())
    assert table[["method", "steps", "params"]].values.tolist() == [
        ["ddim", "20", "-"], ["ddim", "10", "-"], ["lazy-test", "20", "threshold=0.5"]]


def test_a_requested_lazy_ratio_stands_next_to_the_achieved_one():
    records = ddim_and_method_records()
    records[2]["metrics"]["laziness"]["target"] = 0.3
    table = board(records)
    assert table["lazy % ↑"].tolist()[2] == "25.0" and table["lazy target %"].tolist() == ["—", "—", "30.0"]


def test_speedup_stands_next_to_the_macs_implied_one_of_ddim_at_the_same_steps():
    row = board(ddim_and_method_records()).iloc[2]  # DDIM-20: 20 MACs; the method: 15 MACs, measured 1.6x
    assert row["MACs-implied speedup"] == "1.33×" and row["speedup / MACs-implied ↑"] == "1.20"


def test_seed_sets_are_averaged_with_their_spread():
    records = [fake_record(manual_cell(seed=0), fid=10.0, macs=1.0, latency=1.0),
               fake_record(manual_cell(seed=1), fid=12.0, macs=1.0, latency=1.0)]
    assert board(records)["FID ↓"].tolist() == ["11.0 ± 1.4"]


def test_matched_budget_interpolates_the_ddim_curve_at_the_methods_macs_and_latency():
    row = board(ddim_and_method_records()).iloc[2]
    assert row["DDIM FID @MACs"] == "15.0" and row["gain @MACs ↑"] == "3.00"  # lower FID is better: 15 - 12
    assert row["DDIM FID @latency"] == "17.5" and row["gain @latency ↑"] == "5.50"


def test_a_method_with_its_own_batch_size_is_matched_against_the_ddim_curve_of_any_batch_size():
    records = ddim_and_method_records()
    coupled = Cell.from_dict({**manual_cell("lazy-test", 20, args={"threshold": 0.5}).to_dict(), "batch_size": 16})
    records[2] = fake_record(coupled, fid=12.0, macs=15.0, latency=1.25, speedup=1.6)
    table = board(records)
    row = table[table["method"] == "lazy-test"].iloc[0]
    assert row["gain @MACs ↑"] == "3.00" and row["MACs-implied speedup"] == "1.33×"


def test_matched_budget_is_empty_outside_the_measured_ddim_range():
    records = ddim_and_method_records()
    records[2]["metrics"]["macs"]["macs_linear_per_image"] = 5.0
    assert board(records).iloc[2]["gain @MACs ↑"] == "—"


def test_both_macs_conventions_are_shown():
    table = board(ddim_and_method_records())
    assert table["MACs/img all+CFG ↓"].tolist() == ["50.0", "25.0", "37.5"]
    assert table["MACs/img linear ↓"].tolist() == ["20.0", "10.0", "15.0"]


# ---- rendering ---------------------------------------------------------------------------------

def test_latex_escapes_text_and_typesets_arrows():
    table = pd.DataFrame({"FID ↓": ["1.0 ± 0.1"], "params": ["rho_attn=1e-7"]})
    tex = render_table(table, "latex")
    assert r"FID $\downarrow$" in tex and r"1.0 $\pm$ 0.1" in tex and r"rho\_attn" in tex


def test_csv_reads_back_as_numbers():
    files = suite_tables(suite(), aggregate(records_frame(ddim_and_method_records())))
    frame = pd.read_csv(io.StringIO(files["leaderboard.csv"]))
    assert frame["quality.fid"].tolist() == [10.0, 20.0, 12.0]
    assert frame["matched.macs.gain"].iloc[2] == pytest.approx(3.0)


def test_unknown_format_is_rejected():
    with pytest.raises(ValueError, match="unknown table format 'html'; accepted: markdown, latex, csv"):
        render_table(pd.DataFrame({"a": [1]}), "html")


def test_regeneration_is_byte_identical_whatever_the_record_order(tmp_path):
    s = suite(steps=[10, 20, 40])
    records = [fake_record(c, fid=100.0 / c.steps + c.seed, macs=float(c.steps), latency=c.steps / 10,
                           psnr=30.0 + c.steps if c.seed else None)
               for c in s.cells()]
    for r, c in zip(records, s.cells()):
        if not c.measures("latency"):  # the second seed set is not timed
            del r["metrics"]["latency"]
    store = RecordStore.for_suite(tmp_path / "a", s.name)
    for r in records:
        store.append(r)
    records.reverse()  # a seed-1 record (with fidelity, without latency) first
    shuffled = RecordStore.for_suite(tmp_path / "b", s.name)
    for r in records:
        shuffled.append(r)
    first = {p.name: p.read_bytes() for p in write_reports(s, tmp_path / "a")}
    again = {p.name: p.read_bytes() for p in write_reports(s, tmp_path / "a")}
    other = {p.name: p.read_bytes() for p in write_reports(s, tmp_path / "b")}
    assert first == again == other
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard.tex", "pareto-embedded-digits-8-8-macs.png",
            "pareto-embedded-digits-8-8-latency.png"} <= set(first)


def test_tables_leave_out_records_of_cells_no_longer_in_the_suite(tmp_path):
    s = suite(steps=[10], seeds=[0])
    store = RecordStore.for_suite(tmp_path, s.name)
    store.append(fake_record(s.cells()[0], fid=5.0, macs=1.0, latency=1.0))
    store.append(fake_record(manual_cell(steps=99), fid=1.0, macs=1.0, latency=1.0))
    write_reports(s, tmp_path)
    text = (tmp_path / "t" / "leaderboard.md").read_text()
    assert "| ddim     | 10 " in text and "99" not in text


# ---- Pareto ----------------------------------------------------------------------------------

def test_pareto_front_keeps_points_no_cheaper_point_beats():
    x = np.array([1.0, 2.0, 3.0, 2.5])
    y = np.array([30.0, 20.0, 25.0, 10.0])  # lower is better
    assert pareto_front(x, y, higher_is_better=False).tolist() == [0, 1, 3]


def test_pareto_plots_are_png_files_per_model_and_axis():
    files = suite_plots(aggregate(records_frame(ddim_and_method_records())), "fid", "t")
    assert sorted(files) == ["pareto-embedded-digits-8-8-latency.png", "pareto-embedded-digits-8-8-macs.png"]
    assert all(png.startswith(b"\x89PNG") for png in files.values())


def test_pareto_plot_keeps_to_the_ddim_range_and_counts_the_settings_beyond_it():
    records = ddim_and_method_records()  # DDIM FID 10..20
    records.append(fake_record(manual_cell("lazy-test", 20, args={"threshold": 0.9}), fid=900.0, macs=12.0, latency=1.0))
    fig = pareto_figure(aggregate(records_frame(records)), "macs", "fid", "t")
    ax = fig.axes[0]
    assert ax.get_ylim()[1] == pytest.approx(25.0) and ax.get_yscale() == "linear"
    assert any(t.get_text() == "1 setting(s) off the chart" for t in ax.texts)


def test_pareto_plot_gives_each_method_one_colour_and_one_legend_entry():
    records = ddim_and_method_records()
    records.append(fake_record(manual_cell("lazy-test", 20, args={"threshold": 0.7}), fid=14.0, macs=12.0, latency=1.0))
    ax = pareto_figure(aggregate(records_frame(records)), "macs", "fid", "t").axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["ddim", "lazy-test", "Pareto front"]
    method_lines = [line for line in ax.lines if line.get_marker() not in ("None", None, "")][1:3]
    assert method_lines[0].get_color() == method_lines[1].get_color()


# ---- paper vs measured -----------------------------------------------------------------------

def test_published_results_ship_inside_the_package():
    table = published_results(["LazyDiT Table 1"])
    assert len(table) == 26 and set(table["model"]) == {"DiT-XL/2"}


def test_unknown_paper_source_lists_the_accepted_ones():
    with pytest.raises(ValueError, match="unknown paper source 'LazyDiT Table 9'; accepted: .*LazyDiT Table 1"):
        published_results(["LazyDiT Table 9"])


def test_paper_rows_meet_the_measured_variant_with_the_same_lazy_ratio():
    xl = "DiT-XL/2"
    records = [fake_record(manual_cell("ddim", 50, model=xl), fid=2.40, macs=5.72e12, latency=1.0, image_size=256),
               fake_record(manual_cell("lazydit", 50, args={"threshold": 0.5}, model=xl), fid=2.80, macs=2.87e12,
                           latency=0.5, lazy=0.48, image_size=256),
               fake_record(manual_cell("lazydit", 50, args={"threshold": 0.9}, model=xl), fid=9.0, macs=1e12,
                           latency=0.2, lazy=0.8, image_size=256)]
    table = paper_vs_measured(aggregate(records_frame(records)), ["LazyDiT Table 1"])
    ddim50 = table[(table["res"] == "256") & (table["method"] == "ddim") & (table["steps"] == "50")].iloc[0]
    assert (ddim50["FID ↓ paper"], ddim50["FID ↓ ours"], ddim50["TMACs ours"]) == ("2.34", "2.40", "5.72")
    lazy50 = table[(table["method"] == "lazydit") & (table["steps"] == "50") & (table["res"] == "256")]
    assert lazy50["FID ↓ ours"].tolist() == ["—", "—", "2.80"]  # lazy ratios 0.2, 0.4, 0.5: only 0.5 matches 0.48
