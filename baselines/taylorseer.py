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
from the device. The factors of all blocks and branches are stacked in one tensor, so a step's
derivative update is 2 m whole-model kernels (the official operations, bit for bit) and its
forecast one weighted sum over the stacked factors (a GEMV reading each factor once; the
official term-by-term sum makes 3 m passes, 6x slower on a CPU, and rounds differently by a few ulp).
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
    code: ClassVar[str] = "https://github.com/Shenyi-Z/TaylorSeer"
    faithfulness: ClassVar[str] = "matches the official TaylorSeer-DiT code (golden fixtures)"

    def schedule(self, run: RunInfo) -> torch.Tensor:
        c = self.config
        full = torch.tensor(taylorseer_full_steps(run.num_steps, c.interval, c.first_enhance))
        return full[:, None, None].expand(run.num_steps, run.depth, 2)

    def start(self, run: RunInfo) -> None:
        super().start(run)
        c = self.config
        self.steps = taylorseer_plan(run.num_steps, c.interval, c.max_order, c.first_enhance)
        per_element = run.depth * 2 * run.num_tokens * run.hidden_size  # elements of all branch outputs, one row
        weights = torch.zeros(run.num_steps, c.max_order + 1, dtype=torch.float64)
        for i, step in enumerate(self.steps):
            # Taylor: (m + 1) multiply-adds per element; full: one subtract-divide per refreshed derivative.
            self.log.add_overhead(i, float(step.orders * per_element))
            if not step.full:
                weights[i, :step.orders] = torch.tensor([step.offset ** k / math.factorial(k) for k in range(step.orders)],
                                                        dtype=torch.float64)
        self.weights = weights.float().to(run.device)  # (S, m + 1): x^k / k! per Taylor step, moved once
        # Allocated at the first branch output: two (m + 1, depth, 2, B, T, D) factor stores (current, next), the
        # forecast (depth, 2, B, T, D), and per-branch views of each store's D_0 and of the forecast, made once so
        # that a step indexes nothing.
        self.buffers: list[torch.Tensor] = []
        self.fresh_views: list[list[list[torch.Tensor]]] = []
        self.forecast: torch.Tensor | None = None
        self.forecast_views: list[list[torch.Tensor]] = []

    def allocate(self, out: torch.Tensor) -> None:
        depth = self.run.depth
        self.buffers = [out.new_empty((self.config.max_order + 1, depth, 2, *out.shape)) for _ in range(2)]
        self.fresh_views = [[[buf[0, b, k] for k in range(2)] for b in range(depth)] for buf in self.buffers]
        self.forecast = out.new_empty((depth, 2, *out.shape))
        self.forecast_views = [[self.forecast[b, k] for k in range(2)] for b in range(depth)]

    def begin_step(self, index: int) -> None:
        super().begin_step(index)
        step = self.steps[index]
        if not step.full:  # every branch of every block at once: the forecast does not depend on x
            factors = self.buffers[0][:step.orders]
            if step.orders == 1:
                self.forecast.copy_(factors[0])
            else:  # sum_k D_k x^k / k! as one weighted sum over the stacked factors (a GEMV, memory-bound)
                weights = self.weights[index, None, :step.orders].to(factors.dtype)  # (1, m + 1)
                torch.mm(weights, factors.view(step.orders, -1), out=self.forecast.view(1, -1))

    def end_step(self) -> None:
        step = self.steps[self.step]
        if step.full:  # D_(k+1) = (D_k(new) - D_k(old)) / s, the official operations, into the other buffer
            new, old = self.buffers[1], self.buffers[0]
            for k in range(step.orders):
                torch.sub(new[k], old[k], out=new[k + 1]).div_(step.offset)
            self.buffers.reverse()
            self.fresh_views.reverse()
        super().end_step()

    def finish(self):
        self.buffers, self.fresh_views, self.forecast, self.forecast_views = [], [], None, []
        return super().finish()

    def branch(self, block: int, kind: int, fn: Callable[[torch.Tensor], torch.Tensor],
               make_h: Callable[[], torch.Tensor]) -> torch.Tensor:
        if not self.current[block][kind]:
            return self.forecast_views[block][kind]  # the branch input is never computed
        out = fn(make_h())
        if not self.buffers:
            self.allocate(out)
        self.fresh_views[1][block][kind].copy_(out)  # the next D_0
        return out
