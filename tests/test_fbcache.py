"""First-Block-Cache's edge cases against ParaAttention's rule (no DiT code to compare with) and its costs."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from baselines.fbcache import FBCachePolicy
from harness import sample
from harness.methods import create_policy

LABELS, SEEDS, STEPS = [1, 3, 5, 7, 2, 4, 6, 8], [11, 12, 13, 14, 15, 16, 17, 18], 10


def run(model, method, n: int = 8, **kwargs):
    return sample(model, LABELS[:n], SEEDS[:n], steps=STEPS, cfg_scale=1.5, method=method, decode=False, **kwargs)


def tail_computed(out) -> list[bool]:
    """Per step in sampling order: whether blocks 1.. ran (block 0 always does)."""
    block = out.decisions.block
    assert block[:, 0].eq(1).all(), "block 0 runs at every step"
    tail = block[:, 1:].amin(dim=(1, 2))
    assert torch.equal(tail, block[:, 1:].amax(dim=(1, 2))), "blocks 1.. run together or not at all"
    return [bool(tail[i]) for i in reversed(range(STEPS))]


class Spy(FBCachePolicy):
    """Records d at every deciding step and the reference r1 after every step."""

    def start(self, run):
        super().start(run)
        self.seen, self.references = [], []

    def can_reuse(self, r1):
        if self.reference is not None:
            self.seen.append(float((r1 - self.reference).abs().mean() / self.reference.abs().mean()))
        return super().can_reuse(r1)

    def end_step(self):
        self.references.append(self.reference.clone())


def spy(threshold: float, warmup_steps: int = 0) -> Spy:
    return Spy(FBCachePolicy.Config(threshold=threshold, warmup_steps=warmup_steps))


def test_threshold_zero_equals_ddim_exactly_without_host_reads(tiny_latent_dit, one_thread):
    policy = create_policy("fbcache", {"threshold": 0.0})
    out = run(tiny_latent_dit, policy)
    assert torch.equal(out.latents, run(tiny_latent_dit, "ddim").latents)
    assert out.decisions.branch.eq(1).all() and policy.host_syncs == 0
    assert out.decisions.overhead_macs.eq(0).all()


def test_infinite_threshold_skips_every_step_but_the_first(tiny_latent_dit, one_thread):
    policy = spy(math.inf)
    out = run(tiny_latent_dit, policy)
    assert tail_computed(out) == [True] + [False] * (STEPS - 1)  # the last step is not forced
    assert policy.host_syncs == STEPS - 1  # one read per step after the first
    assert all(torch.equal(r, policy.references[0]) for r in policy.references)  # r1_ref only from computed steps
    t, d = tiny_latent_dit.num_tokens, 64
    assert out.decisions.overhead_macs[:-1].eq(2 * t * d).all() and out.decisions.overhead_macs[-1].eq(0).all()


def test_warmup_steps_compute(tiny_latent_dit, one_thread):
    out = run(tiny_latent_dit, spy(math.inf, warmup_steps=3))
    assert tail_computed(out) == [True] * 3 + [False] * (STEPS - 3)


def test_reuse_is_strictly_below_the_threshold(tiny_latent_dit, one_thread):
    """ParaAttention's `d < threshold`: at d == threshold the step computes (diffusers' `d > threshold` would reuse)."""
    probe = spy(math.inf)
    run(tiny_latent_dit, probe)
    d1 = probe.seen[0]  # step j = 1, compared with step 0 whatever the threshold
    assert tail_computed(run(tiny_latent_dit, spy(d1)))[1] is True
    assert tail_computed(run(tiny_latent_dit, spy(math.nextafter(d1, math.inf))))[1] is False


def test_decisions_follow_d_against_the_last_computed_step(tiny_latent_dit, one_thread):
    policy = spy(0.5)
    out = run(tiny_latent_dit, policy)
    computed = tail_computed(out)
    assert computed[1:] == [not d < 0.5 for d in policy.seen]
    assert not all(computed)  # the setting does skip


class AllRows(Spy):
    """Pools every model row, padding included (what the method must not do)."""

    def start(self, run):
        super().start(dataclasses.replace(run, real=None))


def test_decisions_never_see_padding_rows(tiny_latent_dit, one_thread):
    """Three images padded to 16 rows decide as three images unpadded; with padding pooled, d differs."""
    padded, unpadded, with_padding = spy(0.5), spy(0.5), AllRows(FBCachePolicy.Config(threshold=0.5))
    a = run(tiny_latent_dit, padded, n=3)
    b = run(tiny_latent_dit, unpadded, n=3, batch_invariant=False)
    run(tiny_latent_dit, with_padding, n=3)
    assert torch.equal(a.decisions.branch, b.decisions.branch)
    assert padded.seen == pytest.approx(unpadded.seen, rel=1e-5)
    assert max(abs(x - y) for x, y in zip(with_padding.seen, unpadded.seen)) > 1e-3


def test_bad_arguments_fail_with_one_clear_line():
    with pytest.raises(ValueError, match="warmup_steps=-1"):
        create_policy("fbcache", {"warmup_steps": -1})
    with pytest.raises(ValueError, match="threshold=nan"):
        create_policy("fbcache", {"threshold": float("nan")})
