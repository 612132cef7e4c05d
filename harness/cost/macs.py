"""MACs that see every skip: a per-branch cost table measured once, combined with the decision log.

The table holds, per image and per forward pass, the MACs of the parts a method can skip:
each block's attention and MLP branch (with its input's norm and modulation, which a
reused branch skips too), each block's own work (the adaLN linear), and the fixed rest
(embedders, final layer, charged on the steps the model ran at all). It is measured once per architecture with
`torch.utils.flop_counter.FlopCounterMode` on the meta device (no memory, no compute) by
driving the model through the policy hooks, so any family that honours the method
contract is measured the same way. A run's MACs are then the log-weighted sum of the
table plus the method's own overhead (`DecisionLog.overhead_macs`): timed runs carry no
counting overhead.

Two conventions, both in every record:
  (a) `macs_all`: every matmul, attention's activation-activation products included,
      CFG's second forward counted, per image (the DiT paper's per-forward Gflops, which
      are MACs: 118.6 G for DiT-XL/2 at 256, 524.6 G at 512);
  (b) `macs_linear`: the LazyDiT / Learning-to-Cache tables' convention: weight layers only
      (no attention products), per image, no CFG doubling (5.72 TMACs for DDIM-50 at 256,
      22.85 at 512).
Both count adaLN's modulation x * (1 + scale) + shift as one multiply-add per element:
the published 524.6 G and 22.85 T hold only with it (524.54 G and 22.84 T without).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from harness.cache import cached_json, content_hash
from harness.diffusion import Diffusion
from harness.methods import ATTN, MLP, BranchInput, DecisionLog, Policy, RunInfo

aten = torch.ops.aten
COST_TABLE_VERSION = 2

# Record keys.
MACS_ALL = "macs_all_per_image"  # convention (a), whole run
MACS_LINEAR = "macs_linear_per_image"  # convention (b), whole run
MACS_ALL_FULL = "macs_all_per_image_full_compute"  # the same cell with every branch computed
MACS_LINEAR_FULL = "macs_linear_per_image_full_compute"
MACS_ALL_PER_FORWARD = "macs_all_per_forward"  # one full forward pass of one image
MACS_LINEAR_PER_FORWARD = "macs_linear_per_forward"
MACS_OVERHEAD = "macs_overhead_per_image"  # the method's own deciding (scores, routers), (b) convention
MACS_SAVED = "macs_linear_saved_ratio"  # 1 - (b) / (b) full compute
SKIP_RATIO = "skip_ratio"  # share of branch evaluations reused (conditional half)


# ----------------------------------------------------------------------------------------
#                                    Counting operators
# ----------------------------------------------------------------------------------------

def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The CPU flash kernel computes the same two products as the CUDA kernels torch does count."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _broadcast_shift_flop(a: Any, b: Any, *args, out_val=None, **kwargs) -> int:
    """adaLN's `x * (1 + scale) + shift`: one multiply-add per element, seen as the shift's add.

    The add of a per-sample vector (N, 1, D) to tokens (N, T, D), T >= 1, occurs only in modulation;
    every other add (residuals, positional embedding) counts zero.
    """
    if not (torch.is_tensor(a) and torch.is_tensor(b) and a.dim() == 3 and b.dim() == 3):
        return 0
    small, big = (a, b) if a.shape[1] < b.shape[1] else (b, a)
    # big may hold a single token too: a token-level method modulating k = 1 selected tokens (ToCa).
    if small.shape[1] == 1 and small.shape[0] == big.shape[0] and small.shape[2] == big.shape[2]:
        return 2 * big.numel()  # flops, as FlopCounterMode counts them (2 per MAC)
    return 0


_broadcast_shift_flop._get_raw = True  # receives tensors, not shapes

ATTENTION_OPS = (  # activation-by-activation products, left out of convention (b)
    aten.bmm, aten.baddbmm, aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_cudnn_attention, aten._flash_attention_forward, aten._efficient_attention_forward,
)
CUSTOM_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,  # counted as 0 by torch itself
    aten.add: _broadcast_shift_flop,
}


@dataclass(frozen=True)
class Macs:
    """MACs in both conventions: (a) all matmuls, (b) weight layers only."""

    all: float = 0.0
    linear: float = 0.0

    def __add__(self, other: "Macs") -> "Macs":
        return Macs(self.all + other.all, self.linear + other.linear)

    def __sub__(self, other: "Macs") -> "Macs":
        return Macs(self.all - other.all, self.linear - other.linear)


class MacCounter:
    """FlopCounterMode with the CPU attention kernel and adaLN modulation registered; MACs = flops / 2."""

    def __init__(self):
        self.mode = FlopCounterMode(display=False, custom_mapping=CUSTOM_FORMULAS)

    def __enter__(self) -> "MacCounter":
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)

    def total(self) -> Macs:
        counts = self.mode.flop_counts["Global"]
        all_flops = sum(counts.values())
        attention = sum(v for op, v in counts.items() if op in ATTENTION_OPS)
        return Macs(all_flops / 2, (all_flops - attention) / 2)


def count_macs(fn: Callable[[], Any]) -> Macs:
    """MACs of whatever `fn()` computes, counted directly (slow path, for checks)."""
    counter = MacCounter()
    with counter:
        fn()
    return counter.total()


# ----------------------------------------------------------------------------------------
#                                     The cost table
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CostTable:
    """Per-image MACs of one forward pass, split into the parts a method can skip.

    Arrays hold (a) in `[..., 0]` and (b) in `[..., 1]`.
    """

    key: str  # content hash of the architecture the table was measured on
    depth: int
    fixed: np.ndarray  # (2,) embedders + final layer: run whenever the model runs
    block: np.ndarray  # (depth, 2) a block's own work (the adaLN linear), run when the block runs
    branch: np.ndarray  # (depth, 2 branches, 2) attention, MLP, each with its input's norm and modulation

    def per_forward(self) -> Macs:
        total = self.fixed + self.block.sum(0) + self.branch.sum((0, 1))
        return Macs(float(total[0]), float(total[1]))

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "depth": self.depth, "fixed": self.fixed.tolist(),
                "block": self.block.tolist(), "branch": self.branch.tolist(), "version": COST_TABLE_VERSION}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CostTable":
        return cls(data["key"], int(data["depth"]), np.asarray(data["fixed"], dtype=np.float64),
                   np.asarray(data["block"], dtype=np.float64), np.asarray(data["branch"], dtype=np.float64))


class _CostProbe(Policy):
    """Computes everything, attributing the counter's running total to blocks and branches."""

    def __init__(self, counter: MacCounter, depth: int):
        super().__init__()
        self.counter = counter
        self.blocks = [Macs()] * depth
        self.branches = [[Macs(), Macs()] for _ in range(depth)]

    def run_blocks(self, model, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for index in range(model.depth):
            before = self.counter.total()
            x = model.run_block(index, x, c, self)
            self.blocks[index] = self.counter.total() - before
        return x

    def branch(self, block: int, kind: int, fn, make_h) -> torch.Tensor:
        before = self.counter.total()
        out = fn(make_h())  # the branch's norm and modulation count with it: a reused branch skips them too
        self.branches[block][kind] = self.counter.total() - before
        return out


def architecture_key(model: nn.Module) -> str:
    """Content hash of what the MACs depend on: the class, its config and the latent shape."""
    config = model.config
    config = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(vars(config))
    spec = getattr(model, "spec", None)
    return content_hash({"class": type(model).__qualname__, "config": config,
                         "latent_shape": list(spec.latent_shape) if spec is not None else None,
                         "torch": torch.__version__, "version": COST_TABLE_VERSION})


def meta_copy(model: nn.Module) -> nn.Module:
    """The same architecture on the meta device (no memory); `model` itself if already there."""
    if next(model.parameters()).is_meta:
        return model
    with torch.device("meta"):
        copy = type(model)(model.config)
    copy.spec = model.spec
    return copy


def measure_cost_table(model: nn.Module) -> CostTable:
    """Measures the table with one batch-1 forward on the meta device.

    Args:
        model: a harness model (carries `config` and `spec`); its weights are never read.
    """
    meta = meta_copy(model).eval()
    spec = meta.spec
    x = torch.zeros(1, *spec.latent_shape, device="meta")
    t = torch.zeros(1, device="meta")
    y = torch.zeros(1, dtype=torch.long, device="meta")
    counter = MacCounter()
    probe = _CostProbe(counter, meta.depth)
    with torch.no_grad(), counter:
        meta(x, t, y, probe)
    total = counter.total()
    branch = np.array([[[b.all, b.linear] for b in pair] for pair in probe.branches], dtype=np.float64)
    block = np.array([[b.all, b.linear] for b in probe.blocks], dtype=np.float64) - branch.sum(1)
    fixed = np.array([total.all, total.linear]) - block.sum(0) - branch.sum((0, 1))
    return CostTable(architecture_key(model), meta.depth, fixed, block, branch)


def cost_table(model: nn.Module) -> CostTable:
    """The model's cost table, measured once per architecture and cached by content hash."""
    key = architecture_key(model)
    if key not in _TABLES:
        _TABLES[key] = CostTable.from_dict(cached_json("cost", key, lambda: measure_cost_table(model).to_dict()))
    return _TABLES[key]


_TABLES: dict[str, CostTable] = {}  # in-process memo over the on-disk cache


# ----------------------------------------------------------------------------------------
#                                  Decision log -> MACs
# ----------------------------------------------------------------------------------------

def log_macs(table: CostTable, log: DecisionLog) -> np.ndarray:
    """Total MACs per model-batch sample (B, 2) over the whole run: [..., 0] = (a), [..., 1] = (b)."""
    branch = log.branch.detach().double().cpu().numpy()  # (S, depth, 2, B)
    block = log.block.detach().double().cpu().numpy()  # (S, depth, B)
    forward = log.forward.detach().double().cpu().numpy()  # (S, B)
    overhead = log.overhead_macs.detach().double().cpu().numpy()  # (S, B)
    if branch.shape[1] != table.depth:
        raise ValueError(f"decision log has {branch.shape[1]} blocks; the cost table has {table.depth}")
    per_sample = forward.sum(0)[:, None] * table.fixed[None, :] + np.einsum("sdb,dc->bc", block, table.block)
    per_sample += np.einsum("sdkb,dkc->bc", branch, table.branch)
    return per_sample + overhead.sum(0)[:, None]


def full_compute_log(steps: int, images: int, depth: int, cfg: bool) -> DecisionLog:
    """The log of plain DDIM: every branch of every block computed at every step."""
    batch = 2 * images if cfg else images
    run = RunInfo(num_steps=steps, timesteps=tuple(range(steps)), batch=batch, cfg=cfg, depth=depth,
                  num_tokens=0, hidden_size=0, device=torch.device("cpu"))
    return DecisionLog.all_computed(run)


def macs_from_log(table: CostTable, log: DecisionLog) -> dict[str, float]:
    """Both conventions for a run, per image, next to the same cell at full compute.

    Args:
        table: the model's cost table (`cost_table(model)`).
        log: the run's decision log (`SampleOutput.decisions`); its sample axis holds
            [cond..., uncond...] when `log.cfg`.
    """
    batch = log.branch.shape[-1]
    images = batch // 2 if log.cfg else batch
    if images == 0:
        raise ValueError("decision log holds no samples")
    totals = log_macs(table, log)
    cond = totals[:images]
    full = log_macs(table, full_compute_log(log.branch.shape[0], 1, table.depth, log.cfg))
    per_forward = table.per_forward()
    overhead = log.overhead_macs.detach().double().cpu().numpy()[:, :images].sum() / images
    out = {
        MACS_ALL: float(totals[:, 0].sum() / images),
        MACS_LINEAR: float(cond[:, 1].sum() / images),
        MACS_ALL_FULL: float(full[:, 0].sum()),
        MACS_LINEAR_FULL: float(full[0, 1]),
        MACS_ALL_PER_FORWARD: per_forward.all,
        MACS_LINEAR_PER_FORWARD: per_forward.linear,
        MACS_OVERHEAD: float(overhead),
        SKIP_RATIO: float(log.lazy_ratio()["all"]),
    }
    out[MACS_SAVED] = 1.0 - out[MACS_LINEAR] / out[MACS_LINEAR_FULL]
    return out


# ----------------------------------------------------------------------------------------
#                          Decisions of static schedules (dry run)
# ----------------------------------------------------------------------------------------

class _StandInStack:
    """A block stack whose branches cost nothing: drives a policy's hooks to read its schedule."""

    def __init__(self, depth: int):
        self.depth = depth

    def branch_input(self, index: int, kind: int, x: torch.Tensor, c: torch.Tensor) -> BranchInput:
        return BranchInput(x, torch.clone, c, c)

    def run_block(self, index: int, x: torch.Tensor, c: torch.Tensor, policy: Policy) -> torch.Tensor:
        policy.branch(index, ATTN, torch.clone, lambda: x)
        policy.branch(index, MLP, torch.clone, lambda: x)
        return x


def dry_run_decisions(policy: Policy, model: nn.Module, steps: int | str, images: int = 1, cfg: bool = True) -> DecisionLog:
    """The decision log of an input-independent schedule (routers, fixed caching intervals, step budgets).

    Branches are stand-ins (zeros of the true shape), so a data-dependent method's decisions here
    mean nothing: take those from a real run's `SampleOutput.decisions`.

    Args:
        policy: a fresh policy (`create_policy(name, args)`).
        model: the model (only `depth`, `num_tokens`, `config.hidden_size` are read; meta is fine).
        steps: the step budget, as for `sample`.
        images: images per run; cfg: whether classifier-free guidance doubles the batch.
    """
    diffusion = Diffusion(steps)
    batch = 2 * images if cfg else images
    hidden = model.config.hidden_size
    run = RunInfo(num_steps=diffusion.num_timesteps, timesteps=tuple(int(t) for t in diffusion.timestep_map),
                  batch=batch, cfg=cfg, depth=model.depth, num_tokens=model.num_tokens, hidden_size=hidden,
                  device=torch.device("cpu"), model_name=model.spec.name, image_size=model.spec.image_size)
    stack = _StandInStack(model.depth)
    x = torch.zeros(batch, model.num_tokens, hidden)
    c = torch.zeros(batch, hidden)
    t = torch.zeros(batch)
    y = torch.zeros(batch, dtype=torch.long)
    policy.start(run)
    with torch.no_grad():
        for index in reversed(range(diffusion.num_timesteps)):
            policy.begin_step(index)
            policy.forward(stack, x, t, y, lambda: policy.run_blocks(stack, x, c))
            policy.end_step()
    return policy.finish()
