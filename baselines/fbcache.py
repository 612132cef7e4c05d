"""First-Block-Cache: block 0 always runs; when its residual barely changed since the last computed
step, the other blocks are skipped and their cached residual added instead.

Follows ParaAttention (chengzeyi/ParaAttention 4de137c, src/para_attn/first_block_cache/utils.py:
`CachedTransformerBlocks.forward`, `get_can_use_cache`, `are_two_tensors_similar`), the origin of the
method (no paper; https://github.com/chengzeyi/ParaAttention), not diffusers' `FirstBlockCacheConfig`:
  r1 = B0(h) - h;  d = mean|r1 - r1_ref| / mean|r1_ref| over the real [cond; uncond] rows
  past the warm-up (j >= warmup_steps) and with a reference, d < threshold reuses:
      h_out = B0(h) + R_tail  (blocks 1..depth-1 skipped)
  otherwise blocks 1..depth-1 run, R_tail = h_out - B0(h) and r1_ref = r1 (only on computed steps, so d
  compares against the last computed step). ParaAttention reuses on `d < threshold`; diffusers computes on
  `d > threshold`: they differ only at equality. A threshold <= 0 never reuses and never reads d (as
  ParaAttention); the first step computes (no reference yet); the last step is not forced.
With DiT's batched CFG there is one statistic, one decision and one residual for the whole batch.

Cost, counted in the decision log's overhead: the two abs-mean reductions on the steps that decide.
Deciding reads one float on the host per deciding step (`Policy.host_syncs`: at most one per step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from harness.methods import METHODS, Policy, RunInfo
from baselines.teacache import relative_l1


@METHODS.register("fbcache")
class FBCachePolicy(Policy):
    """First-Block-Cache (ParaAttention): skip blocks 1.. while block 0's residual stays close to the last computed one."""

    @dataclass(frozen=True)
    class Config:
        threshold: float = 0.05  # reuse while d < threshold (ParaAttention's residual_diff_threshold; diffusers' default)
        warmup_steps: int = 0  # the first sampled steps always compute

    name: ClassVar[str] = "fbcache"
    paper: ClassVar[str] = "https://github.com/chengzeyi/ParaAttention"
    code: ClassVar[str] = "https://github.com/chengzeyi/ParaAttention"
    faithfulness: ClassVar[str] = "follows ParaAttention's first_block_cache (no official DiT code)"
    batch_coupled: ClassVar[bool] = True
    static_schedule: ClassVar[bool] = False  # whether a step is computed depends on a statistic read on the host

    def __init__(self, config: "FBCachePolicy.Config | None" = None):
        super().__init__(config)
        cfg = self.config
        if not cfg.threshold == cfg.threshold:
            raise ValueError(f"threshold={cfg.threshold!r} for method {self.name!r}; accepted: a number (<= 0 never reuses)")
        if not (isinstance(cfg.warmup_steps, int) and cfg.warmup_steps >= 0):
            raise ValueError(f"warmup_steps={cfg.warmup_steps!r} for method {self.name!r}; accepted: an integer >= 0")

    def start(self, run: RunInfo) -> None:
        super().start(run)
        self.reference: torch.Tensor | None = None  # r1 of the last computed step, real rows only
        self.tail: torch.Tensor | None = None  # h_out - B0(h) of the last computed step

    def finish(self):
        self.reference = self.tail = None  # release the cached tensors
        return super().finish()

    def run_blocks(self, model, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        first = model.run_block(0, x, c, self)
        r1 = self.run.pool(first - x)  # (real rows, T, D)
        if self.can_reuse(r1):
            self.log.skip_blocks(self.step, 1, model.depth)
            return first + self.tail
        h = first
        for index in range(1, model.depth):
            h = model.run_block(index, h, c, self)
        self.tail = h - first
        self.reference = r1
        return h

    def can_reuse(self, r1: torch.Tensor) -> bool:
        """ParaAttention's `get_can_use_cache`: d < threshold past the warm-up, given a reference."""
        j = self.run.num_steps - 1 - self.step
        if j < self.config.warmup_steps or self.config.threshold <= 0.0 or self.reference is None:
            return False
        self.log.add_overhead(self.step, 2 * r1.shape[1] * r1.shape[2])  # the two abs-mean reductions, per row
        self.host_syncs += 1
        return relative_l1(r1, self.reference).item() < self.config.threshold  # the step's one host read
