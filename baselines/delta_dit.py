"""Δ-DiT: a range of blocks replaced by its input plus the offset it added at the last full step.

Chen et al., "Δ-DiT: A Training-Free Acceleration Method Tailored for Diffusion Transformers",
https://arxiv.org/abs/2406.01125. No official code is public, so this is a re-implementation from
the paper and the harness's rule (../shared/reference/caching-methods.md §3). With j the step in
sampling order (j = N-1-i), `cached_blocks` = N_c and `boundary` = b:

    j % interval == 0: full step; store, for the front range [0, N_c) and the rear range
                       [depth - N_c, depth), delta = range output - range input;
    otherwise:         j < b  (early, outline stage): the rear range becomes its input + delta_rear,
                       j >= b (late, detail stage):   the front range becomes its input + delta_front;
                       the other blocks run.

Caching the offset rather than the output lets the current input propagate through the
skipped range. The ranges overlap when N_c > depth / 2; both deltas come from the same full step.
The schedule is fixed before sampling: no host reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from harness.methods import METHODS, BlockStack, Policy, RunInfo

FULL, REAR, FRONT = "full", "rear", "front"


def delta_dit_plan(num_steps: int, interval: int, boundary: int) -> list[str]:
    """Per step j (sampling order): "full", or which range ("rear" / "front") is replaced by its delta."""
    return [FULL if j % interval == 0 else REAR if j < boundary else FRONT for j in range(num_steps)]


@METHODS.register("delta-dit")
class DeltaDiTPolicy(Policy):
    """Δ-DiT (re-implementation from the paper, no public official code): stage-adaptive caching of a
    block range's offset, refreshed by a full step every `interval` steps; static schedule."""

    @dataclass(frozen=True)
    class Config:
        interval: int = 2  # a full step every `interval` steps (sampling order, the first included)
        cached_blocks: int | None = None  # N_c, blocks per cached range; None: round(0.75 * depth)
        boundary: int | None = None  # b: steps j < b cache the rear range, j >= b the front; None: N // 2

    name: ClassVar[str] = "delta-dit"
    paper: ClassVar[str] = "https://arxiv.org/abs/2406.01125"
    static_decisions: ClassVar[bool] = True
    code: ClassVar[str] = ""
    faithfulness: ClassVar[str] = "re-implementation from the paper (no reachable official code)"

    def __init__(self, config: "DeltaDiTPolicy.Config | None" = None):
        super().__init__(config)
        interval = self.config.interval
        if not (isinstance(interval, int) and interval >= 1):
            raise ValueError(f"method {self.name!r}: interval={interval!r}; accepted: an integer >= 1")

    def start(self, run: RunInfo) -> None:
        super().start(run)
        depth, steps = run.depth, run.num_steps
        blocks = round(0.75 * depth) if self.config.cached_blocks is None else self.config.cached_blocks
        boundary = steps // 2 if self.config.boundary is None else self.config.boundary
        if not (isinstance(blocks, int) and 1 <= blocks <= depth):
            raise ValueError(f"method {self.name!r}: cached_blocks={blocks!r}; accepted: 1 <= cached_blocks <= depth "
                             f"= {depth}, or None for round(0.75 * depth)")
        if not (isinstance(boundary, int) and 0 <= boundary <= steps):
            raise ValueError(f"method {self.name!r}: boundary={boundary!r}; accepted: 0 <= boundary <= steps = {steps}, "
                             f"or None for steps // 2")
        self.cached_blocks, self.boundary = blocks, boundary
        self.plan = delta_dit_plan(steps, self.config.interval, boundary)
        self.delta_front: torch.Tensor | None = None  # h after block N_c - 1 minus h before block 0
        self.delta_rear: torch.Tensor | None = None  # h after the last block minus h before block depth - N_c

    def parameters(self) -> dict[str, Any]:
        """The arguments, with the defaults resolved once a run has fixed depth and steps."""
        resolved = {"cached_blocks": self.cached_blocks, "boundary": self.boundary} if self.run is not None else {}
        return {**super().parameters(), **resolved}

    def finish(self):
        self.delta_front = self.delta_rear = None  # release the cached offsets
        return super().finish()

    def run_blocks(self, model: BlockStack, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        depth, blocks = model.depth, self.cached_blocks
        rear = depth - blocks  # first block of the rear range
        kind = self.plan[self.run.num_steps - 1 - self.step]
        if kind == FULL:
            h = x
            for index in range(depth):
                if index == rear:
                    rear_in = h
                h = model.run_block(index, h, c, self)
                if index == blocks - 1:
                    self.delta_front = h - x
            self.delta_rear = h - rear_in
            return h
        if kind == REAR:  # blocks [0, depth - N_c) run, the rear range adds its stored offset
            h = x
            for index in range(rear):
                h = model.run_block(index, h, c, self)
            self.log.skip_blocks(self.step, rear, depth)
            return h + self.delta_rear
        h = x + self.delta_front  # FRONT: the front range adds its stored offset, blocks [N_c, depth) run
        self.log.skip_blocks(self.step, 0, blocks)
        for index in range(blocks, depth):
            h = model.run_block(index, h, c, self)
        return h
