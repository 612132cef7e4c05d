"""ToCa: token-wise feature caching (Zou et al., ICLR 2025), the official DiT-ToCa rules.

Paper: https://arxiv.org/abs/2410.05317; code: https://github.com/Shenyi-Z/ToCa (`DiT-ToCa/`).

Each block of each step is either `full` (both branches computed and cached, the attention
probabilities kept for scoring, every token's staleness reset) or `ToCa`: the attention output
is reused whole, and the MLP is recomputed for the k highest-scoring tokens of each row only,
scattered into the cached MLP output. Which blocks are full, and k, depend on the step index
alone (`toca_plan`), so the log's shares are fixed before sampling; which tokens are chosen
depends on the data, per row (the CFG halves choose apart), on the device without host reads
(`host_syncs` stays 0: k comes from the plan; top-k, gather and scatter stay on the device).

Faithful to the official code, including its quirks: the full-step interval is recomputed
(`force_scheduler`) only on full blocks of layer 0, so block 0 decides with the interval of the
previous full step and blocks 1.. with the current one; the ratio and threshold arithmetic is
float32 as there. One generalisation: the layer factor's l/27 (DiT-XL's last block) is
l/(depth-1). One saving that changes no decision: a full block whose probabilities no later
ToCa block of its layer reads (k = 0 until the next full block) keeps fused SDPA attention.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

from harness.methods import ATTN, METHODS, MLP, BranchInput, Policy, RunInfo, attention_probs
from baselines.caching import BranchCache

RATIO_SCHEDULERS = ("ToCa-ddim50", "ToCa-ddpm250")
FORCE_FRESH = ("global", "local", "none")  # DiT-ToCa reads it only to switch the staleness score on ("global")
CACHE_TYPES = ("attention",)
GRID, GRID_BONUS = 2, 0.6  # the official uniform-spatial-distribution bonus (s4): best of each 2x2 cell gets +0.6 * its score


# ----------------------------------------------------------------------------------------
#                          Step typing and fresh-token counts
# ----------------------------------------------------------------------------------------

def force_threshold(step: int, num_steps: int, fresh_threshold: int, fresh_ratio: float) -> float:
    """`force_scheduler`: the full-step interval set at step `step`, float32 as the official code."""
    weight = 0.0 if fresh_ratio == 0 else 0.4  # fresh_ratio 0 is the official FORA mode
    step_factor = torch.tensor(1 + weight - 2 * weight * step / num_steps)
    threshold = float(torch.round(fresh_threshold / step_factor))
    if fresh_ratio != 0 and step in range(int(num_steps * 0.2), int(num_steps * 0.4)):
        threshold = 2.0  # the steps the official code finds most cache-sensitive
    return threshold


def fresh_ratio(scheduler: str, ratio: float, step: int, num_steps: int, layer: int, depth: int) -> float:
    """`fresh_ratio_scheduler` for the MLP module (l / 27 generalised to l / (depth - 1))."""
    if scheduler == "ToCa-ddim50":
        step_weight, layer_weight = 2.0, -0.2
    elif scheduler == "ToCa-ddpm250":
        step_weight, layer_weight = 0.4, 0.8
    else:
        raise ValueError(f"ratio_scheduler {scheduler!r} is not supported; accepted: {', '.join(RATIO_SCHEDULERS)}")
    step_factor = 1 + step_weight - 2 * step_weight * step / num_steps
    layer_factor = 1 + layer_weight - 2 * layer_weight * layer / max(depth - 1, 1)
    module_factor = 1 + 0.6 * 2.5  # the MLP's share; attention's is 1 - 0.4 * 2.5 = 0: never partially fresh
    return ratio * layer_factor * step_factor * module_factor


def fresh_tokens(ratio: float, num_tokens: int) -> int:
    """k = int(clamp(ratio, 0, 1) * T), in float32 as `cache_cutfresh`."""
    return int(torch.clamp(torch.tensor(ratio), 0.0, 1.0) * num_tokens)


def toca_plan(config: "ToCaPolicy.Config", num_steps: int, depth: int, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which blocks are full, and k for the others, per step index: (full (S, depth) bool, k (S, depth) int).

    `cal_type` per block: full at the first step or where i % interval == 0, with the interval
    of the last full block of layer 0 (`force_init` -> `force_scheduler`, called there only).
    """
    full = torch.zeros(num_steps, depth, dtype=torch.bool)
    fresh = torch.zeros(num_steps, depth, dtype=torch.long)
    interval = float(config.fresh_threshold)
    for step in reversed(range(num_steps)):
        for layer in range(depth):
            first = step == num_steps - 1
            full[step, layer] = first or step % interval == 0
            if full[step, layer] and layer == 0:
                interval = force_threshold(step, num_steps, config.fresh_threshold, config.fresh_ratio)
            elif not full[step, layer]:
                ratio = fresh_ratio(config.ratio_scheduler, config.fresh_ratio, step, num_steps, layer, depth)
                fresh[step, layer] = fresh_tokens(ratio, num_tokens)
    return full, fresh


