"""Latency per device kind in the tables, with the LazyDiT paper's phone figures as reference rows."""
from __future__ import annotations

import pandas as pd
import pytest

from harness.tables import latency_by_device


def measured() -> pd.DataFrame:
    base = {"model": "embedded/digits-8", "resolution": 8, "params": "-", "steps": 4}
    rows = [{**base, "method": "ddim", "device": "cpu", "latency.median_s": 0.02, "latency.speedup": 1.0},
            {**base, "method": "ddim", "device": "executorch-host", "latency.median_s": 0.01, "latency.speedup": 1.0},
            {**base, "method": "lazydit-static", "device": "executorch-host", "latency.median_s": 0.005,
             "latency.speedup": 2.0}]
    return pd.DataFrame(rows)


def test_each_device_gets_its_own_latency_and_speedup_columns():
    table = latency_by_device(measured())
    ddim = table[table["method"] == "ddim"].iloc[0]
    assert ddim["cpu p50 (s) ↓"] == "0.0200" and ddim["executorch-host p50 (s) ↓"] == "0.0100"
    lazy = table[table["method"] == "lazydit-static"].iloc[0]
    assert lazy["executorch-host speedup ↑"] == "2.00" and lazy["cpu p50 (s) ↓"] == "—"


def test_paper_phone_rows_carry_the_published_speedup_over_ddim_at_the_same_steps():
    table = latency_by_device(measured(), ["LazyDiT Table 3"])
    paper = table[table["source"].str.startswith("LazyDiT Table 3")]
    lazy50 = paper[(paper["method"] == "lazydit") & (paper["steps"] == "50")].iloc[0]
    assert "Snapdragon" in lazy50["source"]
    assert lazy50["paper speedup ↑"] == "1.89"  # 21.62 s / 11.41 s: the paper's headline phone speedup


def test_paper_speedups_compare_with_ddim_at_the_same_resolution():
    table = latency_by_device(measured(), ["LazyDiT Table 3"])
    paper = table[table["source"].str.startswith("LazyDiT Table 3")]
    ddim512 = paper[(paper["method"] == "ddim") & (paper["resolution"] == "512")]
    assert set(ddim512["paper speedup ↑"]) == {"1.00"}
    lazy256_10 = paper[(paper["method"] == "lazydit") & (paper["steps"] == "10") & (paper["resolution"] == "256")]
    assert lazy256_10["paper speedup ↑"].iloc[0] == "—"  # the paper times no DDIM-10 at 256 px
