"""TeaCache (Liu et al., CVPR 2025, https://arxiv.org/abs/2411.19108): skip the whole block stack
while the accumulated, rescaled change of block 0's modulated input stays below a threshold.

An adaptation: TeaCache has no class-conditional DiT implementation. It follows the official
batched-CFG code (ali-vilab/TeaCache 7c10efc, eval/teacache/experiments/latte.py and opensora.py):
  m_j   = modulate(norm1(x_emb), shift_msa^0(c), scale_msa^0(c))  (block 0's attention input; c holds
          the class label too, unlike the video models' timestep-only modulation)
  delta = mean|m_j - m_{j-1}| / mean|m_{j-1}| over the real [cond; uncond] rows (one statistic, one decision
          and one residual for the whole batch, as the batched-CFG code; never over padding rows)
  the first (j = 0) and last (j = N-1) steps compute and reset acc = 0; otherwise acc += poly(delta) and
  acc < threshold skips every block (h_out = h_in + R), else all blocks run, R = h_out - h_in, acc = 0;
  m_{j-1} is updated at every step, computed or skipped.
poly is a degree-4 numpy poly1d fitted by `harness calibrate teacache` (`baselines.teacache_calibration`):
the default [0, 0, 0, 1, 0] is the identity, i.e. the raw relative L1 is accumulated.

Cost, counted in the decision log's overhead: m (block 0's adaLN linear and the norm + modulation of
its attention input) on every step but the last, where nothing reads it, and the two abs-mean reductions
on the steps that decide. On computed steps block 0 computes its modulation again, as the official code
does. Deciding reads one float on the host per deciding step (`Policy.host_syncs`: N - 2 per run).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.methods import ATTN, METHODS, Policy, RunInfo

IDENTITY = (0.0, 0.0, 0.0, 1.0, 0.0)  # np.poly1d order, highest power first: poly(x) = x
CALIBRATION_FORMAT = "harness-teacache-calibration"


def relative_l1(current: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """mean|current - reference| / mean|reference| over the whole tensor (a 0-dim tensor, no host read)."""
    return (current - reference).abs().mean() / reference.abs().mean()


def load_calibration(path: str | Path) -> dict[str, Any]:
    """A calibration file written by `harness calibrate teacache` (JSON), checked for its format."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"TeaCache calibration {str(path)!r} not found; write one with "
                                "`python -m harness calibrate teacache --model M --steps N --out FILE`") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"TeaCache calibration {str(path)!r} is not JSON ({err}); expected a file written by "
                         "`harness calibrate teacache`") from None
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT or len(data.get("coefficients", ())) != 5:
        raise ValueError(f"{str(path)!r} is not a TeaCache calibration (format {CALIBRATION_FORMAT!r} with 5 coefficients)")
    return data


def check_identity(calibration: dict[str, Any], path: str, model: str, image_size: int | None, steps: int) -> None:
    """Raises naming both sides when the calibration was fitted for another model, resolution or step count."""
    fitted = (calibration["model"], calibration["image_size"], calibration["steps"])
    if fitted != (model, image_size, steps):
        raise ValueError(f"TeaCache calibration {path!r} was fitted for {fitted[0]} at {fitted[1]} px, {fitted[2]} steps; "
                         f"this run is {model} at {image_size} px, {steps} steps (calibrate with `python -m harness "
                         f"calibrate teacache --model {model} --steps {steps} --out FILE`)")


@METHODS.register("teacache")
class TeaCachePolicy(Policy):
    """TeaCache: whole-step skipping from block 0's accumulated input change (adaptation to class-conditional DiT)."""

    @dataclass(frozen=True)
    class Config:
        threshold: float = 0.1  # skip while the accumulated poly(delta) stays below it (official Latte: 0.1 slow, 0.2 fast)
        coefficients: tuple[float, ...] = IDENTITY  # degree-4 np.poly1d, highest power first
        calibration: str = ""  # a `harness calibrate teacache` file (its coefficients; exclusive with `coefficients`)

    name: ClassVar[str] = "teacache"
    paper: ClassVar[str] = "https://arxiv.org/abs/2411.19108"
    code: ClassVar[str] = "https://github.com/ali-vilab/TeaCache"
    faithfulness: ClassVar[str] = "adaptation: no official DiT code; follows the batched-CFG Latte / Open-Sora code"
    batch_coupled: ClassVar[bool] = True
    static_schedule: ClassVar[bool] = False  # whether a step is computed depends on a statistic read on the host

    def __init__(self, config: "TeaCachePolicy.Config | None" = None):
        super().__init__(config)
        cfg = self.config
        if not cfg.threshold >= 0.0:
            raise ValueError(f"threshold={cfg.threshold!r} for method {self.name!r}; accepted: a number >= 0 (inf skips all it may)")
        coefficients = tuple(float(a) for a in cfg.coefficients)
        if len(coefficients) != 5:
            raise ValueError(f"coefficients={list(cfg.coefficients)} for method {self.name!r}; accepted: 5 numbers "
                             "(degree-4 np.poly1d, highest power first)")
        self.calibration: dict[str, Any] | None = None
        if cfg.calibration:
            if coefficients != IDENTITY:
                raise ValueError(f"method {self.name!r} got both coefficients={list(coefficients)} and "
                                 f"calibration={cfg.calibration!r}; accepted: one of them")
            self.calibration = load_calibration(cfg.calibration)
            coefficients = tuple(float(a) for a in self.calibration["coefficients"])
        self.coefficients = coefficients

    def parameters(self) -> dict[str, Any]:
        """The config with the coefficients in use (the calibration's, when given)."""
        return {**super().parameters(), "coefficients": list(self.coefficients)}

    def start(self, run: RunInfo) -> None:
        super().start(run)
        self.acc = 0.0
        self.previous: torch.Tensor | None = None  # m of the previous step, real rows only
        self.residual: torch.Tensor | None = None  # h_out - h_in of the last computed step
        if self.calibration is not None:
            check_identity(self.calibration, self.config.calibration, run.model_name, run.image_size, run.num_steps)

    def finish(self):
        self.previous = self.residual = None  # release the cached tensors
        return super().finish()

    def run_blocks(self, model, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.decide(model, x, c):
            h = super().run_blocks(model, x, c)
            self.residual = h - x
            return h
        self.log.skip_blocks(self.step, 0, model.depth)
        return x + self.residual

    def rescale(self, delta: float) -> float:
        """poly(delta) by Horner's rule in float64, as np.polyval (without its per-call overhead)."""
        out = 0.0
        for a in self.coefficients:
            out = out * delta + a
        return out

    def decide(self, model, x: torch.Tensor, c: torch.Tensor) -> bool:
        """Whether this step computes; updates acc and m_{j-1}, and logs the overhead."""
        j = self.run.num_steps - 1 - self.step
        if j == self.run.num_steps - 1:  # the last step computes; nothing reads its m
            self.acc = 0.0
            return True
        tokens, hidden = x.shape[1], x.shape[2]
        m = self.run.pool(model.branch_input(0, ATTN, x, c)())  # (real rows, T, D)
        overhead = c.shape[-1] * 6 * hidden + tokens * hidden  # block 0's adaLN linear + modulation, per row
        compute = True
        if j == 0:
            self.acc = 0.0
        else:
            self.acc += self.rescale(relative_l1(m, self.previous).item())  # the step's one host read
            self.host_syncs += 1
            overhead += 2 * tokens * hidden  # the two abs-mean reductions
            compute = not self.acc < self.config.threshold
            if compute:
                self.acc = 0.0
        self.previous = m
        self.log.add_overhead(self.step, overhead)
        return compute
