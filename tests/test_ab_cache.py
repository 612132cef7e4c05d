"""AB-Cache (re-implementation from the paper): the step rule, the Adams-Bashforth prediction, its MACs.

The prediction is checked on a stub model whose outputs are polynomials in the step j: the k-step
Adams-Bashforth combination integrates the degree-(k-1) interpolant of the last k outputs over the
step, so for such outputs it equals the mean of F over [j-1, j] exactly (F(j - 1/2) for linear F,
F(j) itself only for constant F).
"""
from __future__ import annotations

import pytest
import torch

from baselines.ab_cache import AB_WEIGHTS, ABCachePolicy, ab_compute_steps
from harness import sample
from harness.cost.macs import cost_table, log_macs
from harness.methods import RunInfo, create_policy

LABELS, SEEDS = [1, 3, 5], [21, 22, 23]


def drive(policy: ABCachePolicy, outputs: torch.Tensor) -> torch.Tensor:
    """Runs the policy's forward hook over len(outputs) steps, the stub model returning outputs[j] at step j.

    outputs: (N, B, C) the true model output per sampling-order step; returns what the policy returned.
    """
    steps, batch = outputs.shape[:2]
    policy.start(RunInfo(num_steps=steps, timesteps=tuple(range(steps)), batch=batch, cfg=False, depth=2,
                         num_tokens=1, hidden_size=1, device=torch.device("cpu")))
    returned = []
    for index in reversed(range(steps)):
        policy.begin_step(index)
        j = steps - 1 - index
        returned.append(policy.forward(None, None, None, None, lambda: outputs[j].clone()))
        policy.end_step()
    return torch.stack(returned)


def polynomial_outputs(degree: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """F_j = sum_p c_p j^p per element (float64), and its mean over [j-1, j]: (steps, 2, 3) each."""
    gen = torch.Generator().manual_seed(degree)
    coeffs = torch.randn(degree + 1, 2, 3, generator=gen, dtype=torch.float64)
    j = torch.arange(steps, dtype=torch.float64)[:, None, None]
    values = sum(coeffs[p] * j**p for p in range(degree + 1))
    means = sum(coeffs[p] * (j ** (p + 1) - (j - 1) ** (p + 1)) / (p + 1) for p in range(degree + 1))
    return values, means


def test_compute_rule_warmup_then_every_interval():
    computes = ab_compute_steps(20, warmup=5, interval=6)
    assert [j for j, c in enumerate(computes) if c] == [0, 1, 2, 3, 4, 6, 12, 18]
    assert all(ab_compute_steps(7, warmup=7, interval=100))  # the full setting
    assert [j for j, c in enumerate(ab_compute_steps(7, warmup=0, interval=3)) if c] == [0, 3, 6]


def test_weights_are_adams_bashforth():
    assert AB_WEIGHTS == ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))
    assert all(abs(sum(w) - 1.0) < 1e-15 for w in AB_WEIGHTS)  # a constant output is reproduced


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_prediction_is_exact_for_polynomial_outputs_of_degree_order_minus_1(order):
    """After `order` computed steps, the predicted step is the mean of F over the last step interval."""
    values, means = polynomial_outputs(order - 1, order + 1)
    policy = ABCachePolicy(ABCachePolicy.Config(order=order, warmup=order, interval=100))
    returned = drive(policy, values)
    torch.testing.assert_close(returned[:order], values[:order], rtol=0, atol=0)
    torch.testing.assert_close(returned[order], means[order], rtol=1e-12, atol=1e-12)
    if order > 1:  # one degree more is not exact
        values, means = polynomial_outputs(order, order + 1)
        assert not torch.allclose(drive(ABCachePolicy(policy.config), values)[order], means[order])


def test_order_1_reuses_the_last_output():
    values = torch.randn(9, 2, 3, generator=torch.Generator().manual_seed(0))
    returned = drive(ABCachePolicy(ABCachePolicy.Config(order=1, warmup=2, interval=4)), values)
    expected = values.clone()
    for j in (2, 3, 5, 6, 7):  # predicted steps repeat the previous step's output, predicted or not
        expected[j] = expected[j - 1]
    assert torch.equal(returned, expected)


