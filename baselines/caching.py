"""What the caching methods share: a branch-output cache and static branch schedules.

Every reuse method keeps, per block and branch, the ungated output of its last evaluation
(`BranchCache`); the gate is always recomputed from the current conditioning, as in every
official DiT-derived implementation. Methods whose decisions are fixed before sampling
(Learning-to-Cache, FORA, LazyDiT's static variant) are `ScheduledBranchPolicy`s: a
(steps, depth, 2) compute mask replayed for the whole batch, written into the decision log
at `start` (so a dry run equals the real one) and never read back from the device.
Extrapolating methods keep their own state: TaylorSeer's factors update recursively (the official
operation order), AB-Cache combines whole model outputs.
"""
from __future__ import annotations

from typing import Callable, ClassVar

import torch

from harness.methods import Policy, RunInfo


class BranchCache:
    """The last ungated output of each (block, branch) of one sampling call."""

    def __init__(self, depth: int):
        self.outputs: list[list[torch.Tensor | None]] = [[None, None] for _ in range(depth)]

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        block, kind = key
        out = self.outputs[block][kind]
        if out is None:
            raise RuntimeError(f"branch {kind} of block {block} is reused before it was ever computed")
        return out

    def __setitem__(self, key: tuple[int, int], value: torch.Tensor) -> None:
        block, kind = key
        self.outputs[block][kind] = value

    def __contains__(self, key: tuple[int, int]) -> bool:
        block, kind = key
        return self.outputs[block][kind] is not None


class ScheduledBranchPolicy(Policy):
    """Branch reuse by a static compute mask, the same for every sample of the batch.

    Subclasses return the mask from `schedule(run)`: (num_steps, depth, 2) bool indexed by
    step index, True = compute. The first sampled step always computes (nothing is cached
    yet). Decisions are plain Python bools, so a step is a fixed sequence of kernels (what
    `torch.compile`, CUDA graphs and mobile export need) and nothing is read from the device.
    """

    static_decisions: ClassVar[bool] = True

    def schedule(self, run: RunInfo) -> torch.Tensor:
        raise NotImplementedError

    def start(self, run: RunInfo) -> None:
        super().start(run)
        plan = self.schedule(run).bool().cpu().clone()
        want = (run.num_steps, run.depth, 2)
        if tuple(plan.shape) != want:
            raise ValueError(f"method {self.name!r}: schedule of shape {tuple(plan.shape)} does not fit a run with "
                             f"(steps, depth, 2) = {want}")
        plan[run.num_steps - 1] = True  # the first step computes: nothing cached yet
        self.plan = [tuple((bool(a), bool(m)) for a, m in step.tolist()) for step in plan]
        self.log.branch.copy_(plan.to(self.log.branch)[..., None].expand_as(self.log.branch))
        self.cache = BranchCache(run.depth)
        self.current: tuple[tuple[bool, bool], ...] = ()  # this step's plan (compile guards on it, not on the step)

    def begin_step(self, index: int) -> None:
        super().begin_step(index)
        self.current = self.plan[index]

    def finish(self):
        self.cache = BranchCache(0)  # release the cached tensors
        return super().finish()

    def branch(self, block: int, kind: int, fn: Callable[[torch.Tensor], torch.Tensor],
               make_h: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.current[block][kind]:
            out = fn(make_h())
            self.cache[block, kind] = out
            return out
        return self.cache[block, kind]  # the branch input is never computed
