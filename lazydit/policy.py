"""The LazyDiT inference policy: per-sample lazy decisions, cached ungated branch outputs.

Faithful to the official sampler (shawnricecake/lazydit): at step index i the score of
branch k of block b is sigmoid(sum_tokens,channels Linear_{i,b,k}(h)) for each sample;
the branch is computed where score >= threshold, otherwise that sample's last computed
(ungated) branch output is reused. The first step computes everything (nothing is
cached yet). Decisions go into the decision log on the device, with no host read.

A zero layer (every odd index under the official recipe) scores exactly 0.5 for any h,
so its decision is known at `start` and it costs no scoring at all.

Two ways to carry out a scored decision, same outputs up to the rounding of a smaller batch:
  "gather": compute only the samples that need it (one host read of the decision per
            scored branch: free on the CPU, one synchronisation per scored branch on
            CUDA); all-skip / all-compute branches cost nothing extra.
  "where":  compute every sample and blend with torch.where: no host read at all
            (CUDA-graph friendly), but no time saved; for quality runs.
  "speculate": carry out a predicted decision per (step, block, branch) (a lazydit-static
            schedule, `method_args["schedule"]`) while the true scores are computed on the
            device; one host read at the end of the block stack checks every prediction,
            and a step with a wrong one is run again the "gather" way from the caches it
            started with. Outputs equal "gather" bit for bit, with one synchronisation per
            step where the predictions hold (the reruns are counted).
The score itself runs, on the CPU in float32, as one fused C++ pass over the branch's
pre-norm input (LayerNorm, modulation and the lazy map; `lazydit.fused_score`, built on
first use), so a skipped sample never forms h; elsewhere, or with score="eager", as
PyTorch ops. The two agree up to float rounding.
A per-sample decision that depends on this step's branch input cannot be resolved for a
whole step at once; for GPU speed without any synchronisation use the static schedule
(`lazydit-static`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from harness.inputs import IDENTITY_KEYS, check_identity
from harness.methods import METHODS, Policy, RunInfo
from lazydit.fused_score import layernorm_score_logits
from lazydit.layers import DEFAULT_THRESHOLD, LazyLayers
from lazydit.weights import METHOD_KEY, WEIGHTS_KEY, layers_from_state, read_lazy_file

EXECUTIONS = ("gather", "where", "speculate")
SCORES = ("auto", "eager")
PAPER = "https://arxiv.org/abs/2412.12444"


@METHODS.register("lazydit")
class LazyDiTPolicy(Policy):
    """LazyDiT (Shi et al., AAAI 2025): learned per-sample skipping of attention / MLP branches."""

    @dataclass(frozen=True)
    class Config:
        weights: str = ""  # official lazy-weights file
        threshold: float | None = None  # compute where score >= threshold; None: the file's (from a target search), else 0.5
        execution: str = "gather"  # "gather" (saves time), "where" (no host read, no saving) or "speculate"
        schedule: str = ""  # "speculate": the lazydit-static schedule file that predicts the decisions
        score: str = "auto"  # "auto": the fused CPU kernel where it applies (lazydit.fused_score), else "eager" ops

    name: ClassVar[str] = "lazydit"
    paper: ClassVar[str] = PAPER
    code: ClassVar[str] = "https://github.com/shawnricecake/lazydit"
    faithfulness: ClassVar[str] = "matches the official code (decisions and outputs on the same weights and noise)"
    static_schedule: ClassVar[bool] = False  # per-sample decisions from this step's branch input

    def __init__(self, config: "LazyDiTPolicy.Config | None" = None, layers: LazyLayers | None = None,
                 prediction: torch.Tensor | None = None):
        super().__init__(config)
        cfg = self.config
        if cfg.execution not in EXECUTIONS:
            raise ValueError(f"unknown execution {cfg.execution!r} for method {self.name!r}; accepted: {', '.join(EXECUTIONS)}")
        if cfg.score not in SCORES:
            raise ValueError(f"unknown score {cfg.score!r} for method {self.name!r}; accepted: {', '.join(SCORES)}")
        stored: dict[str, Any] = {}
        self.identity: dict[str, Any] = {}  # model, image size and steps the weights file was trained for
        if layers is None:
            layers, stored = self._load(cfg.weights)
        self.layers = layers
        self.threshold = float(stored.get("threshold", DEFAULT_THRESHOLD) if cfg.threshold is None else cfg.threshold)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold!r} is outside the score range; accepted: 0..1")
        if cfg.threshold is None:  # the file's threshold, and so the ratio it was searched for, apply
            self.target_ratio = stored.get("target_ratio")
        if cfg.execution == "speculate" and prediction is None:
            if not cfg.schedule:
                raise ValueError(f"execution 'speculate' of method {self.name!r} needs method_args['schedule']: "
                                 "a lazydit-static schedule file predicting the decisions")
            from lazydit.static import load_schedule  # lazydit.static imports this module

            prediction = load_schedule(cfg.schedule)
        self.prediction = None if prediction is None else prediction.bool().tolist()  # [S][depth][2] plain bools
        self.speculating = False
        self.checks: list[torch.Tensor] = []  # this step's (N,) "prediction held" masks
        self.reruns = 0  # speculative steps run again because a prediction failed
        self.weight: list | None = None  # [step][block][kind] -> (D,) on the run's device
        self.cache: list[list[torch.Tensor | None]] = []
        self.masks: dict[tuple[int, int], torch.Tensor] = {}  # this step's (block, kind) -> (N,) compute mask
        self.known: list = []  # [step][block][kind] -> True / False for zero layers, None where h decides
        self.score_macs = 0.0  # MACs per sample of one score: the branch input's modulation and the lazy map

    @classmethod
    def from_layers(cls, layers: LazyLayers, threshold: float = DEFAULT_THRESHOLD, execution: str = "gather",
                    score: str = "auto", prediction: torch.Tensor | None = None) -> "LazyDiTPolicy":
        """A policy over in-memory lazy layers (training, threshold search, tests); `prediction` (S, depth, 2)
        bool is what "speculate" carries out before checking."""
        return cls(cls.Config(weights="", threshold=threshold, execution=execution, score=score), layers=layers,
                   prediction=prediction)

    def _load(self, path: str) -> tuple[LazyLayers, dict[str, Any]]:
        """The file's layers and the threshold / target ratio it records (official files record none)."""
        if not path:
            raise ValueError(f"method {self.name!r} needs method_args['weights']: the path of a lazy-weights file")
        payload = read_lazy_file(path)
        trained_by = payload.get(METHOD_KEY, "lazydit")
        if trained_by != self.name:
            raise ValueError(f"{path!r} was trained as method {trained_by!r}; use method={trained_by!r} (not {self.name!r})")
        stored = {key: payload[key] for key in ("threshold", "target_ratio") if payload.get(key) is not None}
        self.identity = {key: payload[key] for key in IDENTITY_KEYS if key in payload}
        return layers_from_state(payload[WEIGHTS_KEY]), stored

    def parameters(self) -> dict[str, Any]:
        """The config with the threshold actually used and the file's target ratio."""
        return {**super().parameters(), "threshold": self.threshold, "target_ratio": self.target_ratio}

    # ---- lifecycle ---------------------------------------------------------------
    def start(self, run: RunInfo) -> None:
        super().start(run)
        check_identity(self.identity, self.config.weights, "lazy-weights", run.model_name, run.image_size, run.num_steps)
        self.layers.check_fits(run.num_steps, run.depth, run.hidden_size)
        weight = self.layers.weight  # a stacked copy: read once
        self.weight = [[list(block.unbind(0)) for block in step.unbind(0)] for step in weight.to(run.device).unbind(0)]  # [S][depth][2] (D,)
        # A zero layer scores exactly sigmoid(0) = 0.5 whatever h is: its decision is known without looking.
        zero = (weight == 0).all(dim=-1).tolist()  # [S][depth][2]
        self.known = [[[(0.5 >= self.threshold) if z else None for z in pair] for pair in step] for step in zero]
        self.cache = [[None, None] for _ in range(run.depth)]
        self.score_macs = float(2 * run.num_tokens * run.hidden_size)  # both fused or eager: one multiply-add each
        if self.prediction is not None and len(self.prediction) != run.num_steps:
            raise ValueError(f"the speculation schedule has {len(self.prediction)} steps; this run has {run.num_steps}")
        self.reruns = 0

    def begin_step(self, index: int) -> None:
        super().begin_step(index)
        self.masks = {}

    def end_step(self) -> None:
        """Writes the step's scored decisions into the log with one device copy (no host read)."""
        if self.masks:
            keys = list(self.masks)
            rows = torch.stack([self.masks[k] for k in keys]).to(self.log.branch.dtype)  # (n, N)
            if len(keys) == 2 * self.run.depth:  # every branch scored: one copy
                self.log.branch[self.step] = rows.view(self.run.depth, 2, -1)
            else:
                for (block, kind), row in zip(keys, rows):
                    self.log.branch[self.step, block, kind] = row
        self.log.overhead_macs[self.step] = len(self.masks) * self.score_macs

    def finish(self):
        self.cache, self.weight, self.masks = [], None, {}  # release the caches' memory
        return super().finish()

    # ---- hooks -------------------------------------------------------------------
    def run_blocks(self, model, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.config.execution != "speculate":
            return super().run_blocks(model, x, c)
        started_with = [pair[:] for pair in self.cache]  # speculation never writes into a cached tensor
        self.checks, self.speculating = [], True
        try:
            out = super().run_blocks(model, x, c)
        finally:
            self.speculating = False
        self.host_syncs += bool(self.checks)
        if not self.checks or bool(torch.stack(self.checks).all()):  # the step's one host read
            return out
        self.reruns += 1
        self.cache, self.masks = started_with, {}
        return super().run_blocks(model, x, c)  # the "gather" way

    def decide(self, make_h: Callable[[], torch.Tensor], block: int, kind: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N,) bool, True where the branch is computed (the official score, compared on the device),
        and h where scoring had to compute it (None after the fused kernel, which never forms h)."""
        w = self.weight[self.step][block][kind]  # (D,)
        h = None
        logits = layernorm_score_logits(make_h, w) if self.config.score == "auto" else None
        if logits is None:
            h = make_h()
            logits = (h @ w.to(h.dtype)).sum(dim=-1)  # (N, T) -> (N,)
        compute = torch.sigmoid(logits.float()) >= self.threshold
        self.masks[(block, kind)] = compute  # logged at end_step
        return compute, h

    def branch(self, block: int, kind: int, fn: Callable[[torch.Tensor], torch.Tensor],
               make_h: Callable[[], torch.Tensor]) -> torch.Tensor:
        cached = self.cache[block][kind]
        known = self.known[self.step][block][kind] if cached is not None else True  # the first step computes
        if known is not None:  # first step, or a zero layer (score 0.5 for every sample): no scoring
            if known:
                out = fn(make_h())
                self.cache[block][kind] = out
                return out
            self.log.branch[self.step, block, kind] = 0.0  # a fill on the device, no host read
            return cached
        compute, h = self.decide(make_h, block, kind)
        if self.speculating:
            predicted = self.prediction[self.step][block][kind]
            self.checks.append(compute if predicted else ~compute)  # all True iff the prediction holds
            out = fn(make_h() if h is None else h) if predicted else cached
        elif self.config.execution == "where":
            out = torch.where(compute.view(-1, 1, 1), fn(make_h() if h is None else h), cached)
        else:
            self.host_syncs += 1  # the gather reads the decision back
            out = self._gather(compute, fn, make_h if h is None else lambda: h, cached)
        self.cache[block][kind] = out
        return out

    @staticmethod
    def _gather(compute: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], make_h: Callable[[], torch.Tensor],
                cached: torch.Tensor) -> torch.Tensor:
        """Runs fn on the samples that need it only; the rest keep their cached output."""
        rows = torch.nonzero(compute).squeeze(1)  # the one host read of this branch
        if len(rows) == 0:
            return cached  # h is never formed
        h = make_h()
        if len(rows) == len(h):
            return fn(h)
        fresh = fn(h.index_select(0, rows))  # (n, T, D)
        return cached.index_copy_(0, rows, fresh.to(cached.dtype))


@METHODS.register("lazydit-allsteps")
class LazyDiTAllStepsPolicy(LazyDiTPolicy):
    """LazyDiT with lazy layers trained at every step index (this harness's extension, not the paper's recipe)."""

    name: ClassVar[str] = "lazydit-allsteps"
    faithfulness: ClassVar[str] = "this harness's extension of the official code: lazy layers at every step index"


def lazydit_policy_for(method: str, layers: LazyLayers, threshold: float = DEFAULT_THRESHOLD) -> LazyDiTPolicy:
    """The registered LazyDiT policy class `method` over in-memory layers."""
    cls: Any = METHODS.get(method)
    if not issubclass(cls, LazyDiTPolicy):
        raise ValueError(f"method {method!r} is not a LazyDiT method; accepted: lazydit, lazydit-allsteps")
    return cls.from_layers(layers, threshold)
