"""Training a reuse decision on a frozen DiT: fill the branch caches with one full step, then blend.

LazyDiT's lazy learning and Learning-to-Cache's router training share one recipe: from
x_t at step index t, one full DDIM step (eta 0, no CFG) fills every branch cache and gives
x_{t-1}; at index t-1 the full model's output is the target, and the model run with a
`BlendPolicy` (each branch: s * f(h) + (1 - s) * cached, s the method's soft decision)
is the prediction. The method adds its own penalty on the decisions to the MSE.
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, ClassVar, Iterator

import numpy as np
import torch
import torch.nn as nn

from harness.diffusion import Diffusion
from harness.methods import COMPUTE_ALL, Policy
from harness.sampling import run_info


class CacheFillPolicy(Policy):
    """Computes every branch and keeps its ungated output (the full DDIM step at index t)."""

    name: ClassVar[str] = "train-fill"

    def __init__(self):
        super().__init__()
        self.cache: dict[tuple[int, int], torch.Tensor] = {}

    def branch(self, block: int, kind: int, fn: Callable[[torch.Tensor], torch.Tensor],
               make_h: Callable[[], torch.Tensor]) -> torch.Tensor:
        out = fn(make_h())
        self.cache[(block, kind)] = out
        return out


class BlendPolicy(Policy):
    """Blends s * f(h) + (1 - s) * cache per branch, keeping each branch's s for the penalty.

    Subclasses give `decision(h, block, kind)`: s as (N,) per sample or a scalar per branch.
    """

    name: ClassVar[str] = "train-blend"

    def __init__(self, cache: dict[tuple[int, int], torch.Tensor]):
        super().__init__()
        self.cache = cache
        self.scores: dict[int, list[torch.Tensor]] = {0: [], 1: []}  # kind -> per-block decisions

    def decision(self, h: torch.Tensor, block: int, kind: int) -> torch.Tensor:
        raise NotImplementedError

    def branch(self, block: int, kind: int, fn: Callable[[torch.Tensor], torch.Tensor],
               make_h: Callable[[], torch.Tensor]) -> torch.Tensor:
        h = make_h()
        score = self.decision(h, block, kind)
        self.scores[kind].append(score)
        s = score.view(-1, 1, 1).to(h.dtype)
        return fn(h) * s + self.cache[(block, kind)] * (1 - s)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """The model in eval mode with no parameter gradients; restores both afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval().requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


def fill_then_blend(model: nn.Module, diffusion: Diffusion, x0: torch.Tensor, y: torch.Tensor, index: int,
                    noise: torch.Tensor, make_blend: Callable[[dict[tuple[int, int], torch.Tensor]], BlendPolicy],
                    ) -> tuple[torch.Tensor, torch.Tensor, BlendPolicy]:
    """(target, prediction, the blend policy) at step index `index` - 1, caches filled at `index`.

    Args:
        model: the frozen DiT (call inside `frozen(model)`).
        diffusion: the respaced diffusion of the step budget.
        x0: clean latents (N, C, H, W); y: labels (N,), already label-dropped.
        index: the step index t >= 1 of the full DDIM step that fills the caches.
        noise: the q_sample noise, like x0.
        make_blend: builds the method's blend policy over the filled caches.
    """
    if not 1 <= index < diffusion.num_timesteps:
        raise ValueError(f"step index {index} cannot be trained from; accepted: 1..{diffusion.num_timesteps - 1}")
    n = len(x0)
    run = run_info(model, diffusion, n, cfg=False, device=x0.device)
    fill = CacheFillPolicy()
    with torch.no_grad():
        x_t = diffusion.q_sample(x0, torch.full((n,), index, device=x0.device), noise)
        t = torch.full((n,), diffusion.timestep_map[index], device=x0.device)
        fill.start(run)
        x_prev = diffusion.ddim_step(model(x_t, t, y, fill), x_t, index)
        t_prev = torch.full((n,), diffusion.timestep_map[index - 1], device=x0.device)
        target = model(x_prev, t_prev, y, COMPUTE_ALL)
    blend = make_blend(fill.cache)
    blend.start(run)
    pred = model(x_prev, t_prev, y, blend)
    return target, pred, blend


def output_mse(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """mean_flat((target - pred)^2) over every output channel, averaged over the batch."""
    return ((target - pred) ** 2).mean(dim=tuple(range(1, pred.dim()))).mean()


def draw_index(num_steps: int, all_steps: bool, rng: np.random.Generator) -> int:
    """The batch's step index t: odd (the official LazyDiT and L2C recipes) or any of 1..S-1 (`all_steps`)."""
    if num_steps < 2:
        raise ValueError(f"training a reuse decision needs a step budget of at least 2; got {num_steps}")
    if all_steps:
        return int(rng.integers(1, num_steps))
    return int(rng.integers(0, num_steps // 2)) * 2 + 1


def drop_labels(y: torch.Tensor, num_classes: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Replaces each label by the null class with probability p (classifier-free guidance dropout)."""
    drop = torch.rand(len(y), generator=generator) < p
    return torch.where(drop.to(y.device), torch.full_like(y, num_classes), y)


def progress_printer(total: int, describe: Callable[[dict[str, float]], str], every: int = 25,
                     ) -> Callable[[int, dict[str, float]], None]:
    """An on_step callback printing `[it/total] loss .. mse .. <describe(metrics)> (elapsed)` to stderr."""
    start = time.perf_counter()

    def report(it: int, m: dict[str, float]) -> None:
        if (it + 1) % every == 0 or it == 0 or it + 1 == total:
            print(f"[{it + 1}/{total}] loss {m['loss']:.3e} mse {m['mse']:.3e} {describe(m)} "
                  f"({time.perf_counter() - start:.0f}s)", file=sys.stderr)

    return report
