"""The checkpoint-free performance suites: random weights, cost metrics only, every method, batch 1/8/64, eager and
compiled; their synthetic LazyDiT schedules; one-batch cells. (They run end to end in test_suites_smoke.py.)"""
from __future__ import annotations

import pytest
import torch

from harness import build_model
from harness.methods import METHODS
from harness.models.random_weights import perturb_zero_linears
from harness.suite import SpecError, load_suite
from lazydit.perf_schedules import PAPER_LEVELS, PERF_DIR, schedule_name, spread_schedule
from lazydit.static import read_schedule_file
from test_runner import tiny_suite

PERF_SUITES = ("perf-dit-xl2-256", "perf-dit-xl2-512", "perf-large-dit-3b")
CACHING = ("l2c", "fora", "taylorseer", "toca", "delta-dit", "ab-cache", "teacache", "fbcache")


@pytest.mark.parametrize("name", PERF_SUITES)
def test_perf_suite_needs_no_checkpoint_and_measures_cost_only(name):
    suite = load_suite(name)
    assert all(m.random_init and m.checkpoint is None for m in suite.models)
    assert set(suite.metrics) == {"macs", "latency", "memory"}
    assert suite.batch_sizes == (1, 8, 64) and suite.modes == ("eager", "compile") and suite.cfg_scale > 1
    assert {c.num_samples for c in suite.cells()} == {1, 8, 64}


def test_perf_dit_xl2_256_covers_ddim_budgets_lazydit_levels_and_every_caching_baseline():
    suite = load_suite("perf-dit-xl2-256")
    names = {m.name for m in suite.methods}
    assert {"ddim", "lazydit-static", *CACHING} <= names and all(n in METHODS for n in names)
    ddim = next(m for m in suite.methods if m.name == "ddim")
    assert {50, 25, 20, 10} <= set(ddim.steps)
    lazy = {(c.steps, c.method_args["schedule"].rsplit("lazy", 1)[1]) for c in suite.cells() if c.method == "lazydit-static"}
    assert {(50, "50.pt"), (50, "40.pt"), (50, "20.pt"), (20, "30.pt")} <= lazy


def test_spread_schedule_skips_the_requested_share_and_never_the_first_step():
    compute = spread_schedule(50, 28, 0.5)
    assert compute.shape == (50, 28, 2) and compute[-1].all()
    assert (~compute).sum().item() == round(0.5 * 50 * 28 * 2)
    per_step = (~compute[:-1]).float().mean(dim=(1, 2))
    assert per_step.max() - per_step.min() < 0.05  # evenly spread over the steps


def test_spread_schedule_refuses_a_ratio_that_would_skip_the_first_step():
    with pytest.raises(ValueError, match="ratio=0.99"):
        spread_schedule(10, 4, 0.99)


@pytest.mark.parametrize("depth, steps, ratio", PAPER_LEVELS)
def test_shipped_perf_schedule_is_the_regenerated_one(depth, steps, ratio):
    payload = read_schedule_file(PERF_DIR / schedule_name(depth, steps, ratio))
    assert torch.equal(payload["compute"], spread_schedule(steps, depth, ratio))
    assert payload["target_ratio"] == ratio and "synthetic" in payload["rule"]


def test_num_samples_batch_makes_each_cell_sample_one_batch_of_its_size():
    suite = tiny_suite(num_samples="batch", batch_sizes=[1, 3], steps=[2])
    assert sorted((c.batch_size, c.num_samples) for c in suite.cells()) == [(1, 1), (3, 3)]


def test_num_samples_other_than_a_count_or_batch_is_named():
    with pytest.raises(SpecError, match=r"num_samples = 'many'; accepted: a positive integer or 'batch'"):
        tiny_suite(num_samples="many")


def test_random_weights_get_residuals_where_adaln_zero_left_none():
    model = build_model("DiT-S/2", image_size=64)
    assert not model.blocks[0].adaLN_modulation[-1].weight.any()
    untouched = model.blocks[0].attn.qkv.weight.clone()
    perturb_zero_linears(model)
    assert model.blocks[0].adaLN_modulation[-1].weight.std() > 0 and model.final_layer.linear.weight.any()
    assert torch.equal(model.blocks[0].attn.qkv.weight, untouched)
