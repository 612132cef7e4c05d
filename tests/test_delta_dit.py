"""Δ-DiT (re-implementation from the paper): which blocks run, the stored offsets, the boundary, the MACs.

A stub block stack records which blocks ran at each step and gives every block a distinct,
step-dependent nonlinear update, so a wrong offset or range shows in the output.
"""
from __future__ import annotations

import pytest
import torch

from baselines.delta_dit import DeltaDiTPolicy, delta_dit_plan
from harness import sample
from harness.cost.macs import cost_table, log_macs
from harness.methods import RunInfo, create_policy

LABELS, SEEDS = [1, 3, 5], [21, 22, 23]


class StubStack:
    """depth blocks, block i: h + tanh(w_i h + c); records the blocks run per step."""

    def __init__(self, depth: int):
        self.depth = depth
        self.weights = torch.linspace(0.5, 1.5, depth, dtype=torch.float64)
        self.ran: list[list[int]] = []

    def run_block(self, index: int, x: torch.Tensor, c: torch.Tensor, policy) -> torch.Tensor:
        self.ran[-1].append(index)
        return x + torch.tanh(self.weights[index] * x + c)


def drive(policy: DeltaDiTPolicy, depth: int, inputs: torch.Tensor) -> tuple[StubStack, list[torch.Tensor]]:
    """Runs the block-stack hook over len(inputs) steps; step j gets tokens inputs[j] and conditioning j / 10."""
    steps = len(inputs)
    stack = StubStack(depth)
    policy.start(RunInfo(num_steps=steps, timesteps=tuple(range(steps)), batch=inputs.shape[1], cfg=False,
                         depth=depth, num_tokens=inputs.shape[2], hidden_size=inputs.shape[3], device=torch.device("cpu")))
    outputs = []
    for index in reversed(range(steps)):
        policy.begin_step(index)
        stack.ran.append([])
        outputs.append(policy.run_blocks(stack, inputs[steps - 1 - index], torch.tensor((steps - 1 - index) / 10)))
        policy.end_step()
    return stack, outputs


