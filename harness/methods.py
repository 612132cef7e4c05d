"""The method contract: a policy the model consults at its hooks, and the method registry.

A DiT step is embed -> blocks -> final layer, each block holding two residual branches
(attention, MLP). The model asks its policy to run the block stack (`run_blocks`, the
hook for whole-step and block-range methods) and each branch (`branch`, the hook for
branch- and token-level methods). This base class computes everything, which is plain
DDIM; a method subclasses it, overrides the hooks it needs and writes what it skipped
into the decision log. A method never edits the model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol

import torch

from harness.registry import Registry

ATTN, MLP = 0, 1
BRANCHES = ("attn", "mlp")


class BlockStack(Protocol):
    """What a policy sees of a model: its depth and one block at a time."""

    depth: int

    def run_block(self, index: int, x: torch.Tensor, c: torch.Tensor, policy: "Policy") -> torch.Tensor: ...


@dataclass(frozen=True)
class RunInfo:
    """What a policy knows about the sampling call it serves.

    Step indices count the respaced timesteps in ascending order (index 0 is the last
    denoising step), the convention of DiT's respacing, LazyDiT and Learning-to-Cache.
    """

    num_steps: int
    timesteps: tuple[int, ...]  # original (1000-step) timestep of each step index
    batch: int  # model batch, CFG halves included
    cfg: bool  # the second half of the batch is the null-label copy of the first
    depth: int
    num_tokens: int
    hidden_size: int
    device: torch.device


@dataclass
class DecisionLog:
    """What ran, per step index, block, branch and model-batch sample.

    `branch[s, b, k, n]` is the share of branch k's tokens of block b computed for
    sample n at step index s (1 = computed, 0 = reused); `block[s, b, n]` is whether
    block b's modulation ran at all; `overhead_macs[s, n]` counts the linear-layer MACs
    the method spent deciding (scores, routers). MACs are derived from this log.
    """

    branch: torch.Tensor  # (S, depth, 2, B)
    block: torch.Tensor  # (S, depth, B)
    overhead_macs: torch.Tensor  # (S, B), float64
    cfg: bool

    @classmethod
    def all_computed(cls, run: RunInfo) -> "DecisionLog":
        S, D, B = run.num_steps, run.depth, run.batch
        return cls(
            branch=torch.ones(S, D, 2, B, device=run.device),
            block=torch.ones(S, D, B, device=run.device),
            overhead_macs=torch.zeros(S, B, dtype=torch.float64, device=run.device),
            cfg=run.cfg,
        )

    def to(self, device: str | torch.device) -> "DecisionLog":
        return DecisionLog(self.branch.to(device), self.block.to(device), self.overhead_macs.to(device), self.cfg)

    def conditional(self) -> "DecisionLog":
        """The log of the conditional half only (the no-CFG-doubling convention)."""
        if not self.cfg:
            return self
        half = self.branch.shape[-1] // 2
        return DecisionLog(self.branch[..., :half], self.block[..., :half], self.overhead_macs[..., :half], False)

    def laziness(self, conditional_only: bool = True) -> dict[str, Any]:
        """Share of branch evaluations skipped: per branch type, "all", "per_step" [step index][branch]
        and "per_block" [block][branch]; over the conditional CFG half (the MACs tables' convention)
        unless `conditional_only=False` (every model-batch sample, as the official LazyDiT code counts)."""
        skipped = 1.0 - (self.conditional() if conditional_only else self).branch.float()  # (S, depth, 2, B)
        return {**{name: skipped[:, :, k].mean().item() for k, name in enumerate(BRANCHES)}, "all": skipped.mean().item(),
                "per_step": skipped.mean(dim=(1, 3)).tolist(), "per_block": skipped.mean(dim=(0, 3)).tolist()}

    def lazy_ratio(self) -> dict[str, float]:
        """Share of branch evaluations skipped, per branch type and overall (conditional half)."""
        return {key: value for key, value in self.laziness().items() if not key.startswith("per_")}

    @staticmethod
    def concat(logs: list["DecisionLog"]) -> "DecisionLog":
        """Joins the logs of consecutive batches along the sample axis (CFG halves kept apart)."""
        if len(logs) == 1:
            return logs[0]
        cfg = logs[0].cfg

        def join(tensors: list[torch.Tensor]) -> torch.Tensor:
            if not cfg:
                return torch.cat(tensors, dim=-1)
            halves = [t.chunk(2, dim=-1) for t in tensors]
            return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=-1)

        return DecisionLog(
            join([l.branch for l in logs]), join([l.block for l in logs]), join([l.overhead_macs for l in logs]), cfg
        )


class Policy:
    """Plain DDIM: every hook computes. Subclasses override the hooks their method needs.

    Lifecycle per sampling call: `start(run)`, then for each step `begin_step(index)`,
    the model's forward (which calls `run_blocks` and `branch`), `end_step()`; finally
    `finish()` returns the decision log. All state is reset in `start`.
    """

    @dataclass(frozen=True)
    class Config:
        """A method's parameters; the base method has none."""

    name: ClassVar[str] = "ddim"
    paper: ClassVar[str] = "https://arxiv.org/abs/2010.02502"
    target_ratio: float | None = None  # the lazy ratio the method's settings were calibrated for, if any

    def __init__(self, config: "Policy.Config | None" = None):
        self.config = config if config is not None else self.Config()
        self.run: RunInfo | None = None
        self.log: DecisionLog | None = None
        self.step = -1

    @classmethod
    def from_args(cls, args: dict[str, Any] | None) -> "Policy":
        """Builds the policy from a plain dict, rejecting unknown keys by name."""
        args = dict(args or {})
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(args) - fields)
        if unknown:
            accepted = ", ".join(sorted(fields)) or "none"
            raise ValueError(f"unknown argument(s) {', '.join(map(repr, unknown))} for method {cls.name!r}; accepted: {accepted}")
        return cls(cls.Config(**args))

    def parameters(self) -> dict[str, Any]:
        """The method's parameters as recorded in results."""
        return dataclasses.asdict(self.config)

    # ---- lifecycle ---------------------------------------------------------------
    def start(self, run: RunInfo) -> None:
        self.run = run
        self.log = DecisionLog.all_computed(run)
        self.step = -1

    def begin_step(self, index: int) -> None:
        self.step = index

    def end_step(self) -> None:
        pass

    def finish(self) -> DecisionLog:
        assert self.log is not None, "finish() called before start()"
        return self.log

    # ---- hooks -------------------------------------------------------------------
    def run_blocks(self, model: BlockStack, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Whole-step and block-range hook: runs the block stack on tokens x (N, T, D)."""
        for index in range(model.depth):
            x = model.run_block(index, x, c, self)
        return x

    def branch(self, block: int, kind: int, fn: Callable[[torch.Tensor], torch.Tensor],
               make_h: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Branch hook: returns fn(h), h = make_h(), for branch `kind` (ATTN or MLP) of `block`, ungated.

        `make_h` computes the branch input modulate(norm(x)) when called, so a method that
        reuses the branch without looking at its input skips that work too. DiT models pass
        a `harness.models.dit.BranchInput`, whose parts (x, norm, shift, scale) a method may read.
        """
        return fn(make_h())


COMPUTE_ALL = Policy()  # the stateless default of a plain forward pass

METHODS: Registry[type[Policy]] = Registry("method", plugins=("baselines", "lazydit"), base=Policy)
METHODS.register("ddim")(Policy)


def create_policy(method: str, method_args: dict[str, Any] | None = None) -> Policy:
    """A fresh policy for `method` (a registry key such as "ddim" or "lazydit")."""
    return METHODS.get(method).from_args(method_args)
