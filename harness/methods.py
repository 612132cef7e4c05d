"""The method contract: a policy the model consults at its hooks, and the method registry.

A DiT step is embed -> blocks -> final layer, each block holding two residual branches
(attention, MLP). The model asks its policy for three things, outermost first:
  `forward`     the whole forward pass (output-level methods: AB-Cache predicts it);
  `run_blocks`  the block stack (whole-step and block-range methods: TeaCache, FBCache, Delta-DiT);
  `branch`      each residual branch (branch- and token-level methods: LazyDiT, L2C, FORA, ToCa, ...).
This base class computes everything, which is plain DDIM; a method subclasses it,
overrides the hooks it needs and writes what it skipped into the decision log
(`DecisionLog.skip_forward` / `skip_blocks` keep the MACs honest). A method never edits the model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol

import torch

from harness.registry import Registry

ATTN, MLP = 0, 1
BRANCHES = ("attn", "mlp")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of tokens x (N, T, D) by per-sample shift and scale (N, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class BranchInput:
    """A branch input h = modulate(norm(x), shift, scale), computed when called.

    The model hands this to `policy.branch` instead of h: a reused branch never computes
    it, and a method may read its parts (e.g. to score the branch in one fused pass).
    """

    __slots__ = ("x", "norm", "shift", "scale")

    def __init__(self, x: torch.Tensor, norm: Callable[[torch.Tensor], torch.Tensor], shift: torch.Tensor,
                 scale: torch.Tensor):
        self.x, self.norm, self.shift, self.scale = x, norm, shift, scale

    def __call__(self) -> torch.Tensor:
        return modulate(self.norm(self.x), self.shift, self.scale)

    def tokens(self, index: torch.Tensor) -> torch.Tensor:
        """h of the tokens `index` (N, k) only, row by row: (N, k, D). Norm and modulation act per token,
        so this equals `self()` gathered, for the cost of k tokens (token-level methods: ToCa)."""
        x = self.x.gather(1, index.unsqueeze(-1).expand(-1, -1, self.x.shape[-1]))  # (N, k, D)
        return modulate(self.norm(x), self.shift, self.scale)


class BlockStack(Protocol):
    """What a policy sees of a model: its depth, one block at a time, and a block's branch input."""

    depth: int

    def run_block(self, index: int, x: torch.Tensor, c: torch.Tensor, policy: "Policy") -> torch.Tensor: ...

    def branch_input(self, index: int, kind: int, x: torch.Tensor, c: torch.Tensor) -> BranchInput:
        """Branch `kind` of block `index`'s input for residual stream x and conditioning c (its
        adaLN modulation is computed here; the norm and modulation when the result is called)."""
        ...


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
    real: int | None = None  # real images per CFG half (the rest pad the batch); None: every row is real
    model_name: str | None = None  # what the run samples: a method checks its files against these
    image_size: int | None = None

    @property
    def half(self) -> int:
        """Rows per CFG half: rows [0, half) are conditional, [half, batch) unconditional (with CFG)."""
        return self.batch // 2 if self.cfg else self.batch

    @property
    def real_images(self) -> int:
        return self.half if self.real is None else self.real

    def real_rows(self) -> list[slice]:
        """The batch rows that hold real images: [cond] or [cond; uncond], never padding."""
        rows = [slice(0, self.real_images)]
        return rows + [slice(self.half, self.half + self.real_images)] if self.cfg else rows

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """x restricted to the real rows (x itself when nothing pads the batch): what batch-pooled
        statistics must be taken over."""
        if self.real_images == self.half:
            return x
        return torch.cat([x[rows] for rows in self.real_rows()])