def probabilities_needed(full: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """(S, depth) bool: full blocks whose attention probabilities a later ToCa block of the layer scores with."""
    need = torch.zeros_like(full)
    for layer in range(full.shape[1]):
        reads = False  # does a ToCa block after this step (before the layer's next full block) select tokens?
        for step in range(full.shape[0]):  # from the last sampled step back to the first
            if full[step, layer]:
                need[step, layer], reads = reads, False
            else:
                reads = reads or bool(fresh[step, layer] > 0)
    return need


# ----------------------------------------------------------------------------------------
#                                     Token scores
# ----------------------------------------------------------------------------------------

def attention_score(probs: torch.Tensor) -> torch.Tensor:
    """s1 (N, T) from probabilities (N, heads, T, T): the attention each key token receives (head mean,
    summed over queries), L2-normalised."""
    return F.normalize(probs.mean(dim=1).sum(dim=1), dim=1, p=2)


def spatial_bonus(score: torch.Tensor) -> torch.Tensor:
    """s4: in each 2x2 cell of the token grid, the best token gets +0.6 x its score (spreads the fresh tokens)."""
    B, T = score.shape
    side = math.isqrt(T)
    cells = score.view(B, side // GRID, GRID, side // GRID, GRID).permute(0, 1, 3, 2, 4).reshape(B, -1, GRID * GRID)
    best, where = cells.max(dim=-1, keepdim=True)  # (N, cells, 1)
    cells = cells.scatter_add(-1, where, best * GRID_BONUS)
    return cells.view(B, side // GRID, side // GRID, GRID, GRID).permute(0, 1, 3, 2, 4).reshape(B, T)


# ----------------------------------------------------------------------------------------
#                                        Policy
# ----------------------------------------------------------------------------------------

@METHODS.register("toca")
class ToCaPolicy(Policy):
    """Official DiT-ToCa: per-block full/ToCa typing, attention reused, top-k fresh MLP tokens."""

    @dataclass(frozen=True)
    class Config:
        fresh_threshold: int = 3  # the full-step interval before `force_scheduler`'s step factor
        fresh_ratio: float = 0.07  # base share of fresh MLP tokens; 0: FORA mode (no fresh tokens)
        ratio_scheduler: str = "ToCa-ddim50"  # "ToCa-ddim50" or "ToCa-ddpm250"
        soft_fresh_weight: float = 0.25  # weight of the staleness score s3 = cache_index / fresh_threshold
        force_fresh: str = "global"  # "global": staleness scored; "local" / "none": not (DiT-ToCa's only use)
        cache_type: str = "attention"  # token score: attention received at the layer's last full step

        def __post_init__(self):
            if self.fresh_threshold < 1:
                raise ValueError(f"fresh_threshold {self.fresh_threshold} must be >= 1")
            if self.fresh_ratio < 0:
                raise ValueError(f"fresh_ratio {self.fresh_ratio} must be >= 0")
            for name, value, accepted in (("ratio_scheduler", self.ratio_scheduler, RATIO_SCHEDULERS),
                                          ("force_fresh", self.force_fresh, FORCE_FRESH),
                                          ("cache_type", self.cache_type, CACHE_TYPES)):
                if value not in accepted:
                    raise ValueError(f"{name} {value!r} is not supported; accepted: {', '.join(accepted)}")

    name: ClassVar[str] = "toca"
    paper: ClassVar[str] = "https://arxiv.org/abs/2410.05317"
    code: ClassVar[str] = "https://github.com/Shenyi-Z/ToCa"
    faithfulness: ClassVar[str] = "matches the official DiT-ToCa code (golden fixtures); layer factor l/(depth-1)"

    def start(self, run: RunInfo) -> None:
        super().start(run)
        side = math.isqrt(run.num_tokens)
        if side * side != run.num_tokens or side % GRID:
            raise ValueError(f"toca needs a square token grid with an even side for its 2x2 bonus; got {run.num_tokens} tokens")
        full, fresh = toca_plan(self.config, run.num_steps, run.depth, run.num_tokens)
        self.full, self.fresh = full.tolist(), fresh.tolist()
        self.needs_probs = probabilities_needed(full, fresh).tolist()
        share = torch.where(full, 1.0, fresh / run.num_tokens)  # (S, depth): share of MLP tokens computed
        self.log.branch[:, :, ATTN] = full[..., None].to(self.log.branch)
        self.log.branch[:, :, MLP] = share[..., None].to(self.log.branch)
        self.cache = BranchCache(run.depth)
        self.scores: list[torch.Tensor | None] = [None] * run.depth  # s1 per layer, from its last full block
        self.stale: list[torch.Tensor | None] = [None] * run.depth  # cache_index: ToCa steps since refreshed (N, T)

    def begin_step(self, index: int) -> None:
        super().begin_step(index)
        self.overhead = 0.0  # this step's scoring work per row, element operations (written once, at the step's end)

    def end_step(self) -> None:
        if self.overhead:
            self.log.add_overhead(self.step, self.overhead)

    def finish(self):
        self.cache, self.scores, self.stale = BranchCache(0), [], []  # release the cached tensors
        return super().finish()

    def branch(self, block: int, kind: int, fn: Callable[[torch.Tensor], torch.Tensor],
               make_h: BranchInput) -> torch.Tensor:
        if self.full[self.step][block]:
            return self.compute(block, kind, fn, make_h)
        if kind == ATTN:
            return self.cache[block, ATTN]  # attention is never partially fresh
        return self.refresh_tokens(block, fn, make_h, self.fresh[self.step][block])

    def compute(self, block: int, kind: int, fn: Callable[[torch.Tensor], torch.Tensor],
                make_h: BranchInput) -> torch.Tensor:
        """A full block: compute, cache, reset staleness; keep s1 where a later ToCa block reads it."""
        T = self.run.num_tokens
        if kind == ATTN and self.needs_probs[self.step][block]:
            out, probs = attention_probs(fn)(make_h())
            self.scores[block] = attention_score(probs)
            self.overhead += (probs.shape[1] + 1) * T * T + 2 * T  # head mean, query sum, L2 norm
        else:
            out = fn(make_h())
        if kind == MLP:
            self.stale[block] = torch.zeros(out.shape[:2], dtype=torch.int, device=out.device)
        self.cache[block, kind] = out
        return out

    def refresh_tokens(self, block: int, fn: Callable[[torch.Tensor], torch.Tensor], make_h: BranchInput,
                       k: int) -> torch.Tensor:
        """A ToCa block's MLP: the top-k tokens of each row by score computed and scattered into the cache."""
        cached, stale = self.cache[block, MLP], self.stale[block]
        if k > 0:
            score = self.scores[block]
            if self.config.force_fresh == "global":
                score = score + self.config.soft_fresh_weight * (stale.float() / self.config.fresh_threshold)
            index = spatial_bonus(score).topk(k, dim=1).indices  # (N, k)
            cached.scatter_(1, index.unsqueeze(-1).expand(-1, -1, cached.shape[-1]), fn(make_h.tokens(index)))
            stale += 1
            stale.scatter_(1, index, 0)
            T, D = self.run.num_tokens, self.run.hidden_size
            self.overhead += 4 * T + T * math.ceil(math.log2(T)) + 2 * k * D  # score, bonus, top-k, gather, scatter
        else:
            stale += 1
        return cached
