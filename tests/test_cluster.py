"""Cells as submitit jobs: records equal to inline ones, merge without loss or duplicates, kills, status, retry.

Jobs run on submitit's real local executor (subprocesses) with the shipped embedded/digits-8 model; only
Slurm itself is stood in for, by rendering the sbatch script submitit would send.
"""
from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.cluster.config import SlurmConfig
from harness.cluster.job import CellJob, JobSpec
from harness.cluster.merge import merge_finished
from harness.cluster.report import suite_status
from harness.cluster.run import run_suite_as_jobs
from harness.cluster.state import STARTED, CellJobFiles, cell_status
from harness.cluster.submit import executor_parameters, job_groups
from harness.runner import run_suite
from harness.store import RecordStore
from harness.suite import Suite, SpecError, load_suite

submitit = pytest.importorskip("submitit")

COMPARED = ("quality", "fidelity", "macs", "laziness")


def digits_suite(tmp_path: Path, steps: str = "[2, 3]", metrics: str = '["quality", "fidelity", "macs"]',
                 slurm: str = "") -> Path:
    path = tmp_path / "jobs.toml"
    path.write_text(textwrap.dedent(f"""
        name = "jobs"
        steps = {steps}
        num_samples = 8
        batch_sizes = [4]
        metrics = {metrics}
        [[models]]
        name = "embedded/digits-8"
        [[methods]]
        name = "ddim"
    """) + slurm)
    return path


def records(results: Path) -> list[dict]:
    return RecordStore.for_suite(results, "jobs").read()


def wait_until(predicate, timeout_s: float = 180.0) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def states(suite: Suite, results: Path) -> list[str]:
    return [row.status.state for row in suite_status(suite.cells(), "jobs", results)]


def fake_record(config_hash: str, value: float) -> dict:
    return {"config_hash": config_hash, "variant_hash": "v", "model_info": {}, "provenance": {},
            "cell": {"model": "m", "device": "cpu", "dtype": "float32", "batch_size": 1, "method": "ddim",
                     "method_args": {}, "steps": 2, "seed": 0}, "metrics": {"x": value}}


# ---- the [slurm] table and flags ---------------------------------------------------------

def test_slurm_table_is_read_from_the_suite_and_flags_override_it(tmp_path):
    suite = load_suite(digits_suite(tmp_path, slurm='[slurm]\npartition = "gpu"\nqos = "normal"\ncells_per_job = 2\n'))
    assert (suite.slurm.partition, suite.slurm.qos, suite.slurm.cells_per_job) == ("gpu", "normal", 2)
    config = suite.slurm.with_overrides({"partition": "long", "account": "lab"})
    assert (config.partition, config.account, config.qos) == ("long", "lab", "normal")


def test_unknown_slurm_key_is_rejected_by_name(tmp_path):
    with pytest.raises(SpecError, match="unknown key 'slurm.gpus'; accepted keys: partition"):
        load_suite(digits_suite(tmp_path, slurm="[slurm]\ngpus = 8\n"))


def test_slurm_resources_reach_the_sbatch_script(tmp_path, monkeypatch):
    srun = tmp_path / "bin" / "srun"  # submitit checks that it is on a Slurm node; the script is only rendered
    srun.parent.mkdir()
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{srun.parent}{os.pathsep}{os.environ['PATH']}")
    config = SlurmConfig(partition="gpu", account="lab", qos="high", timeout_min=90, cpus_per_task=6, mem_gb=40)
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(**executor_parameters("slurm", config, ranks=4, gpus=True, name="harness-smoke"))
    script = executor._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--account=lab", "--qos=high", "--time=90", "--cpus-per-task=6", "--mem=40GB",
                 "--gpus-per-node=4", "--ntasks-per-node=4", "--job-name=harness-smoke"):
        assert f"#SBATCH {line}\n" in script


def test_cells_are_grouped_into_jobs_by_needs_and_sharded_from_the_image_threshold(tmp_path):
    cells = load_suite(digits_suite(tmp_path, steps="[2, 3, 4]")).cells()
    groups = job_groups(cells, SlurmConfig(cells_per_job=2, ranks_per_cell=4, shard_min_images=8))
    assert [(ranks, len(chunk)) for ranks, _, chunk in groups] == [(4, 2), (4, 1)]
    assert job_groups(cells, SlurmConfig(ranks_per_cell=4, shard_min_images=9))[0][0] == 1


def test_job_flags_without_a_job_executor_are_one_clear_error(tmp_path, capsys):
    assert main(["run", str(digits_suite(tmp_path)), "--partition", "gpu", "--results-dir", str(tmp_path)]) == 2
    assert "--partition only apply to jobs; add --executor local or --executor slurm" in capsys.readouterr().err


