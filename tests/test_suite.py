"""Suite specs: typed parsing with errors that name the key, expansion into cells, hashes and seeds."""
from __future__ import annotations

import pytest

from harness.suite import Cell, SpecError, Suite, image_seed, load_suite, shipped_suites

MODEL = "embedded/digits-8"


def spec(**overrides) -> dict:
    data = {"name": "t", "models": [MODEL], "methods": ["ddim"], "steps": [5, 10], "num_samples": 8}
    data.update(overrides)
    return data


# ---- parsing ---------------------------------------------------------------------------------

def test_unknown_top_level_key_is_named_with_the_accepted_keys():
    with pytest.raises(SpecError, match=r"unknown key 'step_budgets'; accepted keys: name, models, methods, steps"):
        Suite.from_dict(spec(step_budgets=[5]))


def test_unknown_nested_key_names_its_section():
    with pytest.raises(SpecError, match=r"unknown key 'latency.repeat'; accepted keys: warmup, repeats, batch"):
        Suite.from_dict(spec(latency={"repeat": 10}))


def test_missing_required_key_is_named():
    data = spec()
    del data["steps"]
    with pytest.raises(SpecError, match="missing key 'steps'"):
        Suite.from_dict(data)


def test_wrong_type_names_key_and_accepted_type():
    with pytest.raises(SpecError, match=r"cfg_scale = 'high' has the wrong type; accepted: float"):
        Suite.from_dict(spec(cfg_scale="high"))


def test_unknown_method_lists_registered_methods():
    with pytest.raises(SpecError, match=r"methods.name: unknown method 'lazy'; accepted: .*ddim"):
        Suite.from_dict(spec(methods=["lazy"]))


def test_unknown_model_lists_registered_models():
    with pytest.raises(SpecError, match=r"models.name: unknown model 'DiT-XXL/2'; accepted: .*dit-xl/2"):
        Suite.from_dict(spec(models=["DiT-XXL/2"]))


def test_unknown_method_argument_lists_the_methods_parameters():
    with pytest.raises(SpecError, match=r"unknown argument 'threshold' for method 'ddim'.*accepted: none"):
        Suite.from_dict(spec(methods=[{"name": "ddim", "args": {"threshold": 0.5}}]))


@pytest.mark.parametrize("key, value, accepted", [
    ("dtypes", ["fp8"], "float32, tf32, bfloat16, float16"),
    ("metrics", ["vibes"], "quality, fidelity, macs, latency, memory"),
    ("devices", ["tpu"], "cpu, cuda, mps"),
])
def test_unknown_axis_value_lists_the_accepted_values(key, value, accepted):
    with pytest.raises(SpecError, match=f"{value[0]!r} in {key}; accepted: {accepted}"):
        Suite.from_dict(spec(**{key: value}))


def test_invalid_step_budget_is_rejected():
    with pytest.raises(SpecError, match="steps"):
        Suite.from_dict(spec(steps=[0]))


def test_latency_protocol_minimum_is_enforced():
    with pytest.raises(SpecError, match="repeats >= 10"):
        Suite.from_dict(spec(latency={"repeats": 3}))


def test_to_dict_round_trips():
    suite = Suite.from_dict(spec(methods=[{"name": "ddim"}], seeds=[0, 1], latency={"batch": 4}))
    assert Suite.from_dict(suite.to_dict()) == suite


def test_cell_to_dict_round_trips():
    cell = Suite.from_dict(spec()).cells()[0]
    assert Cell.from_dict(cell.to_dict()) == cell


# ---- expansion -------------------------------------------------------------------------------

def test_axes_expand_into_their_product():
    suite = Suite.from_dict(spec(models=[MODEL, "embedded/digits-16"], steps=[5, 10, 20], seeds=[0, 1],
                                 batch_sizes=[8, 16]))
    assert len(suite.cells()) == 2 * 3 * 2 * 2


def test_method_steps_override_the_suite_steps():
    suite = Suite.from_dict(spec(methods=["ddim", {"name": "ddim", "steps": [50]}]))
    assert [c.steps for c in suite.cells()] == [5, 10, 50]


def test_method_batch_sizes_override_the_suite_batch_sizes():
    suite = Suite.from_dict(spec(methods=["ddim", {"name": "ddim", "steps": [50], "batch_sizes": [16]}], batch_sizes=[64]))
    assert [(c.steps, c.batch_size) for c in suite.cells()] == [(5, 64), (10, 64), (50, 16)]


