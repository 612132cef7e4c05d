"""The method contract, checked for every registered method (DESIGN.md "The method contract").

Settings that compute everything equal DDIM bit for bit; two calls agree; the MACs derived
from the decision log match a direct FlopCounterMode count of the same run; static
schedules' dry run equals the real log; results do not depend on batch size unless the
method is batch-coupled, and batch-coupled decisions never see padding rows.
"""
from __future__ import annotations

import pytest
import torch

from harness import sample
from harness.cost.macs import MacCounter, cost_table, dry_run_decisions, log_macs
from harness.methods import METHODS
from method_cases import CASES, STEPS

LABELS, SEEDS = [1, 3, 5, 7, 2, 4, 6, 8], [11, 12, 13, 14, 15, 16, 17, 18]  # 8 images, 16 CFG rows: no padding
SHIPPED = ("harness", "baselines", "lazydit")  # other tests register stand-in methods of their own
NAMES = [n for n in METHODS.names() if METHODS.get(n).__module__.split(".")[0] in SHIPPED]


def run(model, policy, n: int = 8, **kwargs):
    return sample(model, LABELS[:n], SEEDS[:n], steps=STEPS, cfg_scale=1.5, method=policy, decode=False, **kwargs)


def test_every_registered_method_has_a_contract_case():
    assert sorted(CASES) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_case_policies_are_the_registered_class(name, tiny_latent_dit, tmp_path):
    case = CASES[name]
    for make in (case.full, case.typical):
        assert isinstance(make(tiny_latent_dit, tmp_path), METHODS.get(name))


@pytest.mark.parametrize("name", NAMES)
def test_computing_everything_equals_ddim_bit_for_bit(name, tiny_latent_dit, tmp_path, one_thread):
    reference = run(tiny_latent_dit, "ddim")
    out = run(tiny_latent_dit, CASES[name].full(tiny_latent_dit, tmp_path))
    assert torch.equal(out.latents, reference.latents)
    assert out.decisions.branch.eq(1).all() and out.decisions.forward.eq(1).all()


@pytest.mark.parametrize("name", NAMES)
def test_two_calls_of_one_policy_agree(name, tiny_latent_dit, tmp_path, one_thread):
    policy = CASES[name].typical(tiny_latent_dit, tmp_path)
    first, second = run(tiny_latent_dit, policy), run(tiny_latent_dit, policy)
    assert torch.equal(first.latents, second.latents)
    assert torch.equal(first.decisions.branch, second.decisions.branch)
    assert torch.equal(first.decisions.overhead_macs, second.decisions.overhead_macs)


@pytest.mark.parametrize("name", NAMES)
def test_log_macs_bracket_a_direct_flop_count_of_the_same_run(name, tiny_latent_dit, tmp_path, one_thread):
    """Model MACs from the log <= direct count <= the same plus the method's declared overhead."""
    policy = CASES[name].typical(tiny_latent_dit, tmp_path)
    counter = MacCounter()
    with counter:
        out = run(tiny_latent_dit, policy)
    direct = counter.total()
    per_sample = log_macs(cost_table(tiny_latent_dit), out.decisions)  # (rows, 2)
    overhead = float(out.decisions.overhead_macs.sum())
    for convention, counted in ((0, direct.all), (1, direct.linear)):
        logged = float(per_sample[:, convention].sum())
        assert logged - overhead <= counted * (1 + 1e-9) + 1, (convention, logged, overhead, counted)
        assert counted <= logged * (1 + 1e-9) + 1, (convention, logged, overhead, counted)


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n].static])
def test_static_dry_run_equals_the_real_log(name, tiny_latent_dit, tmp_path, one_thread):
    real = run(tiny_latent_dit, CASES[name].typical(tiny_latent_dit, tmp_path)).decisions
    dry = dry_run_decisions(CASES[name].typical(tiny_latent_dit, tmp_path), tiny_latent_dit, STEPS, images=8)
    assert torch.equal(dry.branch, real.branch)
    assert torch.equal(dry.forward, real.forward)


@pytest.mark.parametrize("name", [n for n in NAMES if not METHODS.get(n).batch_coupled])
def test_images_do_not_depend_on_batch_size(name, tiny_latent_dit, tmp_path, one_thread):
    whole = run(tiny_latent_dit, CASES[name].typical(tiny_latent_dit, tmp_path), n=6)
    split = run(tiny_latent_dit, CASES[name].typical(tiny_latent_dit, tmp_path), n=6, batch_size=2)
    assert torch.equal(whole.latents, split.latents)
    assert torch.equal(whole.decisions.branch, split.decisions.branch)


@pytest.mark.parametrize("name", [n for n in NAMES if METHODS.get(n).batch_coupled])
def test_batch_coupled_decisions_never_see_padding(name, tiny_latent_dit, tmp_path, one_thread):
    """Three images padded to 8 CFG rows decide as three images unpadded."""
    padded = run(tiny_latent_dit, CASES[name].typical(tiny_latent_dit, tmp_path), n=3)
    unpadded = run(tiny_latent_dit, CASES[name].typical(tiny_latent_dit, tmp_path), n=3, batch_invariant=False)
    assert torch.equal(padded.decisions.branch, unpadded.decisions.branch)
    assert torch.allclose(padded.latents, unpadded.latents, atol=1e-4)
