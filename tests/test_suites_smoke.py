"""Every shipped suite parses and expands; the smoke suite's cells run end to end on a tiny model."""
from __future__ import annotations

import pytest
import torch

from harness.check import compare, make_baseline
from harness.runner import run_suite
from harness.store import RecordStore
from harness.suite import Suite, load_suite, shipped_suites
from harness.tables import current_records, write_reports
from test_runner import TINY, build_tiny  # noqa: F401  (registers the tiny model and the test evaluator)


@pytest.mark.parametrize("name", shipped_suites())
def test_shipped_suite_expands_into_uniquely_hashed_cells(name):
    suite = load_suite(name)
    cells = suite.cells()
    assert cells and len({c.config_hash() for c in cells}) == len(cells)
    assert Suite.from_dict(suite.to_dict()) == suite


def test_smoke_suite_covers_both_embedded_models_and_several_budgets():
    suite = load_suite("smoke")
    assert {m.name for m in suite.models} == {"embedded/digits-8", "embedded/digits-16"}
    assert len(suite.steps) >= 3 and len(suite.seeds) >= 2 and suite.devices == ("cpu",)


STAND_IN_KEYS = ("weights", "schedule", "router", "calibration")  # method arguments that name a model-specific file


def stand_in_file(key: str, steps: int, path) -> str:
    """A random lazy-weights file, static schedule, L2C router or TeaCache calibration that fits the tiny model
    at `steps`."""
    model = build_tiny()
    gen = torch.Generator().manual_seed(0)
    if key == "router":
        from baselines.l2c import save_routers

        save_routers(torch.randn(steps, 2 * model.depth, generator=gen), path, model_name=TINY, steps=steps)
    elif key == "calibration":
        from harness.cache import atomic_write_json
        from baselines.teacache import CALIBRATION_FORMAT, IDENTITY

        atomic_write_json(path, {"format": CALIBRATION_FORMAT, "coefficients": list(IDENTITY), "model": TINY,
                                 "image_size": model.spec.image_size, "steps": steps})
    elif key == "weights":
        from lazydit import LazyLayers, save_lazy_weights

        layers = LazyLayers(steps, model.depth, model.config.hidden_size)
        torch.nn.init.normal_(layers.weight, std=0.05, generator=gen)
        save_lazy_weights(layers, path)
    else:
        from lazydit.static import save_schedule

        save_schedule(torch.rand(steps, model.depth, 2, generator=gen) > 0.3, path)
    return str(path)


def tiny_version(suite: Suite, tmp_path) -> Suite:
    """The suite's methods, seed sets, metrics and execution modes on the tiny random DiT on the CPU: 4 images,
    2 and 4 steps (2 for a method's own budgets), the first value of each sweep, torch.compile's "eager" backend."""
    data = suite.to_dict()
    data.update(models=[{"name": TINY, "random_init": True, "evaluator": "test-stats"}], num_samples=4,
                batch_sizes=[4], primary_metric="fid", latency=dict(data["latency"], batch=1, warmup=1), steps=[2, 4],
                devices=["cpu"], dtypes=["float32"], compile_backend="eager")  # compile modes traced, not code-generated
    for m, method in enumerate(data["methods"]):
        method["steps"] = [2] if method["steps"] else []
        method["models"] = []
        method["sweep"] = {k: v[:1] for k, v in method["sweep"].items()}
        for key in STAND_IN_KEYS:
            template = str(tmp_path / f"{m}-{key}-{{i}}-{{{{steps}}}}.{'json' if key == 'calibration' else 'pt'}")
            for s in (2, 4):
                if key in method["args"]:
                    stand_in_file(key, s, template.format(i=0).format(steps=s))
                for i, _ in enumerate(method["sweep"].get(key, [])):
                    stand_in_file(key, s, template.format(i=i).format(steps=s))
            if key in method["args"]:
                method["args"][key] = template.format(i=0)
            if key in method["sweep"]:
                method["sweep"][key] = [template.format(i=i) for i in range(len(method["sweep"][key]))]
    return Suite.from_dict(data)


@pytest.mark.parametrize("name", shipped_suites())
def test_shipped_suite_runs_tables_and_gates_on_a_tiny_model(name, tmp_path, one_thread):
    suite = tiny_version(load_suite(name), tmp_path)
    summary = run_suite(suite, tmp_path / "results", progress=False)
    assert summary.failed == [] and summary.ran == len(suite.cells())
    records = current_records(suite, tmp_path / "results")
    assert len(records) == len(RecordStore.for_suite(tmp_path / "results", suite.name).read()) == summary.ran
    names = {p.name for p in write_reports(suite, tmp_path / "results")}
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard.tex"} <= names
    if "quality" in suite.metrics:  # Pareto plots put quality against cost; cost-only (perf) suites have none
        assert any(n.endswith("-macs.png") for n in names) and any(n.endswith("-latency.png") for n in names)
    assert compare(make_baseline(suite, records), records)[0] == []