@dataclass
class DecisionLog:
    """What ran, per step index, block, branch and model-batch sample.

    `branch[s, b, k, n]` is the share of branch k's tokens of block b computed for
    sample n at step index s (1 = computed, 0 = reused); `block[s, b, n]` is whether
    block b's modulation ran at all; `forward[s, n]` whether the model ran at all
    (embedders and final layer; 0 where an output-level method predicted the output);
    `overhead_macs[s, n]` counts the MACs the method spent deciding and predicting
    (scores, routers, extrapolation). MACs are derived from this log.
    """

    branch: torch.Tensor  # (S, depth, 2, B)
    block: torch.Tensor  # (S, depth, B)
    forward: torch.Tensor  # (S, B)
    overhead_macs: torch.Tensor  # (S, B), float64
    cfg: bool

    @classmethod
    def all_computed(cls, run: RunInfo) -> "DecisionLog":
        S, D, B = run.num_steps, run.depth, run.batch
        return cls(
            branch=torch.ones(S, D, 2, B, device=run.device),
            block=torch.ones(S, D, B, device=run.device),
            forward=torch.ones(S, B, device=run.device),
            overhead_macs=torch.zeros(S, B, dtype=torch.float64, device=run.device),
            cfg=run.cfg,
        )

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor], cfg: bool | None = None) -> "DecisionLog":
        """The same log with `fn` applied to every tensor (sample axis last)."""
        return DecisionLog(fn(self.branch), fn(self.block), fn(self.forward), fn(self.overhead_macs),
                           self.cfg if cfg is None else cfg)

    def to(self, device: str | torch.device) -> "DecisionLog":
        return self._map(lambda t: t.to(device))

    def select(self, samples: torch.Tensor) -> "DecisionLog":
        """The log of the model-batch samples `samples` (indices) only."""
        return self._map(lambda t: t[..., samples.to(t.device)])

    def conditional(self) -> "DecisionLog":
        """The log of the conditional half only (the no-CFG-doubling convention)."""
        if not self.cfg:
            return self
        half = self.branch.shape[-1] // 2
        return self._map(lambda t: t[..., :half], cfg=False)

    # ---- what a method skipped (zero exactly the entries whose work did not run) ---------
    def skip_blocks(self, step: int, start: int, stop: int, samples: slice | torch.Tensor = slice(None)) -> None:
        """Blocks [start, stop) did not run at step index `step` (modulation and both branches)."""
        self.block[step, start:stop, samples] = 0.0
        self.branch[step, start:stop, :, samples] = 0.0

    def skip_forward(self, step: int, samples: slice | torch.Tensor = slice(None)) -> None:
        """The model did not run at all at step index `step`: embedders, every block, final layer."""
        self.forward[step, samples] = 0.0
        self.skip_blocks(step, 0, self.block.shape[1], samples)

    def add_overhead(self, step: int, macs: float | torch.Tensor, samples: slice | torch.Tensor = slice(None)) -> None:
        """Adds per-sample MACs the method spent outside the model's layers at step index `step`."""
        self.overhead_macs[step, samples] += macs

    # ---- summaries ---------------------------------------------------------------------
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

    def computed_steps(self) -> list[int]:
        """Step indices (descending, sampling order) at which any branch of any sample ran."""
        ran = self.branch.flatten(1).amax(dim=1) > 0
        return [s for s in reversed(range(len(ran))) if bool(ran[s])]

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

        return DecisionLog(join([l.branch for l in logs]), join([l.block for l in logs]),
                           join([l.forward for l in logs]), join([l.overhead_macs for l in logs]), cfg)


