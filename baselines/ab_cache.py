"""AB-Cache: the model output of a cached step predicted from the previous ones with Adams-Bashforth weights.

Yu et al., "AB-Cache: Training-Free Acceleration of Diffusion Models via Adams-Bashforth Cached
Feature Reuse", https://arxiv.org/abs/2504.10540. The official code (aSleepyTree/AB-Cache) is not
reachable, so this is a re-implementation from the paper and the harness's rule
(../shared/reference/caching-methods.md §8):

    step j (sampling order, j = N-1-i) computes  iff  j < warmup  or  j % interval == 0;
    otherwise  F_j = sum_{m=1..k} a_m F_{j-m},  k = min(order, j),

over the previous k outputs in sampling order, computed or predicted. F is the whole model
output (every output channel, both CFG halves, before guidance), so a predicted step runs no
embedder, block or final layer. The schedule is fixed before sampling: no host reads.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from harness.methods import METHODS, BlockStack, Policy, RunInfo

# Adams-Bashforth weights a_1..a_k (most recent output first) for k = 1..4.
AB_WEIGHTS: tuple[tuple[float, ...], ...] = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


def ab_compute_steps(num_steps: int, warmup: int, interval: int) -> list[bool]:
    """Whether step j (sampling order) runs the model: j < warmup or j % interval == 0."""
    return [j < warmup or j % interval == 0 for j in range(num_steps)]


def ab_predict(history: list[torch.Tensor]) -> torch.Tensor:
    """sum_m a_m F_(j-m) over `history` (most recent first), with the AB weights of its length."""
    weights = AB_WEIGHTS[len(history) - 1]
    out = history[0] * weights[0]
    for weight, past in zip(weights[1:], history[1:]):
        out.add_(past, alpha=weight)
    return out


@METHODS.register("ab-cache")
class ABCachePolicy(Policy):
    """AB-Cache (re-implementation from the paper, no reachable official code): cached steps predict the
    model output as an Adams-Bashforth combination of the previous outputs; static schedule."""

    @dataclass(frozen=True)
    class Config:
        order: int = 2  # k: how many previous outputs the prediction combines (1..4)
        warmup: int = 5  # the first `warmup` steps (sampling order) always compute
        interval: int = 6  # past the warm-up, step j computes iff j % interval == 0

    name: ClassVar[str] = "ab-cache"
    paper: ClassVar[str] = "https://arxiv.org/abs/2504.10540"
    static_decisions: ClassVar[bool] = True
    code: ClassVar[str] = ""
    faithfulness: ClassVar[str] = "re-implementation from the paper (no reachable official code)"

    def __init__(self, config: "ABCachePolicy.Config | None" = None):
        super().__init__(config)
        order, warmup, interval = self.config.order, self.config.warmup, self.config.interval
        if order not in range(1, len(AB_WEIGHTS) + 1):
            raise ValueError(f"method {self.name!r}: order={order!r}; accepted: 1, 2, 3, 4")
        if not (isinstance(warmup, int) and warmup >= 0):
            raise ValueError(f"method {self.name!r}: warmup={warmup!r}; accepted: an integer >= 0")
        if not (isinstance(interval, int) and interval >= 1):
            raise ValueError(f"method {self.name!r}: interval={interval!r}; accepted: an integer >= 1")

    def start(self, run: RunInfo) -> None:
        super().start(run)
        self.computes = ab_compute_steps(run.num_steps, self.config.warmup, self.config.interval)
        self.history: deque[torch.Tensor] = deque(maxlen=self.config.order)  # outputs, most recent first

    def finish(self):
        self.history = deque()  # release the cached outputs
        return super().finish()

    def forward(self, model: BlockStack, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        j = self.run.num_steps - 1 - self.step
        if self.computes[j]:
            out = compute()
        else:  # j >= 1 here: step 0 always computes, so the history is never empty
            out = ab_predict(list(self.history))
            self.log.skip_forward(self.step)
            self.log.add_overhead(self.step, len(self.history) * out[0].numel())  # k multiply-adds per element
        self.history.appendleft(out)
        return out
