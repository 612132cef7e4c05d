"""The runner on a tiny random DiT: records per DESIGN.md, resume, failures, filters, SIGKILL safety."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.methods import METHODS, MLP, Policy
from harness.models import MODELS, ModelSpec
from harness.models.dit import DiT, DiTConfig
from harness.runner import EVALUATORS, run_suite, select_cells
from harness.store import RecordStore
from harness.suite import Suite

TINY = "test/tiny-dit"
REPO = Path(__file__).resolve().parents[1]


def build_tiny(image_size: int = 8, **overrides) -> DiT:
    """A 2-block pixel-space DiT with random weights everywhere (16 tokens, 4 classes)."""
    model = DiT(DiTConfig(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2,
                          num_classes=4, **overrides))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    model.spec = ModelSpec(TINY, 8, 8, 1, 4, None, "dit")
    return model


def pixel_stats(images, labels, model, cell, reference, **options):
    """A stand-in quality evaluator: image statistics (the real ones need trained extractors)."""
    return {"mean_pixel": float(images.mean()), "fid": float(images.std())}


class SkipMLP(Policy):
    """Reuses nothing: drops every MLP branch at even step indices (changes images, halves MLP MACs)."""

    name = "test-skip-mlp"

    def branch(self, block, kind, fn, make_h):
        h = make_h()
        if kind == MLP and self.step % 2 == 0:
            self.log.branch[self.step, block, MLP, :] = 0
            return torch.zeros_like(h)
        return fn(h)


class WithFile(Policy):
    """Plain DDIM with a file argument (stands in for lazy weights)."""

    @dataclass(frozen=True)
    class Config:
        weights: str = ""

    name = "test-with-file"


class Failing(Policy):
    name = "test-failing"

    def start(self, run):
        raise RuntimeError("this method always fails")


for name, entry, registry in ((TINY, build_tiny, MODELS), ("test-stats", pixel_stats, EVALUATORS),
                              ("test-skip-mlp", SkipMLP, METHODS), ("test-failing", Failing, METHODS),
                              ("test-with-file", WithFile, METHODS)):
    if name not in registry:
        registry.register(name)(entry)


def tiny_suite(**overrides) -> Suite:
    data = {"name": "tiny", "models": [{"name": TINY, "random_init": True, "evaluator": "test-stats"}],
            "methods": ["ddim"], "steps": [2, 3], "num_samples": 4, "batch_sizes": [4],
            "metrics": ["quality", "fidelity", "macs", "memory"]}
    data.update(overrides)
    return Suite.from_dict(data)


def suite_toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(textwrap.dedent(body) + textwrap.dedent(f"""
        name = "tiny"
        batch_sizes = [4]
        metrics = ["quality", "fidelity", "macs"]
        [[models]]
        name = "{TINY}"
        random_init = true
        evaluator = "test-stats"
    """))
    return path


# ---- records ---------------------------------------------------------------------------------

def test_each_cell_appends_one_record_with_the_design_fields(tmp_path):
    summary = run_suite(tiny_suite(), tmp_path, progress=False)
    records = RecordStore.for_suite(tmp_path, "tiny").read()
    assert summary.ran == 2 and len(records) == 2
    r = records[0]
    assert r["cell"]["steps"] == 2 and r["cell"]["method"] == "ddim" and r["config_hash"] == r["provenance"]["config_hash"]
    assert r["seeds"]["count"] == 4 and r["seeds"]["suite_seed"] == 0
    assert {"quality", "fidelity", "macs", "memory", "laziness"} <= set(r["metrics"])
    assert r["metrics"]["macs"]["macs_all_per_image"] > r["metrics"]["macs"]["macs_linear_per_image"] > 0
    assert {"git_commit", "packages", "torch_threads", "tf32_matmul", "device_name", "files_sha256"} <= set(r["provenance"])
    assert {"started", "finished"} <= set(r["timestamps"])


def test_method_cell_measures_fidelity_macs_and_laziness_against_full_ddim(tmp_path):
    run_suite(tiny_suite(methods=["ddim", "test-skip-mlp"], steps=[4]), tmp_path, progress=False)
    ddim, skip = RecordStore.for_suite(tmp_path, "tiny").read()
    assert skip["metrics"]["laziness"]["mlp"] == 0.5 and skip["metrics"]["laziness"]["attn"] == 0.0
    assert skip["metrics"]["laziness"]["per_step"] == [[0.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    assert skip["metrics"]["laziness"]["per_block"] == [[0.0, 0.5], [0.0, 0.5]]
    assert skip["metrics"]["macs"]["macs_linear_per_image"] < ddim["metrics"]["macs"]["macs_linear_per_image"]
    assert skip["metrics"]["fidelity"]["latent_mse"] > 0 and skip["metrics"]["fidelity"]["ssim"] < 1
    assert ddim["metrics"]["fidelity"] == {"reference": "self"}


def test_latency_times_method_and_ddim_in_the_same_cell(tmp_path):
    suite = tiny_suite(methods=["test-skip-mlp"], steps=[2], metrics=["latency"], latency={"batch": 1})
    run_suite(suite, tmp_path, progress=False)
    latency = RecordStore.for_suite(tmp_path, "tiny").read()[0]["metrics"]["latency"]
    assert len(latency["values_s"]) == 10 and len(latency["ddim"]["values_s"]) == 10
    assert latency["speedup"] == pytest.approx(latency["ddim"]["median_s"] / latency["median_s"])


class CoupledSkip(Policy):
    """A batch-coupled stand-in: computes everything, says it pools over the batch."""

    name = "test-coupled"
    batch_coupled = True


if "test-coupled" not in METHODS:
    METHODS.register("test-coupled")(CoupledSkip)


def test_batch_coupled_latency_times_the_quality_runs_first_batch(tmp_path):
    suite = tiny_suite(methods=[{"name": "test-coupled", "batch_sizes": [2]}], steps=[2], metrics=["latency"],
                       latency={"batch": 3})
    run_suite(suite, tmp_path, progress=False)
    record = RecordStore.for_suite(tmp_path, "tiny").read()[0]
    assert record["cell"]["batch_size"] == 2 and record["metrics"]["latency"]["images"] == 2
    assert record["metrics"]["batch_composition"]["timed"] == "the quality run's first batch"
    assert record["method_info"]["batch_coupled"] is True


def test_uncoupled_latency_times_the_latency_batch(tmp_path):
    run_suite(tiny_suite(methods=["test-skip-mlp"], steps=[2], metrics=["latency"], latency={"batch": 3}), tmp_path,
              progress=False)
    record = RecordStore.for_suite(tmp_path, "tiny").read()[0]
    assert record["metrics"]["latency"]["images"] == 3 and "batch_composition" not in record["metrics"]


def test_resume_skips_cells_recorded_with_the_same_config_hash(tmp_path):
    run_suite(tiny_suite(), tmp_path, progress=False)
    before = RecordStore.for_suite(tmp_path, "tiny").path.read_bytes()
    summary = run_suite(tiny_suite(steps=[2, 3, 4]), tmp_path, resume=True, progress=False)
    assert (summary.ran, summary.skipped) == (1, 2)
    assert RecordStore.for_suite(tmp_path, "tiny").path.read_bytes().startswith(before)


def test_resume_reruns_a_cell_whose_method_file_changed(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save({"version": 1}, weights)
    suite = tiny_suite(methods=[{"name": "test-with-file", "args": {"weights": str(weights)}}], steps=[2])
    run_suite(suite, tmp_path, progress=False)
    assert run_suite(suite, tmp_path, resume=True, progress=False).skipped == 1
    torch.save({"version": 2}, weights)
    summary = run_suite(suite, tmp_path, resume=True, progress=False)
    assert (summary.ran, summary.skipped) == (1, 0)


def test_rerun_without_resume_replaces_records_instead_of_duplicating(tmp_path):
    run_suite(tiny_suite(), tmp_path, progress=False)
    run_suite(tiny_suite(), tmp_path, progress=False)
    assert len(RecordStore.for_suite(tmp_path, "tiny").read()) == 2


def test_failed_cell_is_reported_the_rest_recorded_and_the_run_exits_nonzero(tmp_path, capsys):
    path = suite_toml(tmp_path, """
        steps = [2]
        num_samples = 4
        methods = ["test-failing", "ddim"]
    """)
    assert main(["run", str(path), "--results-dir", str(tmp_path / "r"), "--quiet", "--no-tables"]) == 1
    err = capsys.readouterr().err
    assert "FAILED tiny/" not in err and "test-failing" in err and "this method always fails" in err
    assert [r["cell"]["method"] for r in RecordStore.for_suite(tmp_path / "r", "tiny").read()] == ["ddim"]


def test_only_filter_selects_by_field_glob_or_id_substring():
    cells = tiny_suite(steps=[2, 3, 10]).cells()
    assert [c.steps for c in select_cells(cells, "steps=?")] == [2, 3]
    assert [c.steps for c in select_cells(cells, "steps=10,method=ddim")] == [10]
    assert len(select_cells(cells, "ddim()/steps=3/")) == 1
    with pytest.raises(ValueError, match="unknown field 'step'.*accepted: .*steps"):
        select_cells(cells, "step=2")


# ---- SIGKILL ---------------------------------------------------------------------------------

KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import test_runner  # registers the tiny model and evaluator
from harness.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_loses_at_most_the_cell_in_flight_and_rerun_completes(tmp_path):
    path = suite_toml(tmp_path, """
        steps = [2, 3, 4, 5, 6, 7, 8, 9]
        num_samples = 16
        methods = ["ddim"]
    """)
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    args = [sys.executable, str(script), "run", str(path), "--results-dir", str(tmp_path / "r"), "--quiet", "--no-tables"]
    records = tmp_path / "r" / "tiny" / "records.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args + ["--resume"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (records.is_file() and records.stat().st_size > 0):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    data = records.read_bytes()
    complete = [json.loads(line) for line in data.split(b"\n")[:-1]]  # every complete line parses
    assert 1 <= len(complete) < 8
    assert subprocess.run(args + ["--resume"], cwd=REPO, env=env, capture_output=True).returncode == 0
    final = RecordStore(records).read()
    assert sorted(r["cell"]["steps"] for r in final) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert [r["config_hash"] for r in final[:len(complete)]] == [r["config_hash"] for r in complete]


def test_cost_only_cells_do_not_decode(tmp_path, monkeypatch):
    import harness.sampling

    def no_vae(*args, **kwargs):
        raise AssertionError("decoded although no metric needs images")

    monkeypatch.setattr(harness.sampling, "decode_latents", no_vae)
    summary = run_suite(tiny_suite(steps=[2], metrics=["macs", "memory"]), tmp_path, progress=False)
    assert summary.failed == [] and summary.ran == 1