# ---- merge -------------------------------------------------------------------------------

def test_merge_appends_each_finished_record_once_and_removes_its_file(tmp_path):
    for i, config_hash in enumerate(("a1", "b2")):
        CellJobFiles.of(tmp_path, "jobs", config_hash).write_record(fake_record(config_hash, i))
    assert merge_finished(tmp_path, "jobs") == 2
    assert [r["config_hash"] for r in records(tmp_path)] == ["a1", "b2"]
    assert not list((tmp_path / "jobs" / "jobs" / "cells").iterdir())
    assert merge_finished(tmp_path, "jobs") == 0 and len(records(tmp_path)) == 2


def test_merge_stopped_after_appending_does_not_duplicate_on_the_next_merge(tmp_path):
    files = CellJobFiles.of(tmp_path, "jobs", "a1")
    files.write_record(fake_record("a1", 1.0))
    merge_finished(tmp_path, "jobs")
    files.write_record(fake_record("a1", 1.0))  # as if the merge had died before removing the file
    assert merge_finished(tmp_path, "jobs") == 0
    assert len(RecordStore.for_suite(tmp_path, "jobs").path.read_bytes().splitlines()) == 1


def test_merge_keeps_earlier_records_and_a_newer_record_of_a_cell_replaces_its_old_one(tmp_path):
    store = RecordStore.for_suite(tmp_path, "jobs")
    store.append(fake_record("old", 0.0))
    store.append(fake_record("a1", 1.0))
    CellJobFiles.of(tmp_path, "jobs", "a1").write_record(fake_record("a1", 2.0))
    merge_finished(tmp_path, "jobs")
    assert [(r["config_hash"], r["metrics"]["x"]) for r in store.read()] == [("old", 0.0), ("a1", 2.0)]


def test_an_unreadable_record_file_is_left_in_place_with_a_warning(tmp_path, capsys):
    files = CellJobFiles.of(tmp_path, "jobs", "a1")
    files.folder.mkdir(parents=True)
    (files.folder / "record.json").write_text('{"config_hash": ')
    assert merge_finished(tmp_path, "jobs") == 0
    assert (files.folder / "record.json").exists() and "not merged" in capsys.readouterr().err


# ---- jobs on the local executor --------------------------------------------------------------

def test_local_executor_records_equal_the_inline_run(tmp_path):
    suite = load_suite(digits_suite(tmp_path))
    summary = run_suite_as_jobs(suite, tmp_path / "jobs", "local", overrides={"cells_per_job": 2})
    assert (summary.ran, summary.failed, summary.queued) == (2, [], 0)
    run_suite(suite, tmp_path / "inline", progress=False)
    jobs = {r["config_hash"]: r for r in records(tmp_path / "jobs")}
    inline = {r["config_hash"]: r for r in records(tmp_path / "inline")}
    assert jobs.keys() == inline.keys()
    for config_hash, record in jobs.items():
        assert {k: record["metrics"][k] for k in COMPARED} == {k: inline[config_hash]["metrics"][k] for k in COMPARED}
        assert record["provenance"]["job"]["ranks"] == 1
    assert states(suite, tmp_path / "jobs") == ["done", "done"]


def test_a_failing_cell_is_written_down_and_the_job_goes_on(tmp_path, monkeypatch):
    import harness.runner

    suite = load_suite(digits_suite(tmp_path, metrics='["macs"]'))
    first, second = suite.cells()
    real_run_cell = harness.runner.run_cell
    monkeypatch.setattr(harness.runner, "run_cell", lambda cell, ctx: (_ for _ in ()).throw(RuntimeError("disk full"))
                        if cell == first else real_run_cell(cell, ctx))
    spec = JobSpec(suite="jobs", results_dir=str(tmp_path), cells=(first, second))
    for cell in spec.cells:
        spec.files(cell).mark_submitted({"executor": "local", "job_id": "7"})
    assert CellJob()(spec) == [(first.cell_id(), "RuntimeError: disk full")]
    assert [cell_status(spec.files(c), False).state for c in spec.cells] == ["failed", "done"]
    assert cell_status(spec.files(first), False).detail == "RuntimeError: disk full"


