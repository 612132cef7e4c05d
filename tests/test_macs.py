"""MACs: the published DiT / LazyDiT figures, and log-derived counts equal to direct counts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness import build_model, sample
from harness.cli import main
from harness.cost import macs
from harness.cost.macs import (MACS_ALL, MACS_ALL_PER_FORWARD, MACS_LINEAR, MACS_LINEAR_FULL, MACS_OVERHEAD,
                               SKIP_RATIO, MacCounter, cost_table, count_macs, dry_run_decisions, full_compute_log,
                               log_macs, macs_from_log, measure_cost_table)
from harness.commands.macs import compute_macs_record
from harness.methods import ATTN, METHODS, MLP, Policy

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(macs, "_TABLES", {})


def meta_dit_xl(image_size: int) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model("DiT-XL/2", image_size=image_size)


def tiny_dit() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("DiT-S/2", image_size=64, depth=3, hidden_size=64, num_heads=4, num_classes=10)
    with torch.no_grad():  # adaLN-Zero starts as the identity; give every layer some weight
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


class SkipFixedBranches(Policy):
    """Reuses block 1's attention and block 2's MLP at even step indices; scores block 0 with a D -> 1 map."""

    name = "test-skip-fixed"
    SKIP = ((1, ATTN), (2, MLP))

    def start(self, run):
        super().start(run)
        self.cache = {}
        self.score = torch.ones(1, run.hidden_size)

    def branch(self, block, kind, fn, make_h):
        key = (block, kind)
        if key in self.SKIP and self.step % 2 == 0 and key in self.cache:
            self.log.branch[self.step, block, kind] = 0
            return self.cache[key]  # a reused branch never forms its input
        h = make_h()
        if key == (0, ATTN):  # a method overhead: one linear score per token
            torch.nn.functional.linear(h, self.score)
            self.log.overhead_macs[self.step] += h.shape[1] * h.shape[2]
        self.cache[key] = fn(h)
        return self.cache[key]


if "test-skip-fixed" not in METHODS:
    METHODS.register("test-skip-fixed")(SkipFixedBranches)


# ---- published figures --------------------------------------------------------------------

@pytest.mark.parametrize("image_size, gmacs", [(256, 118.6), (512, 524.6)])
def test_dit_xl2_forward_is_the_dit_papers_gmacs_under_convention_a(image_size, gmacs):
    table = measure_cost_table(meta_dit_xl(image_size))
    assert round(table.per_forward().all / 1e9, 1) == gmacs


@pytest.mark.parametrize("image_size, tmacs", [(256, 5.72), (512, 22.85)])
def test_ddim50_is_the_lazydit_tables_tmacs_under_convention_b(image_size, tmacs):
    table = measure_cost_table(meta_dit_xl(image_size))
    result = macs_from_log(table, full_compute_log(50, 1, 28, cfg=True))
    assert round(result[MACS_LINEAR] / 1e12, 2) == tmacs
    assert result[MACS_ALL] == pytest.approx(2 * 50 * table.per_forward().all)  # CFG doubles (a) only


def test_official_l2c_router_skips_23_71_percent_and_drops_ddim50_to_4_36_tmacs():
    from harness.cache import load_torch_dict

    routers = load_torch_dict(FIXTURES / "DDIM50_router.pt", "routers", "L2C router")["routers"]  # args: allow-listed
    log = full_compute_log(50, 1, 28, cfg=True)
    for index in range(0, 50, 2):  # routers are consulted at even step indices only
        keep = (torch.sigmoid(routers[f"{index}.prob"].float()) > 0.1).float().view(28, 2)
        log.branch[index] = keep[..., None].expand(28, 2, 2)
    result = macs_from_log(measure_cost_table(meta_dit_xl(256)), log)
    assert round(100 * result[SKIP_RATIO], 2) == 23.71
    assert round(result[MACS_LINEAR] / 1e12, 2) == 4.36


# ---- the counter --------------------------------------------------------------------------

def test_cpu_attention_kernel_is_counted_where_plain_flop_counter_sees_zero():
    model = tiny_dit()
    x, t, y = torch.randn(2, 4, 8, 8), torch.full((2,), 500), torch.tensor([1, 2])
    plain = FlopCounterMode(display=False)
    with torch.no_grad(), plain:
        model(x, t, y)
    counted = count_macs(lambda: model(x, t, y))
    table = measure_cost_table(model)  # measured on the meta device, where attention decomposes to bmm
    assert counted.all == pytest.approx(2 * table.per_forward().all, rel=1e-12)
    assert plain.get_total_flops() / 2 < counted.all


def test_convention_b_leaves_out_only_the_attention_products():
    table = measure_cost_table(tiny_dit())
    tokens, hidden = 16, 64
    attention_products = 2 * tokens * tokens * hidden * 3  # QK^T and AV per block, 3 blocks
    assert table.per_forward().all - table.per_forward().linear == attention_products


# ---- log-derived == direct ------------------------------------------------------------------

@pytest.mark.parametrize("cfg_scale", [1.5, 1.0])
def test_log_derived_macs_equal_a_direct_count_of_the_same_run_with_skipping(cfg_scale):
    model = tiny_dit()
    counter = MacCounter()
    with counter:
        out = sample(model, [1, 2, 3], [0, 1, 2], steps=6, cfg_scale=cfg_scale, method=SkipFixedBranches(),
                     decode=False, batch_invariant=False)
    derived = log_macs(cost_table(model), out.decisions).sum(0)
    assert out.decisions.lazy_ratio()["all"] > 0
    assert derived[0] == pytest.approx(counter.total().all, rel=1e-12)
    if cfg_scale == 1.0:  # without CFG, the whole batch is the (b) convention's batch
        assert derived[1] == pytest.approx(counter.total().linear, rel=1e-12)


def test_method_overhead_is_counted_in_both_conventions():
    model = tiny_dit()
    out = sample(model, [1], [0], steps=4, cfg_scale=1.5, method=SkipFixedBranches(), decode=False)
    result = macs_from_log(cost_table(model), out.decisions)
    assert result[MACS_OVERHEAD] == 4 * 16 * 64
    skipped_only = out.decisions.conditional()
    skipped_only.overhead_macs.zero_()
    assert result[MACS_LINEAR] - log_macs(cost_table(model), skipped_only)[0, 1] == 4 * 16 * 64


def test_skipping_lowers_both_conventions_below_full_compute():
    model = tiny_dit()
    out = sample(model, [1, 2], [0, 1], steps=6, cfg_scale=1.5, method=SkipFixedBranches(), decode=False)
    result = macs_from_log(cost_table(model), out.decisions)
    table = cost_table(model)
    assert result[MACS_LINEAR] < result[MACS_LINEAR_FULL]
    assert result[MACS_ALL] < 2 * 6 * table.per_forward().all


def test_dry_run_reads_a_static_schedule_without_the_model():
    model = tiny_dit()
    real = sample(model, [1], [0], steps=6, cfg_scale=1.5, method=SkipFixedBranches(), decode=False).decisions
    dry = dry_run_decisions(SkipFixedBranches(), model, steps=6, images=1, cfg=True)
    assert torch.equal(dry.branch, real.branch)


# ---- caching and the command -----------------------------------------------------------------

def test_cost_table_is_measured_once_and_cached_by_content_hash(tmp_path, monkeypatch):
    model = meta_dit_xl(256)
    first = cost_table(model)
    assert (tmp_path / "cache" / "cost" / f"{first.key}.json").is_file()
    monkeypatch.setattr(macs, "_TABLES", {})
    monkeypatch.setattr(macs, "measure_cost_table", lambda m: pytest.fail("measured twice"))
    assert cost_table(model).per_forward() == first.per_forward()


def test_cost_table_key_changes_with_the_architecture():
    assert cost_table(meta_dit_xl(256)).key != cost_table(meta_dit_xl(512)).key


def test_macs_command_prints_both_conventions_as_json(capsys):
    assert main(["macs", "--model", "DiT-XL/2", "--image-size", "256", "--steps", "50", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert round(record[MACS_ALL_PER_FORWARD] / 1e9, 1) == 118.6
    assert round(record[MACS_LINEAR] / 1e12, 2) == 5.72
    assert record[MACS_ALL] == pytest.approx(2 * 50 * record[MACS_ALL_PER_FORWARD])


def test_macs_command_rejects_method_args_that_are_not_a_json_object(capsys):
    assert main(["macs", "--model", "DiT-XL/2", "--steps", "50", "--method-args", "[1]"]) == 2
    assert "--method-args" in capsys.readouterr().err


def test_macs_record_of_a_method_run_equals_its_dry_run_for_a_static_schedule():
    run = compute_macs_record("embedded/digits-8", 8, 6, "test-skip-fixed", {}, cfg_scale=1.5, num_images=2)
    dry = compute_macs_record("embedded/digits-8", 8, 6, "test-skip-fixed", {}, cfg_scale=1.5, num_images=2, dry_run=True)
    assert run["decisions"].startswith("run") and dry["decisions"] == "dry-run"
    assert run[MACS_LINEAR] == dry[MACS_LINEAR] < run[MACS_LINEAR_FULL]
    assert run[SKIP_RATIO] == dry[SKIP_RATIO] > 0