def test_predictions_chain_over_predicted_outputs_and_start_with_k_min_order_j():
    """k = min(order, j): at warm-up 1 the first predictions use the outputs there are; predicted ones count."""
    values = torch.randn(6, 1, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    returned = drive(ABCachePolicy(ABCachePolicy.Config(order=3, warmup=1, interval=100)), values)
    f = [values[0]]
    for j in range(1, 6):
        k = min(3, j)
        f.append(sum(a * f[j - 1 - m] for m, a in enumerate(AB_WEIGHTS[k - 1])))
    torch.testing.assert_close(returned, torch.stack(f), rtol=1e-14, atol=1e-14)


def test_warmup_at_least_the_steps_equals_ddim(tiny_latent_dit, one_thread):
    ddim = sample(tiny_latent_dit, LABELS, SEEDS, steps=7, method="ddim", decode=False)
    for args in ({"warmup": 7}, {"warmup": 10, "order": 4}, {"warmup": 0, "interval": 1}):
        out = sample(tiny_latent_dit, LABELS, SEEDS, steps=7, method="ab-cache", method_args=args, decode=False)
        assert torch.equal(out.latents, ddim.latents)
        assert out.decisions.forward.eq(1).all() and float(out.decisions.overhead_macs.sum()) == 0.0


def test_predicted_steps_charge_no_model_only_the_combination(tiny_latent_dit, one_thread):
    steps, args = 10, {"order": 3, "warmup": 2, "interval": 4}
    out = sample(tiny_latent_dit, LABELS, SEEDS, steps=steps, method="ab-cache", method_args=args, decode=False)
    log = out.decisions
    computed = [j < 2 or j % 4 == 0 for j in range(steps)]  # j = 0, 1, 4, 8
    for j, ran in enumerate(computed):
        i = steps - 1 - j
        assert log.forward[i].eq(float(ran)).all() and log.block[i].eq(float(ran)).all()
        assert log.branch[i].eq(float(ran)).all()
    elements = 8 * 8 * 8  # DiT-S/2 at 64 px: 8 learned-sigma channels, 8x8 latent
    k = {2: 2, 3: 3, 5: 3, 6: 3, 7: 3, 9: 3}  # predicted j -> min(order, j)
    expected = torch.zeros(steps, dtype=torch.float64)
    for j, terms in k.items():
        expected[steps - 1 - j] = terms * elements
    assert torch.equal(log.overhead_macs, expected[:, None].expand_as(log.overhead_macs))
    table = cost_table(tiny_latent_dit)
    per_forward = table.per_forward()
    per_row = log_macs(table, log)  # (rows, 2)
    overhead = float(expected.sum())
    assert per_row[:, 0] == pytest.approx(4 * per_forward.all + overhead)
    assert per_row[:, 1] == pytest.approx(4 * per_forward.linear + overhead)


def test_predicted_steps_use_the_prediction(tiny_latent_dit, one_thread):
    """Skipping changes the samples (the prediction is used), and stays close to DDIM on a smooth model."""
    ddim = sample(tiny_latent_dit, LABELS, SEEDS, steps=10, method="ddim", decode=False)
    out = sample(tiny_latent_dit, LABELS, SEEDS, steps=10, method="ab-cache", decode=False)
    assert not torch.equal(out.latents, ddim.latents)
    assert out.decisions.forward[:, 0].tolist() == [float(c) for c in reversed(ab_compute_steps(10, 5, 6))]


@pytest.mark.parametrize("args, bad", [({"order": 0}, "order=0"), ({"order": 5}, "order=5"),
                                       ({"warmup": -1}, "warmup=-1"), ({"interval": 0}, "interval=0")])
def test_bad_arguments_fail_with_one_line(args, bad):
    with pytest.raises(ValueError, match=bad) as info:
        create_policy("ab-cache", args)
    assert "\n" not in str(info.value) and "accepted" in str(info.value)


def test_labelled_a_re_implementation():
    assert "re-implementation" in ABCachePolicy.faithfulness and "re-implementation" in ABCachePolicy.__doc__
    assert ABCachePolicy.paper == "https://arxiv.org/abs/2504.10540" and not ABCachePolicy.batch_coupled