def test_a_cell_already_queued_is_not_submitted_again(tmp_path, capsys):
    suite = load_suite(digits_suite(tmp_path, steps="[2]"))
    files = CellJobFiles.of(tmp_path, "jobs", suite.cells()[0].config_hash())
    files.mark_submitted({"executor": "local", "job_id": "42", "job_pid": os.getpid()})  # a live local job
    summary = run_suite_as_jobs(suite, tmp_path, "local")
    assert (summary.ran, summary.skipped, summary.queued) == (0, 1, 0)
    assert "already queued or running as job 42" in capsys.readouterr().err


def test_a_preempted_job_is_requeued_with_the_cells_that_have_no_record_yet(tmp_path):
    done, in_flight, waiting = load_suite(digits_suite(tmp_path, steps="[2, 3, 4]")).cells()
    spec = JobSpec(suite="jobs", results_dir=str(tmp_path), cells=(done, in_flight, waiting))
    for cell in spec.cells:
        spec.files(cell).mark_submitted({"executor": "slurm", "job_id": "9_0"})
    spec.files(done).write_record(fake_record(done.config_hash(), 1.0))
    requeued = CellJob().checkpoint(spec)
    assert isinstance(requeued.function, CellJob) and requeued.args[0].cells == (in_flight, waiting)


def test_job_killed_mid_cell_keeps_finished_cells_reports_the_rest_and_resume_reruns_them(tmp_path, capsys):
    path = digits_suite(tmp_path, steps="[2, 20, 3]", metrics='["macs"]')
    suite = load_suite(path)
    results = tmp_path / "r"
    run_suite_as_jobs(suite, results, "local", wait=False, overrides={"cells_per_job": 3})
    first, in_flight, never_started = suite.cells()
    started = CellJobFiles.of(results, "jobs", in_flight.config_hash()).folder / STARTED
    wait_until(started.exists)
    os.kill(json.loads(started.read_text())["pid"], signal.SIGKILL)
    wait_until(lambda: "queued" not in states(suite, results) and "running" not in states(suite, results))

    assert main(["status", str(path), "--results-dir", str(results)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("done     embedded/digits-8@native/ddim()/steps=2/") and " job " in out[0]
    assert out[1].startswith("failed   embedded/digits-8@native/ddim()/steps=20/") and "killed mid-cell" in out[1]
    assert any("the job ended before the cell started" in line for line in out)
    assert any(line.startswith("         | ") for line in out)  # the job log's last lines
    assert merge_finished(results, "jobs") == 1
    assert suite_status(suite.cells(), "jobs", results)[0].status.job_id is not None  # merged: from its record
    kept = RecordStore.for_suite(results, "jobs").path.read_bytes()

    summary = run_suite_as_jobs(suite, results, "local", resume=True, overrides={"cells_per_job": 3})
    assert (summary.ran, summary.skipped, summary.failed) == (2, 1, [])
    final = records(results)
    assert RecordStore.for_suite(results, "jobs").path.read_bytes().startswith(kept)
    assert sorted(r["cell"]["steps"] for r in final) == [2, 3, 20]
    assert states(suite, results) == ["done", "done", "done"]


def test_retry_failed_resubmits_a_failed_cell_with_its_earlier_resources(tmp_path, capsys):
    path = digits_suite(tmp_path, steps="[2]", metrics='["macs"]')
    suite = load_suite(path)
    results = tmp_path / "r"
    files = CellJobFiles.of(results, "jobs", suite.cells()[0].config_hash())
    files.mark_submitted({"executor": "local", "job_id": "1", "settings": {"timeout_min": 30}})
    files.mark_failed("NodeFailure: node died", "")
    assert main(["status", str(path), "--results-dir", str(results), "--retry-failed"]) == 0
    assert "resubmitted 1 failed cell(s)" in capsys.readouterr().err
    assert files.read("submitted.json")["settings"]["timeout_min"] == 30
    wait_until(lambda: states(suite, results) == ["done"])
    assert main(["table", str(path), "--results-dir", str(results)]) == 0  # table merges the finished record
    assert [r["cell"]["steps"] for r in records(results)] == [2]


@pytest.mark.slow
def test_a_cell_sharded_across_two_ranks_records_what_one_process_records(tmp_path):
    suite = load_suite(digits_suite(tmp_path, steps="[3]"))  # 8 images, batches of 4: one batch per rank
    summary = run_suite_as_jobs(suite, tmp_path / "sharded", "local", overrides={"ranks_per_cell": 2})
    assert summary.failed == []
    run_suite(suite, tmp_path / "inline", progress=False)
    [sharded], [inline] = records(tmp_path / "sharded"), records(tmp_path / "inline")
    assert sharded["provenance"]["job"]["ranks"] == 2
    assert {k: sharded["metrics"][k] for k in COMPARED} == {k: inline["metrics"][k] for k in COMPARED}