def test_method_batch_size_below_one_is_refused():
    with pytest.raises(SpecError, match="batch_sizes"):
        Suite.from_dict(spec(methods=[{"name": "ddim", "batch_sizes": [0]}]))


def test_sweep_expands_method_arguments(monkeypatch):
    from dataclasses import dataclass

    from harness.methods import METHODS, Policy

    @dataclass(frozen=True)
    class Config:
        threshold: float = 0.5
        weights: str = ""

    class Swept(Policy):
        pass

    Swept.Config = Config
    monkeypatch.setitem(METHODS._entries, "swept-test", Swept)
    suite = Suite.from_dict(spec(methods=[{"name": "swept-test", "args": {"weights": "w-{steps}.pt"},
                                           "sweep": {"threshold": [0.3, 0.7]}}], steps=[5]))
    assert [c.method_args for c in suite.cells()] == [{"weights": "w-5.pt", "threshold": 0.3},
                                                     {"weights": "w-5.pt", "threshold": 0.7}]


def test_templates_fill_model_and_resolution():
    suite = Suite.from_dict(spec(models=[{"name": "DiT-XL/2", "resolutions": [256, 512],
                                          "checkpoint": "DiT-XL-2-{resolution}x{resolution}.pt"}]))
    assert [c.checkpoint for c in suite.cells()][::2] == ["DiT-XL-2-256x256.pt", "DiT-XL-2-512x512.pt"]


def test_unknown_template_placeholder_is_named():
    with pytest.raises(SpecError, match=r"unknown placeholder 'res'.*accepted: model, model_slug, resolution"):
        Suite.from_dict(spec(models=[{"name": MODEL, "checkpoint": "x-{res}.pt"}])).cells()


# ---- hashes and seeds ------------------------------------------------------------------------

def test_config_hash_is_stable_and_changes_with_any_axis():
    a, b = Suite.from_dict(spec()).cells(), Suite.from_dict(spec()).cells()
    assert [c.config_hash() for c in a] == [c.config_hash() for c in b]
    assert a[0].config_hash() != a[1].config_hash()  # steps differ
    other = Suite.from_dict(spec(cfg_scale=4.0)).cells()[0]
    assert other.config_hash() != a[0].config_hash()


def test_variant_hash_ignores_only_the_seed_set():
    cells = Suite.from_dict(spec(steps=[5], seeds=[0, 1])).cells()
    assert cells[0].config_hash() != cells[1].config_hash()
    assert cells[0].variant_hash() == cells[1].variant_hash()


def test_image_seed_depends_only_on_suite_seed_and_index():
    small = Suite.from_dict(spec(batch_sizes=[2], num_samples=4)).cells()[0]
    large = Suite.from_dict(spec(batch_sizes=[64], num_samples=16, steps=[50])).cells()[0]
    assert large.image_seeds()[:4] == small.image_seeds() == [image_seed(0, i) for i in range(4)]
    assert len(set(large.image_seeds())) == 16


def test_seed_sets_draw_different_seeds():
    assert image_seed(0, 3) != image_seed(1, 3)


# ---- loading ---------------------------------------------------------------------------------

def test_unknown_suite_name_lists_shipped_suites():
    with pytest.raises(SpecError, match=r"unknown suite 'smok'; accepted: .*smoke"):
        load_suite("smok")


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("name = 'x'\nmodels = [\n")
    with pytest.raises(SpecError, match="bad.toml: invalid TOML"):
        load_suite(path)


def test_shipped_suites_include_smoke():
    assert "smoke" in shipped_suites()


def test_latency_is_timed_in_the_first_seed_sets_only():
    cells = Suite.from_dict(spec(steps=[5], seeds=[0, 1, 2], latency={"seed_sets": 2})).cells()
    assert [c.measures("latency") for c in cells] == [True, True, False]
    assert all(c.measures("quality") for c in cells)


def test_method_entry_can_be_limited_to_some_models():
    suite = Suite.from_dict(spec(models=[MODEL, "embedded/digits-16"], steps=[5],
                                 methods=["ddim", {"name": "ddim", "steps": [50], "models": ["embedded/digits-16"]}]))
    assert [(c.model, c.steps) for c in suite.cells()] == [(MODEL, 5), ("embedded/digits-16", 5), ("embedded/digits-16", 50)]


def test_method_models_must_be_suite_models():
    with pytest.raises(SpecError, match=r"'embedded/digits-16' is not one of the suite's models; accepted: embedded/digits-8"):
        Suite.from_dict(spec(methods=[{"name": "ddim", "models": ["embedded/digits-16"]}]))
