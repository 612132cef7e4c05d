"""Laziness accounting: realised lazy ratios from a decision log, and a threshold search for a target ratio.

The official sampler counts skips over every model-batch sample (both CFG halves);
`laziness(log)` does the same by default and can restrict itself to the conditional half
(the no-CFG-doubling convention of the MACs tables).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from harness.methods import BRANCHES, DecisionLog
from lazydit.layers import LazyLayers

LOGIT_RANGE = 80.0  # sigmoid(+-80) is 1.0 / 1.8e-35 in float32: beyond it every score saturates


@dataclass
class Laziness:
    """Share of branch evaluations skipped: overall, per branch type, per step index and per block."""

    overall: float
    per_type: dict[str, float]  # "attn", "mlp"
    per_step: list[list[float]]  # [step index][branch type]
    per_block: list[list[float]]  # [block][branch type]


def laziness(log: DecisionLog, conditional_only: bool = False) -> Laziness:
    """The realised lazy ratios of a run.

    Args:
        log: the run's decision log.
        conditional_only: count the conditional CFG half only (default: every model-batch sample, as the official code).
    """
    ratios = log.laziness(conditional_only)
    return Laziness(overall=ratios["all"], per_type={name: ratios[name] for name in BRANCHES},
                    per_step=ratios["per_step"], per_block=ratios["per_block"])


def realised_ratio(model: nn.Module, layers: LazyLayers, threshold: float, steps: int | str, class_labels: Sequence[int],
                   seeds: Sequence[int], cfg_scale: float = 1.5, method: str = "lazydit",
                   device: str | torch.device = "cpu") -> float:
    """The lazy ratio (every model-batch sample) the layers realise at `threshold` on calibration images."""
    from harness.sampling import sample
    from lazydit.policy import lazydit_policy_for

    policy = lazydit_policy_for(method, layers, threshold)
    out = sample(model, class_labels, seeds, steps=steps, cfg_scale=cfg_scale, method=policy, device=device, decode=False)
    return laziness(out.decisions).overall


def threshold_for_ratio(model: nn.Module, layers: LazyLayers, target_ratio: float, steps: int | str,
                        class_labels: Sequence[int], seeds: Sequence[int], cfg_scale: float = 1.5,
                        method: str = "lazydit", iterations: int = 14, tolerance: float = 0.01,
                        device: str | torch.device = "cpu") -> tuple[float, float]:
    """Bisects the threshold whose realised lazy ratio on calibration images is closest to the target.

    A higher threshold skips more. Trained scores saturate (logits of tens), so the search
    runs over the threshold's logit in [-LOGIT_RANGE, LOGIT_RANGE], not over [0, 1].
    Returns (threshold, achieved ratio); the achieved ratio can miss the target where the
    realised ratio jumps (e.g. the official recipe's zero layers all flip at 0.5).

    Args:
        model, layers: the DiT and its lazy layers.
        target_ratio: wanted share of skipped branch evaluations (0..1).
        steps, cfg_scale: the sampling setting the threshold is for.
        class_labels, seeds: calibration images.
        method: "lazydit" or "lazydit-allsteps".
        iterations: bisection steps (one sampling run each).
        tolerance: stop once |achieved - target| is within it.
        device: where the calibration runs.
    """
    if not 0.0 <= target_ratio <= 1.0:
        raise ValueError(f"target_ratio={target_ratio!r} is out of range; accepted: 0..1")

    def achieved(threshold: float) -> float:
        return realised_ratio(model, layers, threshold, steps, class_labels, seeds, cfg_scale, method, device)

    lo, hi = -LOGIT_RANGE, LOGIT_RANGE
    best: tuple[float, float] | None = None
    for _ in range(iterations):
        mid = (lo + hi) / 2
        threshold = 1.0 / (1.0 + math.exp(-mid))
        ratio = achieved(threshold)
        if best is None or abs(ratio - target_ratio) < abs(best[1] - target_ratio):
            best = (threshold, ratio)
        if abs(ratio - target_ratio) <= tolerance:
            break
        lo, hi = (mid, hi) if ratio < target_ratio else (lo, mid)
    return best