def run_range(stack: StubStack, h: torch.Tensor, c: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    for index in range(start, stop):
        h = h + torch.tanh(stack.weights[index] * h + c)
    return h


def inputs_for(steps: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(steps, 2, 3, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def policy(**args) -> DeltaDiTPolicy:
    return create_policy("delta-dit", args)


def test_plan_full_every_interval_rear_before_the_boundary_front_after():
    assert delta_dit_plan(8, interval=2, boundary=4) == ["full", "rear", "full", "rear", "full", "front", "full", "front"]
    assert delta_dit_plan(5, interval=3, boundary=0) == ["full", "front", "front", "full", "front"]
    assert delta_dit_plan(5, interval=3, boundary=5) == ["full", "rear", "rear", "full", "rear"]
    assert set(delta_dit_plan(6, interval=1, boundary=3)) == {"full"}


def test_blocks_run_per_step():
    stack, _ = drive(policy(interval=3, cached_blocks=2, boundary=4), 5, inputs_for(8))
    full, rear, front = [0, 1, 2, 3, 4], [0, 1, 2], [2, 3, 4]
    assert stack.ran == [full, rear, rear, full, front, front, full, front]


@pytest.mark.parametrize("depth, blocks", [(5, 2), (4, 3), (4, 4), (3, 1)])  # apart, overlapping, whole stack
def test_cached_ranges_add_the_offsets_of_the_last_full_step(depth, blocks):
    """Front delta = h after block N_c-1 minus h before block 0; rear delta = h after the last block minus h
    before block depth-N_c; both from the last full step, each added to the range's current input."""
    steps, interval, boundary = 9, 3, 5
    inputs = inputs_for(steps, seed=depth)
    stack, outputs = drive(policy(interval=interval, cached_blocks=blocks, boundary=boundary), depth, inputs)
    rear = depth - blocks
    for j in range(steps):
        x, c = inputs[j], torch.tensor(j / 10)
        full = j - j % interval  # the last full step
        xf, cf = inputs[full], torch.tensor(full / 10)
        if j == full:
            expected = run_range(stack, x, c, 0, depth)
        elif j < boundary:
            rear_in_full = run_range(stack, xf, cf, 0, rear)
            delta = run_range(stack, rear_in_full, cf, rear, depth) - rear_in_full
            expected = run_range(stack, x, c, 0, rear) + delta
        else:
            delta = run_range(stack, xf, cf, 0, blocks) - xf
            expected = run_range(stack, x + delta, c, blocks, depth)
        torch.testing.assert_close(outputs[j], expected, rtol=1e-12, atol=1e-12)


def test_defaults_resolve_from_depth_and_steps():
    p = policy()
    assert p.parameters() == {"interval": 2, "cached_blocks": None, "boundary": None}
    stack, _ = drive(p, 6, inputs_for(10))
    assert (p.cached_blocks, p.boundary) == (round(4.5), 5)  # Python rounds half to even: 4 of 6 blocks
    assert p.parameters() == {"interval": 2, "cached_blocks": 4, "boundary": 5}
    assert stack.ran[1] == [0, 1] and stack.ran[5] == [4, 5]
    p = policy()
    drive(p, 28, inputs_for(20))
    assert (p.cached_blocks, p.boundary) == (21, 10)


def test_interval_1_equals_ddim(tiny_latent_dit, one_thread):
    ddim = sample(tiny_latent_dit, LABELS, SEEDS, steps=7, method="ddim", decode=False)
    for args in ({"interval": 1}, {"interval": 1, "cached_blocks": 3, "boundary": 0}):
        out = sample(tiny_latent_dit, LABELS, SEEDS, steps=7, method="delta-dit", method_args=args, decode=False)
        assert torch.equal(out.latents, ddim.latents) and out.decisions.branch.eq(1).all()


def test_skipped_ranges_charge_nothing(tiny_latent_dit, one_thread):
    steps, depth = 9, tiny_latent_dit.depth  # depth 3, cached_blocks 2: front [0, 2), rear [1, 3)
    out = sample(tiny_latent_dit, LABELS, SEEDS, steps=steps, method="delta-dit",
                 method_args={"interval": 3, "cached_blocks": 2, "boundary": 4}, decode=False)
    log = out.decisions
    ran = {"full": [0, 1, 2], "rear": [0], "front": [2]}
    for j, kind in enumerate(delta_dit_plan(steps, 3, 4)):
        i = steps - 1 - j
        mask = torch.tensor([float(b in ran[kind]) for b in range(depth)])
        assert torch.equal(log.block[i], mask[:, None].expand_as(log.block[i]))
        assert torch.equal(log.branch[i], mask[:, None, None].expand_as(log.branch[i]))
        assert log.forward[i].eq(1).all()  # embedders and final layer run every step
    assert float(log.overhead_macs.sum()) == 0.0  # the offset adds count zero, like residual adds
    table = cost_table(tiny_latent_dit)
    blocks_run = {"full": 3, "rear": 1, "front": 1}
    per_block = table.block[0] + table.branch[0].sum(0)  # the tiny DiT's blocks all cost the same
    expected = sum(table.fixed + blocks_run[kind] * per_block for kind in delta_dit_plan(steps, 3, 4))
    assert log_macs(table, log)[0] == pytest.approx(expected)


@pytest.mark.parametrize("args, bad", [({"interval": 0}, "interval=0"), ({"cached_blocks": 0}, "cached_blocks=0"),
                                       ({"cached_blocks": 4}, "cached_blocks=4"), ({"boundary": -1}, "boundary=-1"),
                                       ({"boundary": 8}, "boundary=8")])
def test_bad_arguments_fail_with_one_line(args, bad, tiny_latent_dit):
    with pytest.raises(ValueError, match=bad) as info:
        sample(tiny_latent_dit, LABELS, SEEDS, steps=7, method="delta-dit", method_args=args, decode=False)
    assert "\n" not in str(info.value) and "accepted" in str(info.value)


def test_labelled_a_re_implementation():
    assert "re-implementation" in DeltaDiTPolicy.faithfulness and "re-implementation" in DeltaDiTPolicy.__doc__
    assert DeltaDiTPolicy.paper == "https://arxiv.org/abs/2406.01125" and not DeltaDiTPolicy.batch_coupled
