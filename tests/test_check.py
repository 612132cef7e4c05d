"""The regression gate: spread-derived quality tolerances, exact MACs, speedup floors, readable violations."""
from __future__ import annotations

import copy
import math

import pytest

from harness.check import compare, make_baseline, pooled_spread, read_baseline, violations_table, write_baseline
from harness.cli import main
from harness.store import RecordStore
from harness.suite import Suite
from harness.tables import aggregate, records_frame

MODEL = "embedded/digits-8"
SUITE = {"name": "gate", "models": [MODEL], "methods": ["ddim"], "steps": [10, 20], "seeds": [0, 1],
         "primary_metric": "fid", "check": {"quality_k": 3.0, "speedup_tolerance": 0.25}}


def suite() -> Suite:
    return Suite.from_dict(SUITE)


def records(fid_shift: float = 0.0, macs_scale: float = 1.0, speedup: float = 1.0) -> list[dict]:
    """Two seed sets per step budget; FID 10 +- 1 across seeds (so the pooled spread is sqrt(2))."""
    out = []
    for cell in suite().cells():
        fid = 100.0 / cell.steps + (1.0 if cell.seed else -1.0) + fid_shift
        out.append({"config_hash": cell.config_hash(), "variant_hash": cell.variant_hash(), "status": "ok",
                    "cell": cell.to_dict(), "model_info": {"image_size": 8},
                    "metrics": {"quality": {"fid": fid},
                                "macs": {"macs_linear_per_image": 1e6 * cell.steps * macs_scale,
                                         "macs_all_per_image": 3e6 * cell.steps * macs_scale},
                                "latency": {"median_s": 0.1, "speedup": speedup}},
                    "provenance": {"git_commit": "abc"}})
    return out


def baseline() -> dict:
    return make_baseline(suite(), records(speedup=1.5))


def checks(violations) -> list[tuple[str, str]]:
    return [(v.check, v.metric) for v in violations]


def test_tolerance_is_k_times_the_median_seed_to_seed_spread():
    spread = pooled_spread(aggregate(records_frame(records())))
    assert spread[f"{MODEL}@8"]["quality.fid"] == pytest.approx(math.sqrt(2))
    tolerances = [v["quality_tolerance"]["quality.fid"] for v in baseline()["variants"].values()]
    assert tolerances == pytest.approx([3 * math.sqrt(2)] * 2)


def test_a_degenerate_variant_does_not_loosen_the_tolerance():
    fresh = records()
    wild = Suite.from_dict(dict(SUITE, steps=[10, 20, 2])).cells()[-2:]  # steps=2, both seed sets
    for cell, fid in zip(wild, (300.0, 400.0)):
        record = dict(fresh[0], config_hash=cell.config_hash(), variant_hash=cell.variant_hash(), cell=cell.to_dict())
        record["metrics"] = dict(record["metrics"], quality={"fid": fid})
        fresh.append(record)
    spread = pooled_spread(aggregate(records_frame(fresh)))
    assert spread[f"{MODEL}@8"]["quality.fid"] == pytest.approx(math.sqrt(2))


def test_identical_records_pass():
    violations, notes = compare(baseline(), records(speedup=1.5))
    assert violations == [] and notes == []


def test_quality_within_tolerance_passes_and_beyond_it_fails():
    assert compare(baseline(), records(fid_shift=4.0, speedup=1.5))[0] == []
    violations, _ = compare(baseline(), records(fid_shift=4.5, speedup=1.5))
    assert checks(violations) == [("quality", "quality.fid")] * 2
    assert violations[0].fresh.endswith("(worse)")


def test_any_change_in_macs_fails():
    violations, _ = compare(baseline(), records(macs_scale=1.000001, speedup=1.5))
    assert sorted(checks(violations)) == sorted([("macs", "macs.macs_all_per_image"), ("macs", "macs.macs_linear_per_image")] * 2)


def test_speedup_may_not_fall_below_baseline_times_one_minus_tolerance():
    assert compare(baseline(), records(speedup=1.5 * 0.76))[0] == []
    violations, _ = compare(baseline(), records(speedup=1.5 * 0.74))
    assert checks(violations) == [("speedup", "speedup")] * 2
    assert violations[0].allowed == ">= 1.12"


def test_missing_variant_fails_and_new_variant_is_noted():
    base = baseline()
    fresh = records(speedup=1.5)
    dropped = [r for r in fresh if r["cell"]["steps"] != 10]
    assert checks(compare(base, dropped)[0]) == [("missing", "-")]
    extra = copy.deepcopy(base)
    del extra["variants"][next(iter(extra["variants"]))]
    assert len(compare(extra, fresh)[1]) == 1


def test_violations_table_is_readable_markdown():
    violations, _ = compare(baseline(), records(fid_shift=10.0, speedup=1.5))
    text = violations_table(violations)
    assert [c.strip() for c in text.splitlines()[0].split("|")[1:-1]] == ["variant", "check", "metric", "baseline",
                                                                       "fresh", "allowed"]
    assert "ddim(-) steps=10" in text and "(worse)" in text