class Policy:
    """Plain DDIM: every hook computes. Subclasses override the hooks their method needs.

    Lifecycle per sampling call: `start(run)`, then for each step `begin_step(index)`,
    the model's forward (which calls `forward`, `run_blocks` and `branch`), `end_step()`;
    finally `finish()` returns the decision log. All state is reset in `start`.
    """

    @dataclass(frozen=True)
    class Config:
        """A method's parameters; the base method has none."""

    name: ClassVar[str] = "ddim"
    paper: ClassVar[str] = "https://arxiv.org/abs/2010.02502"
    code: ClassVar[str] = ""  # the official implementation; "" when none is reachable
    # How this implementation relates to the official one (shown by `harness info`, recorded in results).
    faithfulness: ClassVar[str] = "unlabelled"
    # Decisions from a statistic pooled over the batch's real rows: they depend on which images share a batch.
    batch_coupled: ClassVar[bool] = False
    # Decisions fixed before sampling (no host read): each step is a fixed kernel sequence, which a CUDA
    # graph can replay (`harness.execution`). A method deciding from the data sets it False.
    static_schedule: ClassVar[bool] = True
    target_ratio: float | None = None  # the lazy ratio the method's settings were calibrated for, if any
    # Decisions fixed before sampling (never read from activations): a step is a fixed sequence of
    # kernels, so the sampler can be exported (harness/export.py). tests/method_cases.py says the same.
    static_decisions: ClassVar[bool] = False

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
        # Device-to-host reads made to decide (each a synchronisation on CUDA); a data-dependent
        # method makes at most one per step and counts it here. Recorded per run.
        self.host_syncs = 0

    def begin_step(self, index: int) -> None:
        self.step = index

    def end_step(self) -> None:
        pass

    def finish(self) -> DecisionLog:
        assert self.log is not None, "finish() called before start()"
        return self.log

    # ---- hooks -------------------------------------------------------------------
    def forward(self, model: BlockStack, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Output-level hook: the model output for inputs (x, t, y), all CFG rows, before guidance.

        `compute()` runs the model (embed -> `run_blocks` -> final layer). A method that
        predicts the output instead must call `self.log.skip_forward(self.step)`.
        """
        return compute()

    def run_blocks(self, model: BlockStack, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Whole-step and block-range hook: runs the block stack on tokens x (N, T, D)."""
        for index in range(model.depth):
            x = model.run_block(index, x, c, self)
        return x

    def branch(self, block: int, kind: int, fn: Callable[[torch.Tensor], torch.Tensor],
               make_h: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Branch hook: returns fn(h), h = make_h(), for branch `kind` (ATTN or MLP) of `block`, ungated.

        `make_h` computes the branch input modulate(norm(x)) when called, so a method that
        reuses the branch without looking at its input skips that work too. Models pass a
        `BranchInput`, whose parts (x, norm, shift, scale) a method may read and whose
        `tokens(index)` gives the input of a subset of tokens (fn is per token for the MLP).
        For ATTN, `fn` may also offer `fn.forward_with_probs(h) -> (output, probabilities)`,
        the softmax attention (N, heads, T, T) beside the output, through a materialised
        softmax (slower than fused attention): read it with `attention_probs(fn)`.
        """
        return fn(make_h())


def attention_probs(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """An attention branch's `fn` as h -> (output, attention probabilities (N, heads, T, T)).

    Only methods that score tokens by attention (ToCa) ask for it; every other call keeps the
    fused SDPA path. Raises for a model whose attention does not offer the probabilities.
    """
    with_probs = getattr(fn, "forward_with_probs", None)
    if with_probs is None:
        raise NotImplementedError(f"attention {type(fn).__qualname__} does not offer its probabilities (forward_with_probs)")
    return with_probs


COMPUTE_ALL = Policy()  # the stateless default of a plain forward pass

METHODS: Registry[type[Policy]] = Registry("method", plugins=("baselines", "lazydit"), base=Policy)


@METHODS.register("ddim")
class DDIMPolicy(Policy):
    """Plain DDIM at the run's step budget: the reference every method is compared with."""

    code: ClassVar[str] = "https://github.com/facebookresearch/DiT"
    faithfulness: ClassVar[str] = "the reference sampler (facebookresearch/DiT's DDIM loop, bit for bit)"
    static_decisions: ClassVar[bool] = True


def create_policy(method: str, method_args: dict[str, Any] | None = None) -> Policy:
    """A fresh policy for `method` (a registry key such as "ddim" or "lazydit")."""
    return METHODS.get(method).from_args(method_args)
