"""TaylorSeer: From Reusing to Forecasting (Liu et al., ICCV 2025, arXiv 2503.06923).

Official code: github.com/Shenyi-Z/TaylorSeer, `TaylorSeer-DiT/` (`cache_functions/cal_type.py`,
`taylor_utils/__init__.py`, `models.py::DiTBlock.forward`). The first `first_enhance` steps are
full, then a counter makes every `interval`-th step full (`cal_type`). A full step computes every
branch and refreshes, per block and branch, the Taylor factors of its pre-gate output by finite
differences over the latest spacing s = i - i_prev_full (`derivative_approximation`):

    D_0 <- F,   D_(k+1) <- (D_k(new) - D_k(old)) / s   for k < max_order while D_k(old) exists,

so the order grows by one per full step (only once i < N - first_enhance + 1, as the official
condition says; before that D_0 alone). Every other step forecasts each branch output as

    F(i) = sum_k D_k (i - i_last_full)^k / k!       (`taylor_formula`)

and adds it through the current gate. The schedule is static (decided before sampling), so
the decision log and the extrapolation overhead are written at `start` and nothing is read
from the device. Factors live in one tensor per order for all blocks and branches, so a step's
extrapolation or derivative update is a few whole-model kernels, not a loop over blocks; the
arithmetic is the official one operation for operation (bit-identical factors and forecasts).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from baselines.caching import ScheduledBranchPolicy
from harness.methods import METHODS, RunInfo


def taylorseer_full_steps(num_steps: int, interval: int, first_enhance: int) -> list[bool]:
    """Per step index i (0 = last sampled): the official `cal_type` typing (True = full, False = Taylor)."""
    full, counter = [False] * num_steps, 0
    for i in reversed(range(num_steps)):
        if i > num_steps - first_enhance - 1 or counter == interval - 1:
            full[i], counter = True, 0
        else:
            counter += 1
    return full


@dataclass(frozen=True)
class StepPlan:
    """What one step does: a full step's spacing and derivative count, or a Taylor step's offset and order count."""

    full: bool
    offset: int  # full: i - i_prev_full (the divisor); Taylor: i - i_last_full (the expansion point distance)
    orders: int  # full: derivatives refreshed (0 = D_0 only); Taylor: factors summed (m + 1)


def taylorseer_plan(num_steps: int, interval: int, max_order: int, first_enhance: int) -> list[StepPlan]:
    """Per step index, the official bookkeeping replayed: `activated_steps` and the factor count per branch.

    The official `activated_steps` starts as [49] (50 steps hard-coded); it is only ever read as the
    previous full step of step N-1, whose factors were just reset, so [N - 1] changes nothing.
    """
    plan: list[StepPlan | None] = [None] * num_steps
    activated, factors = [num_steps - 1], 0
    for i, full in reversed(list(enumerate(taylorseer_full_steps(num_steps, interval, first_enhance)))):
        if full:
            activated.append(i)
            derivatives = min(factors, max_order) if i < num_steps - first_enhance + 1 else 0
            factors = derivatives + 1
            plan[i] = StepPlan(True, activated[-1] - activated[-2], derivatives)
        else:
            plan[i] = StepPlan(False, i - activated[-1], factors)
    return plan


@METHODS.register("taylorseer")
class TaylorSeerPolicy(ScheduledBranchPolicy):
    """Static Taylor forecasting of every branch between full steps."""

    @dataclass(frozen=True)
    class Config:
        interval: int = 4  # N: every interval-th step is full after the warm-up
        max_order: int = 4  # O: highest derivative order
        first_enhance: int = 2  # full warm-up steps (hard-coded 2 in the official cache_init)

        def __post_init__(self):
            for name, low in (("interval", 1), ("max_order", 0), ("first_enhance", 1)):
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, int) or value < low:
                    raise ValueError(f"taylorseer: {name}={value!r}; accepted: an integer >= {low}")

    name: ClassVar[str] = "taylorseer"
    paper: ClassVar[str] = "https://arxiv.org/abs/2503.06923"

    def schedule(self, run: RunInfo) -> torch.Tensor:
        c = self.config
        full = torch.tensor(taylorseer_full_steps(run.num_steps, c.interval, c.first_enhance))
        return full[:, None, None].expand(run.num_steps, run.depth, 2)

    def start(self, run: RunInfo) -> None:
        super().start(run)
        c = self.config
        self.steps = taylorseer_plan(run.num_steps, c.interval, c.max_order, c.first_enhance)
        per_element = run.depth * 2 * run.num_tokens * run.hidden_size  # elements of all branch outputs, one row
        for i, step in enumerate(self.steps):
            # Taylor: (m + 1) multiply-adds per element; full: one subtract-divide per refreshed derivative.
            self.log.add_overhead(i, float(step.orders * per_element))
        self.factors: list[torch.Tensor] = []  # D_k for k = 0..m, each (depth, 2, B, T, D)
        self.spare: list[torch.Tensor] = []  # buffers of dropped orders, reused
        self.fresh: torch.Tensor | None = None  # this full step's branch outputs, the next D_0
        self.forecast: torch.Tensor | None = None

    def begin_step(self, index: int) -> None:
        super().begin_step(index)
        step = self.steps[index]
        if not step.full:  # every branch of every block, in one pass: the forecast does not depend on x
            x, forecast = step.offset, self.factors[0]
            for k in range(1, step.orders):
                term = self.factors[k] * (1 / math.factorial(k)) * (x ** k)  # the official operation order
                forecast = forecast + term if k == 1 else forecast.add_(term)
            self.forecast = forecast

    def end_step(self) -> None:
        step = self.steps[self.step]
        if step.full:  # D_(k+1) = (D_k(new) - D_k(old)) / s, in place in D_k(old)'s buffer: (old - new) / -s is the same float
            new = self.fresh
            for old in self.factors[:step.orders]:
                new = old.sub_(new).div_(-step.offset)
            self.spare += self.factors[step.orders:]
            self.factors = [self.fresh] + self.factors[:step.orders]
            self.fresh = None
        self.forecast = None
        super().end_step()

    def finish(self):
        self.factors, self.spare, self.fresh, self.forecast = [], [], None, None
        return super().finish()

    def branch(self, block: int, kind: int, fn: Callable[[torch.Tensor], torch.Tensor],
               make_h: Callable[[], torch.Tensor]) -> torch.Tensor:
        if not self.current[block][kind]:
            return self.forecast[block, kind]  # the branch input is never computed
        out = fn(make_h())
        if self.fresh is None:
            self.fresh = self.spare.pop() if self.spare else out.new_empty((self.run.depth, 2, *out.shape))
        self.fresh[block, kind] = out
        return out
