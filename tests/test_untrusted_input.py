"""Issue 11: files from strangers never run code, files for another model are refused, bad values fail first.

Each rejected input gets its own test; each asserts one line on stderr naming the value or file
and exit status 2 (or the library error the CLI turns into it).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cache import ALLOW_PICKLE_ENV, UnsafeFileError, atomic_torch_save, load_torch_dict
from harness.cli import main
from harness.inputs import check_identity
from harness.methods import METHODS, Policy
from harness.suite import Suite

pytestmark = pytest.mark.usefixtures("private_cache")
REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "lazydit" / "zoo"
WEIGHTS_8 = ZOO / "digits-8-ddim25-rho1e-3.pt"
WEIGHTS_16 = ZOO / "digits-16-ddim25-rho1e-3.pt"
SCHEDULE_8 = ZOO / "digits-8-ddim25-rho1e-3-static.pt"


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """Cost tables and full-compute references go to a fresh cache, not the user's."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))


class Payload:
    """Unpickling this writes a marker file: the stand-in for an attacker's code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.write_text, (self.marker, "payload ran")


class AllCompute(Policy):
    """Plain DDIM under another name: its fidelity reference is not itself."""

    name = "test-untrusted-all-compute"


if AllCompute.name not in METHODS:
    METHODS.register(AllCompute.name)(AllCompute)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("harness ")]
    assert len(lines) == 1, err
    return lines[0]


def sample_args(tmp_path: Path, *extra: str, steps: str = "5") -> list[str]:
    return ["sample", "--model", "embedded/digits-8", "--steps", steps, "--seeds", "0-1", "--out",
            str(tmp_path / "s.npz"), *extra]


def lazy_args(weights: Path | str) -> list[str]:
    return ["--method", "lazydit", "--method-args", json.dumps({"weights": str(weights)})]


# ----------------------------------------------------------------------------------------
#                               1. No code runs from a data file
# ----------------------------------------------------------------------------------------

def test_a_pickled_payload_in_lazy_weights_never_runs_and_the_error_names_file_and_opt_in(tmp_path, capsys):
    marker = tmp_path / "marker.txt"
    bad = tmp_path / "lazy.pt"
    torch.save({"model": {}, "evil": Payload(marker)}, bad)
    assert main(sample_args(tmp_path, *lazy_args(bad), steps="25")) == 2
    err = one_line_error(capsys)
    assert not marker.exists()
    assert str(bad) in err and "--allow-pickle" in err and ALLOW_PICKLE_ENV in err and "pathlib" in err


def test_a_payload_in_a_static_schedule_never_runs(tmp_path, capsys):
    marker = tmp_path / "marker.txt"
    bad = tmp_path / "schedule.pt"
    torch.save({"compute": torch.ones(5, 6, 2, dtype=torch.bool), "evil": Payload(marker)}, bad)
    code = main(sample_args(tmp_path, "--method", "lazydit-static", "--method-args", json.dumps({"schedule": str(bad)})))
    assert code == 2 and not marker.exists() and "--allow-pickle" in one_line_error(capsys)


def test_a_payload_in_a_checkpoint_never_runs(tmp_path, capsys):
    marker = tmp_path / "marker.txt"
    bad = tmp_path / "ckpt.pt"
    torch.save({"ema": {"pos_embed": torch.zeros(1)}, "evil": Payload(marker)}, bad)
    assert main(["sample", "--model", "DiT-S/2", "--checkpoint", str(bad), "--seeds", "0", "--out", str(tmp_path / "x.npz")]) == 2
    assert not marker.exists() and str(bad) in one_line_error(capsys)


def test_a_payload_in_a_latents_file_never_runs(tmp_path):
    from harness.models import load_model
    from lazydit.data import training_batches

    marker = tmp_path / "marker.txt"
    bad = tmp_path / "latents.pt"
    torch.save({"latents": torch.zeros(4, 1, 8, 8), "labels": Payload(marker)}, bad)
    with pytest.raises(UnsafeFileError, match="--allow-pickle"):
        training_batches(load_model("embedded/digits-8"), f"latents:{bad}", 2)
    assert not marker.exists()


def test_the_opt_in_unpickles_with_a_warning(tmp_path, monkeypatch):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "trusted.pt"
    torch.save({"model": {}, "extra": Payload(marker)}, path)
    monkeypatch.setenv(ALLOW_PICKLE_ENV, "1")
    with pytest.warns(UserWarning, match="fully unpickling"):
        load_torch_dict(path, "model", "lazy-weights")
    assert marker.exists()  # the user trusted it


def test_the_allow_pickle_flag_is_scoped_to_the_command(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    path = tmp_path / "trusted.pt"
    torch.save({"model": {}, "extra": Payload(tmp_path / "marker.txt")}, path)
    with pytest.warns(UserWarning, match="fully unpickling"):
        assert main(sample_args(tmp_path, *lazy_args(path), "--allow-pickle", steps="25")) == 2  # loads, then: no keys
    assert "no block_B" in one_line_error(capsys)
    import os

    assert ALLOW_PICKLE_ENV not in os.environ


def test_official_routers_and_training_checkpoints_load_without_the_opt_in(tmp_path):
    """argparse.Namespace (official L2C routers, DiT training checkpoints) is allow-listed: it runs no code."""
    path = tmp_path / "router.pt"
    torch.save({"routers": {"0.prob": torch.zeros(56)}, "args": argparse.Namespace(model="DiT-XL/2", image_size=256)}, path)
    payload = load_torch_dict(path, "routers", "L2C router")
    assert payload["args"].image_size == 256


def test_files_the_harness_writes_hold_plain_data_only(tmp_path):
    with pytest.raises(TypeError, match="Namespace"):
        atomic_torch_save({"args": argparse.Namespace(a=1)}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_no_weights_only_false_outside_the_opt_in():
    needle = "weights_only=" + "False"
    sources = [p for package in ("harness", "baselines", "lazydit", "benchmarks", "tests") for p in (REPO / package).glob("**/*.py")]
    hits = sorted(str(p.relative_to(REPO)) for p in sources if needle in p.read_text())
    assert hits == ["harness/cache.py"]  # the project's code only, not a virtual environment inside the checkout


# ----------------------------------------------------------------------------------------
#                                2. Files for another model
# ----------------------------------------------------------------------------------------

def test_digits16_lazy_weights_are_refused_on_digits8_naming_both(tmp_path, capsys):
    assert main(sample_args(tmp_path, *lazy_args(WEIGHTS_16), steps="25")) == 2
    err = one_line_error(capsys)
    assert "embedded/digits-16" in err and "embedded/digits-8" in err and "model_name" in err


def test_the_python_api_refuses_another_models_weights_too():
    from harness import load_model, sample

    with pytest.raises(ValueError, match="embedded/digits-16"):
        sample(load_model("embedded/digits-8"), [0], [0], steps=25, method="lazydit",
               method_args={"weights": str(WEIGHTS_16)}, decode=False)


def test_a_digits8_schedule_is_refused_on_digits16(tmp_path, capsys):
    args = ["sample", "--model", "embedded/digits-16", "--steps", "25", "--seeds", "0", "--out", str(tmp_path / "x.npz"),
            "--method", "lazydit-static", "--method-args", json.dumps({"schedule": str(SCHEDULE_8)})]
    assert main(args) == 2
    assert "embedded/digits-8" in one_line_error(capsys)


def test_image_size_and_steps_are_compared_when_recorded(tmp_path):
    stored = {"model_name": "DiT-XL/2", "image_size": 512, "steps": 50, "method": "lazydit"}
    with pytest.raises(ValueError, match=r"512 px.*256 px.*image_size"):
        check_identity(stored, "w.pt", "lazy-weights", "DiT-XL/2", 256, 50)
    with pytest.raises(ValueError, match="steps"):
        check_identity(stored, "w.pt", "lazy-weights", "DiT-XL/2", 512, 20)
    check_identity({"model": {}}, "official.pt", "lazy-weights", "DiT-XL/2", 256, 50)  # nothing recorded: shapes decide


def test_written_files_record_model_image_size_steps_and_method(tmp_path, monkeypatch):
    from lazydit import pipeline
    from lazydit.training import LazyTrainConfig
    from harness.models import load_model

    model = load_model("embedded/digits-8")
    monkeypatch.setattr(pipeline, "load_for_training", lambda *a, **k: model)
    config = LazyTrainConfig(steps=4, iters=1, batch_size=4)
    pipeline.train_to_file("embedded/digits-8", str(tmp_path / "w.pt"), config, "random", calib_images=1, quiet=True)
    pipeline.calibrate_to_file("embedded/digits-8", str(tmp_path / "w.pt"), str(tmp_path / "s.pt"), 4, calib_images=1)
    for name, method in (("w.pt", "lazydit"), ("s.pt", "lazydit-static")):
        payload = torch.load(tmp_path / name, weights_only=True)
        assert {k: payload[k] for k in ("model_name", "image_size", "steps", "method")} == \
               {"model_name": "embedded/digits-8", "image_size": 8, "steps": 4, "method": method}


# ----------------------------------------------------------------------------------------
#                           3, 6. Values checked at the edge, before work
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["-2", "0.5", "nan", "inf"])
def test_sample_refuses_a_guidance_scale_it_would_silently_change(tmp_path, capsys, value):
    assert main(sample_args(tmp_path, "--cfg-scale", value)) == 2
    assert "--cfg-scale" in one_line_error(capsys)


def tiny_suite(**overrides) -> dict:
    return {"name": "t", "models": ["embedded/digits-8"], "methods": ["ddim"], "steps": [2], "num_samples": 2,
            "batch_sizes": [2], "metrics": ["macs"], **overrides}


@pytest.mark.parametrize("overrides, message", [
    ({"cfg_scale": -1.0}, "cfg_scale=-1.0"),
    ({"cfg_scale": 0.5}, "cfg_scale=0.5"),
    ({"seeds": []}, "seeds is empty"),
    ({"seeds": [0, -3]}, "seed -3"),
    ({"seeds": [1, 1]}, "seed 1 appears more than once"),
    ({"steps": [5, 5]}, "appears twice"),
    ({"models": ["embedded/digits-8", "embedded/digits-8"]}, "appears twice"),
    ({"samplers": ["euler"]}, "unknown sampler 'euler'"),
    ({"etas": [-0.5]}, "eta=-0.5"),
    ({"samplers": []}, "samplers is empty"),
])
def test_suite_values_are_refused_at_load_time(overrides, message):
    with pytest.raises(ValueError, match=message):
        Suite.from_dict(tiny_suite(**overrides))


def test_a_missing_method_file_fails_before_any_cell_runs(tmp_path, capsys):
    path = tmp_path / "suite.toml"
    path.write_text(textwrap.dedent("""
        name = "t"
        steps = [2]
        num_samples = 2
        batch_sizes = [2]
        metrics = ["macs"]
        models = ["embedded/digits-8"]
        [[methods]]
        name = "ddim"
        [[methods]]
        name = "lazydit"
        args = { weights = "missing.pt" }
    """))
    assert main(["run", str(path), "--results-dir", str(tmp_path / "r"), "--quiet", "--no-tables"]) == 2
    assert "missing.pt" in one_line_error(capsys)
    assert not (tmp_path / "r" / "t" / "records.jsonl").exists()  # the ddim cell did not run first


@pytest.mark.parametrize("labels, message", [("1,2,3", "3 label"), ("1,12", "label 12"), ("a,b", "integers")])
def test_sample_refuses_labels_that_do_not_match_the_seeds(tmp_path, capsys, labels, message):
    assert main(sample_args(tmp_path, "--labels", labels)) == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize("seeds", ["-3", "2,2", "x-y"])
def test_sample_refuses_bad_seeds(tmp_path, capsys, seeds):
    args = sample_args(tmp_path)
    args[args.index("--seeds") + 1] = seeds
    assert main(args) == 2
    assert "--seeds" in one_line_error(capsys)


@pytest.mark.parametrize("flag, value", [("--iters", "-3"), ("--target-ratio", "1.5"), ("--batch-size", "0"),
                                         ("--cfg-scale", "0.5"), ("--lr", "0")])
def test_train_lazydit_refuses_bad_values_before_training(tmp_path, capsys, flag, value):
    out = tmp_path / "w.pt"
    args = ["train", "lazydit", "--model", "embedded/digits-8", "--steps-budget", "4", "--iters", "1", "--out", str(out)]
    assert main(args + [flag, value]) == 2
    assert flag in one_line_error(capsys) and not out.exists()


# ----------------------------------------------------------------------------------------
#                             5. One line instead of a traceback
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"\x00garbage bytes\xff", b"error: 101\n"])
def test_unreadable_checkpoint_and_weights_files_are_one_line(tmp_path, capsys, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    assert main(["sample", "--model", "DiT-S/2", "--checkpoint", str(bad), "--seeds", "0", "--out", str(tmp_path / "x.npz")]) == 2
    assert str(bad) in one_line_error(capsys)
    assert main(sample_args(tmp_path, *lazy_args(bad), steps="25")) == 2
    assert str(bad) in one_line_error(capsys)


@pytest.mark.parametrize("name, content", [("l.pt", b"junk"), ("l.npz", b"junk")])
def test_a_garbage_latents_file_is_one_error(tmp_path, name, content):
    from harness.models import load_model
    from lazydit.data import training_batches

    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=str(bad)):
        training_batches(load_model("embedded/digits-8"), f"latents:{bad}", 2)


def recorded_suite(tmp_path: Path) -> Path:
    """A one-cell suite with a record, and a valid-JSON line of the wrong shape after it."""
    path = tmp_path / "t.toml"
    path.write_text('name = "t"\nsteps = [2]\nnum_samples = 2\nbatch_sizes = [2]\nmetrics = ["macs"]\n'
                    'models = ["embedded/digits-8"]\nmethods = ["ddim"]\n')
    assert main(["run", str(path), "--results-dir", str(tmp_path / "r"), "--quiet", "--no-tables"]) == 0
    with open(tmp_path / "r" / "t" / "records.jsonl", "a") as fh:
        fh.write('{"status": "ok", "cell": 3}\n')
    return path


def test_a_record_line_of_the_wrong_shape_is_skipped_by_resume_table_and_check(tmp_path, capsys):
    suite = recorded_suite(tmp_path)
    results = str(tmp_path / "r")
    assert main(["run", str(suite), "--results-dir", results, "--resume", "--quiet", "--no-tables"]) == 0
    assert main(["table", str(suite), "--results-dir", results, "--print"]) == 0
    assert main(["check", str(suite), "--results-dir", results, "--baseline", str(tmp_path / "b.json"),
                 "--write-baseline"]) == 0
    assert main(["check", str(suite), "--results-dir", results, "--baseline", str(tmp_path / "b.json")]) == 0
    assert "not a record" in capsys.readouterr().err


def test_unwritable_outputs_are_one_line(tmp_path, capsys):
    suite = recorded_suite(tmp_path)
    results = str(tmp_path / "r")
    blocker = tmp_path / "a-file"  # a file where a folder should be: unwritable even for root
    blocker.write_text("")
    assert main(["table", str(suite), "--results-dir", results, "--print"]) == 0  # prints only
    capsys.readouterr()
    (tmp_path / "r" / "t" / "leaderboard.md").mkdir()  # a folder where the table goes
    assert main(["table", str(suite), "--results-dir", results]) == 2
    assert "leaderboard.md" in one_line_error(capsys)
    for args in (["check", str(suite), "--results-dir", results, "--baseline", str(blocker / "b.json"), "--write-baseline"],
                 sample_args(blocker)):
        assert main(args) == 2
        assert str(blocker) in one_line_error(capsys)


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"), ('{"suite": "t"}', "'tolerances'"),
                                              ("[]", "JSON list")])
def test_a_malformed_baseline_names_the_file(tmp_path, capsys, content, message):
    suite = recorded_suite(tmp_path)
    baseline = tmp_path / "b.json"
    baseline.write_text(content)
    assert main(["check", str(suite), "--results-dir", str(tmp_path / "r"), "--baseline", str(baseline)]) == 2
    err = one_line_error(capsys)
    assert str(baseline) in err and message in err


# ----------------------------------------------------------------------------------------
#                                   4. harness macs
# ----------------------------------------------------------------------------------------

def test_macs_runs_on_the_shipped_weights_seeded_and_agrees_with_the_records(tmp_path):
    from harness.commands.macs import compute_macs_record
    from harness.runner import RunContext, run_cell

    args = {"weights": str(WEIGHTS_8), "threshold": 0.5}
    first = compute_macs_record("embedded/digits-8", None, 25, "lazydit", args, num_images=6, batch_size=4)
    again = compute_macs_record("embedded/digits-8", None, 25, "lazydit", args, num_images=6, batch_size=4)
    assert first == again and first["decisions"] == "run" and 0.3 < first["skip_ratio"] < 0.6
    suite = Suite.from_dict(tiny_suite(steps=[25], num_samples=6, batch_sizes=[4],
                                       methods=[{"name": "lazydit", "args": args}]))
    record = run_cell(suite.cells()[0], RunContext())
    assert record["metrics"]["macs"] == {k: first[k] for k in record["metrics"]["macs"]}


def test_macs_text_output_uses_a_unit_that_fits_and_flags_match_the_other_commands(capsys):
    assert main(["macs", "--model", "embedded/digits-8", "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "MMACs" in out and " 0.0 " not in out
    assert main(["macs", "--model", "embedded/digits-8", "--steps", "25", "--checkpoint", "nope.pt", "--method",
                 "lazydit", "--method-args", json.dumps({"weights": str(WEIGHTS_8)})]) == 2


# ----------------------------------------------------------------------------------------
#                            7, 8, extras. Records and outputs
# ----------------------------------------------------------------------------------------

def test_records_carry_command_suite_hash_relative_paths_method_info_and_timed_macs(tmp_path):
    import shutil

    from harness.provenance import sha256_file
    from harness.store import RecordStore

    shutil.copy(WEIGHTS_8, tmp_path / "w.pt")
    path = tmp_path / "t.toml"
    path.write_text(textwrap.dedent("""
        name = "t"
        steps = [25]
        num_samples = 2
        batch_sizes = [2]
        metrics = ["macs", "latency"]
        models = ["embedded/digits-8"]
        [latency]
        warmup = 1
        repeats = 10
        batch = 2
        [[methods]]
        name = "lazydit"
        args = { weights = "w.pt", threshold = 0.5 }
    """))
    argv = ["run", str(path), "--results-dir", str(tmp_path / "r"), "--quiet", "--no-tables"]
    assert main(argv) == 0
    record = RecordStore.for_suite(tmp_path / "r", "t").read()[0]
    prov = record["provenance"]
    assert prov["command"].endswith(" ".join(argv[1:])) and prov["suite_sha256"] == sha256_file(path)
    assert "git_diff_sha256" in prov
    assert record["method_parameters"]["weights"] == "w.pt"
    assert record["method_info"]["name"] == "lazydit" and record["method_info"]["batch_coupled"] is False
    latency = record["metrics"]["latency"]
    timed = latency["timed_macs"]
    assert latency["timed_skip_ratio"] == timed["skip_ratio"] > 0
    assert latency["macs_implied_speedup"] == pytest.approx(
        timed["macs_all_per_image_full_compute"] / timed["macs_all_per_image"])


def test_the_git_state_ignores_results_folders(tmp_path):
    from harness.provenance import git_state, results_exclusions

    assert results_exclusions(REPO / "results" / "x", REPO) == ("results", "results/x")
    assert results_exclusions(tmp_path, REPO) == ("results",)
    state = git_state(str(REPO))
    assert state["git_commit"] is None or (state["git_diff_sha256"] is not None) == state["git_commit"].endswith("-dirty")


def test_sampler_and_eta_reach_the_cell_and_its_full_compute_reference():
    from harness.runner import RunContext, run_cell

    suite = Suite.from_dict(tiny_suite(samplers=["ddim", "ddpm"], etas=[0.0, 0.5], metrics=["fidelity"],
                                       methods=[AllCompute.name]))
    cells = suite.cells()
    assert [(c.sampler, c.eta) for c in cells] == [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 0.0)]
    assert len({c.cell_id() for c in cells}) == 3
    for cell in cells[1:]:
        fidelity = run_cell(cell, RunContext())["metrics"]["fidelity"]
        assert fidelity["latent_mse"] == 0.0  # against a reference drawn with the same sampler and eta


def test_sample_writes_labels_and_seeds_next_to_the_images(tmp_path):
    assert main(sample_args(tmp_path, "--labels", "3,4")) == 0
    with np.load(tmp_path / "s.npz") as data:
        assert data["arr_0"].shape[0] == 2 and data["labels"].tolist() == [3, 4] and data["seeds"].tolist() == [0, 1]


def test_the_fidelity_reference_key_follows_the_sampling_code(monkeypatch):
    from harness.metrics import fidelity
    from harness.models import load_model

    model = load_model("embedded/digits-8")
    key = lambda: fidelity.full_compute_reference(model, [0], [0], 2, 1.5).key  # noqa: E731
    first = key()
    monkeypatch.setattr(fidelity, "REFERENCE_CODE", (*fidelity.REFERENCE_CODE, "harness.store"))
    assert key() != first


def test_methods_with_equal_values_keep_distinct_visible_markers():
    import pandas as pd

    from harness.plots import pareto_figure

    rows = [{"macs.macs_linear_per_image": 1e6, "quality.fid": 2.0, "method": m, "params": "-", "steps": 5}
            for m in ("ddim", "lazydit")]
    lines = pareto_figure(pd.DataFrame(rows), "macs", "fid", "t").axes[0].lines[:2]
    assert lines[0].get_marker() != lines[1].get_marker()
    assert lines[0].get_markersize() > lines[1].get_markersize() and lines[1].get_fillstyle() == "none"


def test_results_folders_never_make_the_checkout_dirty(tmp_path):
    import subprocess

    from harness.provenance import git_state

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "records.jsonl").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    (tmp_path / "results" / "records.jsonl").write_text("{}\n{}\n")
    (tmp_path / "results" / "new.md").write_text("table\n")
    clean = git_state(str(tmp_path), ("results",))
    assert not clean["git_commit"].endswith("-dirty") and clean["git_diff_sha256"] is None
    (tmp_path / "code.py").write_text("x = 2\n")
    dirty = git_state.__wrapped__(str(tmp_path), ("results",))
    assert dirty["git_commit"].endswith("-dirty") and len(dirty["git_diff_sha256"]) == 64


@pytest.mark.parametrize("model, message", [
    ({"name": "embedded/digits-8", "resolutions": [16]}, "image_size=16"),
    ({"name": "embedded/digits-8", "evaluator": "domian"}, "'domian'"),
])
def test_suite_models_are_checked_at_load_time(model, message):
    with pytest.raises(ValueError, match=message):
        Suite.from_dict(tiny_suite(models=[model]))


def test_train_threads_must_be_positive(tmp_path, capsys):
    args = ["train", "lazydit", "--model", "embedded/digits-8", "--steps-budget", "4", "--threads", "0",
            "--out", str(tmp_path / "w.pt")]
    assert main(args) == 2 and "--threads" in one_line_error(capsys)
