"""FORA against the official code (golden fixtures), its published step typing, and its arguments.

The fixture (tests/fixtures/golden/fora/, PROVENANCE.md there) holds what the official FORA DiT
produced on a random-weight model with the harness's noise and labels: which step and branch ran,
and the final latents. Runs stepped by the harness's DDIM / DDPM arithmetic must match bit for bit
on a machine that reproduces the plain run bit for bit; runs stepped by the official
`ddim_sample` / `p_sample` differ from the harness's sampler by float rounding only.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness import sample
from harness.cost.macs import dry_run_decisions
from harness.methods import create_policy
from harness.sampling import initial_noise
from conftest import golden_model as build_golden_model

GOLDEN = torch.load(Path(__file__).parent / "fixtures/golden/fora/golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def golden_model() -> torch.nn.Module:
    return build_golden_model(GOLDEN["model"])


def run_golden(model: torch.nn.Module, run: dict, method: str = "fora", args: dict | None = None):
    args = {"interval": int(run["interval"])} if args is None else args
    return sample(model, GOLDEN["labels"].tolist(), GOLDEN["seeds"].tolist(), steps=int(run["steps"]),
                  cfg_scale=GOLDEN["cfg_scale"], method=method if run["interval"] else "ddim",
                  method_args=args if run["interval"] else {}, noise=GOLDEN["noise"], decode=False,
                  sampler=run["sampler"])


@pytest.fixture(scope="module")
def bit_exact(golden_model) -> bool:
    """Whether this CPU reproduces the fixture's plain DDIM run bit for bit (GEMM rounding is CPU-specific)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the fixture was made
    try:
        run = GOLDEN["runs"]["ddim20-plain-harness-step"]
        return torch.equal(run_golden(golden_model, run).latents, run["latents"])
    finally:
        torch.set_num_threads(threads)


def test_fixture_noise_is_the_harness_noise_of_its_seeds(golden_model):
    assert torch.equal(GOLDEN["noise"], initial_noise(GOLDEN["seeds"].tolist(), golden_model.spec.latent_shape))


@pytest.mark.parametrize("key", sorted(GOLDEN["runs"]))
def test_matches_the_official_code(key, golden_model, bit_exact, one_thread):
    run = GOLDEN["runs"][key]
    out = run_golden(golden_model, run)
    assert torch.equal(out.decisions.branch.bool().all(-1), run["computed"])  # step x block x branch typing
    assert torch.equal(out.decisions.branch.bool().any(-1), run["computed"])  # the whole batch shares it
    scale = run["latents"].abs().max()
    if run["stepper"] == "harness" and bit_exact:
        assert torch.equal(out.latents, run["latents"])
    else:  # the official ddim_sample rounds its coefficients differently (float32 tensors, not float64)
        torch.testing.assert_close(out.latents, run["latents"], rtol=0, atol=1e-5 * float(scale))


@pytest.mark.parametrize("interval, full", [
    (3, [49, 48] + list(range(45, -1, -3))),  # caching-methods.md Sim: 18 full steps
    (5, [49] + list(range(45, -1, -5))),  # 11
    (2, [49] + list(range(48, -1, -2))),  # 26
])
def test_published_schedules_at_50_steps(interval, full, tiny_latent_dit):
    log = dry_run_decisions(create_policy("fora", {"interval": interval}), tiny_latent_dit, 50, images=2)
    assert log.computed_steps() == full
    assert torch.equal(log.branch.bool().all(dim=(1, 2, 3)), log.branch.bool().any(dim=(1, 2, 3)))  # whole steps
    assert float(log.overhead_macs.sum()) == 0.0 and log.forward.eq(1).all()


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "3", None])
def test_interval_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="interval"):
        create_policy("fora", {"interval": bad})


def test_unknown_argument_is_named():
    with pytest.raises(ValueError, match="'threshold'"):
        create_policy("fora", {"threshold": 3})
