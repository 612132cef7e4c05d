"""FORA: Fast-Forward Caching in Diffusion Transformer Acceleration (Selvaraju et al., arXiv 2407.01425).

Official code: github.com/prathebaselva/FORA, `src/models.py::DiTBlock.forward` (`boost_infer_static`).
Every `interval`-th step (counted down on the respaced index, anchored at i = 0) and the first
step are full: every block computes and caches both pre-gate branch outputs. Every other step
reuses them in every block; the gates come from the current conditioning, as the official
`x = x + gate_msa(c_now) * cache[-1][layer]['attn']`. The schedule is static and shared by the
whole batch, both CFG halves included, and costs nothing to decide.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from baselines.caching import ScheduledBranchPolicy
from harness.methods import METHODS, RunInfo


def fora_full_steps(num_steps: int, interval: int) -> list[bool]:
    """Per step index i (0 = last sampled): full iff i == N - 1 or i % interval == 0 (official rule)."""
    return [i == num_steps - 1 or i % interval == 0 for i in range(num_steps)]


@METHODS.register("fora")
class FORAPolicy(ScheduledBranchPolicy):
    """Static branch reuse: full steps every `interval` steps, both branches of every block reused otherwise."""

    @dataclass(frozen=True)
    class Config:
        interval: int = 3  # the official `--cache-threshold` N

        def __post_init__(self):
            if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
                raise ValueError(f"fora: interval={self.interval!r}; accepted: an integer >= 1 (1 computes every step)")

    name: ClassVar[str] = "fora"
    paper: ClassVar[str] = "https://arxiv.org/abs/2407.01425"
    code: ClassVar[str] = "https://github.com/prathebaselva/FORA"
    faithfulness: ClassVar[str] = "matches the official code (golden fixtures; its DDPM-only loop driven by DDIM)"

    def schedule(self, run: RunInfo) -> torch.Tensor:
        full = torch.tensor(fora_full_steps(run.num_steps, self.config.interval))
        return full[:, None, None].expand(run.num_steps, run.depth, 2)  # (S, depth, 2): every block, both branches
