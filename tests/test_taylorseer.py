"""TaylorSeer against the official code (golden fixtures), its published step typing, its arguments and overhead.

The fixture (tests/fixtures/golden/taylorseer/, PROVENANCE.md there) holds what the official
TaylorSeer-DiT produced on a random-weight model with the harness's noise and labels: its own
`ddim_sample_loop`, and its model forward stepped by the harness's DDIM arithmetic.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from baselines.taylorseer import taylorseer_plan
from harness import sample
from harness.cost.macs import dry_run_decisions
from harness.methods import create_policy
from harness.sampling import initial_noise
from conftest import golden_model as build_golden_model

GOLDEN = torch.load(Path(__file__).parent / "fixtures/golden/taylorseer/golden.pt", weights_only=True)
ARGS = ("interval", "max_order", "first_enhance")


@pytest.fixture(scope="module")
def golden_model() -> torch.nn.Module:
    return build_golden_model(GOLDEN["model"])


def run_golden(model: torch.nn.Module, run: dict):
    return sample(model, GOLDEN["labels"].tolist(), GOLDEN["seeds"].tolist(), steps=int(run["steps"]),
                  cfg_scale=GOLDEN["cfg_scale"], method="taylorseer", method_args={k: int(run[k]) for k in ARGS},
                  noise=GOLDEN["noise"], decode=False)


def test_fixture_noise_is_the_harness_noise_of_its_seeds(golden_model):
    assert torch.equal(GOLDEN["noise"], initial_noise(GOLDEN["seeds"].tolist(), golden_model.spec.latent_shape))


@pytest.mark.parametrize("key", sorted(GOLDEN["runs"]))
def test_matches_the_official_code(key, golden_model, one_thread):
    """Typing exactly; latents to float rounding: the forecast is one weighted sum, not the official term-by-term
    sum (harness-step runs differ by <= 2e-7 of the latent scale where made), and the official ddim_sample rounds
    its float32 coefficients (<= 6e-7)."""
    run = GOLDEN["runs"][key]
    out = run_golden(golden_model, run)
    assert torch.equal(out.decisions.branch.bool().all(-1), run["computed"])
    assert torch.equal(out.decisions.branch.bool().any(-1), run["computed"])
    torch.testing.assert_close(out.latents, run["latents"], rtol=0, atol=1e-5 * float(run["latents"].abs().max()))


@pytest.mark.parametrize("interval, full", [
    (3, [49, 48] + list(range(45, -1, -3))),  # caching-methods.md Sim: 18 full steps
    (4, [49, 48] + list(range(44, -1, -4))),  # 14
    (5, [49, 48] + list(range(43, 0, -5))),  # 11, i = 0 is a Taylor step
])
def test_published_schedules_at_50_steps(interval, full, tiny_latent_dit):
    log = dry_run_decisions(create_policy("taylorseer", {"interval": interval}), tiny_latent_dit, 50, images=2)
    assert log.computed_steps() == full
    assert torch.equal(log.branch.bool().all(dim=(1, 2, 3)), log.branch.bool().any(dim=(1, 2, 3)))


def test_orders_grow_by_one_per_full_step_up_to_max_order():
    plan = taylorseer_plan(50, 4, 4, 2)
    full = [(i, p.offset, p.orders) for i, p in reversed(list(enumerate(plan))) if p.full]
    assert full[:6] == [(49, 0, 0), (48, -1, 1), (44, -4, 2), (40, -4, 3), (36, -4, 4), (32, -4, 4)]
    assert [(p.offset, p.orders) for p in plan[45:48]] == [(-3, 2), (-2, 2), (-1, 2)]  # steps 45, 46, 47


def test_overhead_counts_the_extrapolation_and_derivative_arithmetic(tiny_latent_dit):
    """(m + 1) multiply-adds per branch-output element on Taylor steps, one per refreshed derivative on full steps."""
    steps, images = 20, 2
    plan = taylorseer_plan(steps, 4, 4, 2)
    log = dry_run_decisions(create_policy("taylorseer", {}), tiny_latent_dit, steps, images=images)
    per_order = tiny_latent_dit.depth * 2 * tiny_latent_dit.num_tokens * tiny_latent_dit.config.hidden_size
    expected = torch.tensor([p.orders * per_order for p in plan], dtype=torch.float64)
    assert torch.equal(log.overhead_macs, expected[:, None].expand(steps, 2 * images))


def test_order_zero_is_plain_reuse_as_fora_where_the_schedules_agree(tiny_latent_dit, one_thread):
    """With max_order 0 a Taylor step reuses the last output; at 10 steps, interval 3 and one warm-up step,
    TaylorSeer's full steps (9, 6, 3, 0) are FORA's, so the two agree bit for bit."""
    kw = dict(class_labels=[1, 2, 3], seeds=[4, 5, 6], steps=10, cfg_scale=1.5, decode=False)
    seer = sample(tiny_latent_dit, method="taylorseer", method_args={"interval": 3, "max_order": 0, "first_enhance": 1}, **kw)
    fora = sample(tiny_latent_dit, method="fora", method_args={"interval": 3}, **kw)
    assert torch.equal(seer.decisions.branch, fora.decisions.branch)
    assert torch.equal(seer.latents, fora.latents)


@pytest.mark.parametrize("name, bad", [("interval", 0), ("interval", 1.5), ("max_order", -1), ("max_order", True),
                                       ("first_enhance", 0), ("first_enhance", "2")])
def test_arguments_are_validated(name, bad):
    with pytest.raises(ValueError, match=name):
        create_policy("taylorseer", {name: bad})