def test_baseline_of_another_suite_is_refused(tmp_path):
    path = write_baseline(tmp_path / "b.json", dict(baseline(), suite="other"))
    with pytest.raises(ValueError, match="is for suite 'other', not 'gate'"):
        read_baseline(path, suite())


def test_cli_writes_a_baseline_then_gates_with_exit_status(tmp_path, capsys):
    spec = tmp_path / "gate.toml"
    spec.write_text('name = "gate"\nmodels = ["embedded/digits-8"]\nmethods = ["ddim"]\nsteps = [10, 20]\n'
                    'seeds = [0, 1]\nprimary_metric = "fid"\n')
    store = RecordStore.for_suite(tmp_path / "base", "gate")
    for r in records(speedup=1.5):
        store.append(r)
    fresh = RecordStore.for_suite(tmp_path / "fresh", "gate")
    for r in records(fid_shift=10.0, speedup=1.5):
        fresh.append(r)
    base = str(tmp_path / "baselines" / "gate.json")
    assert main(["check", str(spec), "--baseline", base, "--results-dir", str(tmp_path / "base"), "--write-baseline"]) == 0
    assert main(["check", str(spec), "--baseline", base, "--results-dir", str(tmp_path / "base")]) == 0
    assert main(["check", str(spec), "--baseline", base, "--results-dir", str(tmp_path / "fresh")]) == 1
    out = capsys.readouterr().out
    assert "2 violation(s)" in out and "| quality" in out


# ---- paired differences: the gate on what matters ----------------------------------------------

PAIRED_SUITE = {"name": "gate", "models": [MODEL], "steps": [10, 20], "seeds": [0, 1], "primary_metric": "domain_fid",
                "methods": ["ddim", {"name": "fora", "steps": [20], "args": {"interval": 2}}],
                "check": {"quality_k": 3.0, "speedup_tolerance": 0.25, "paired_k": 1.0}}


def paired_records(fora_fid: float = 12.0, fora_macs: float = 15.0, fora_speedup: float = 1.5) -> list[dict]:
    """DDIM-10 / DDIM-20 (FID 20 / 10) and FORA at 20 steps, with replicates that pair up per seed set; a seed
    set moves every cell's FID by the same +-2 (the seed-to-seed spread that the paired difference cancels)."""
    from paired_records import paired_record

    out = []
    for cell in Suite.from_dict(PAIRED_SUITE).cells():
        seed_set = 2.0 if cell.seed else -2.0
        if cell.method == "ddim":
            out.append(paired_record(cell, 200.0 / cell.steps + seed_set, 1.0 * cell.steps, 0.1 * cell.steps))
        else:
            out.append(paired_record(cell, fora_fid + seed_set, fora_macs, 2.0 / fora_speedup, speedup=fora_speedup))
    return out


def paired_baseline() -> dict:
    return make_baseline(Suite.from_dict(PAIRED_SUITE), paired_records())


def fora_violations(violations) -> list[tuple[str, str]]:
    return sorted((v.check, v.metric) for v in violations if "fora" in v.variant)


def test_the_baseline_holds_each_methods_paired_difference_and_its_tolerance():
    fora = next(v for v in paired_baseline()["variants"].values() if "fora" in v["label"])
    assert fora["paired"]["paired.domain_fid"] == pytest.approx(2.0)
    assert 0 < fora["paired_tolerance"]["paired.domain_fid"] < 1.0  # the shared seed-set noise cancels


def test_a_clean_rerun_does_not_fire():
    violations, notes = compare(paired_baseline(), paired_records())
    assert violations == [] and notes == []


def test_a_method_that_computes_everything_where_it_used_to_skip_fails_on_macs():
    violations, _ = compare(paired_baseline(), paired_records(fora_macs=20.0))
    assert fora_violations(violations) == [("macs", "macs.macs_all_per_image"), ("macs", "macs.macs_linear_per_image")]


def test_a_method_that_got_worse_fails_on_its_paired_difference_before_its_absolute_fid_moves():
    violations, _ = compare(paired_baseline(), paired_records(fora_fid=13.5))
    assert ("paired", "paired.domain_fid") in fora_violations(violations)
    assert ("quality", "quality.domain_fid") not in fora_violations(violations)  # inside the seed-to-seed band
    worse = next(v for v in violations if v.metric == "paired.domain_fid")
    assert (worse.baseline, worse.fresh) == ("2.00", "3.50") and worse.allowed.startswith("± ")
    assert "fora(interval=2) steps=20" in worse.variant


def test_a_slower_sampler_fails_on_the_speedup():
    violations, _ = compare(paired_baseline(), paired_records(fora_speedup=1.0))
    assert fora_violations(violations) == [("speedup", "speedup")]
