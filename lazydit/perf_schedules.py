"""Cost-only LazyDiT static schedules for the checkpoint-free performance suites.

Latency, memory and MACs of a static schedule depend only on which branches it skips, not
on how they were chosen, so the perf suites (random weights) time LazyDiT at the paper's
laziness levels with schedules that spread the skips evenly over steps, blocks and
branches (never the first denoising step, which has nothing to reuse). They are labelled
synthetic in their files: they say nothing about quality; the paper suites use trained
lazy layers.

    python -m lazydit.perf_schedules       # (re)writes lazydit/zoo/perf/*.pt
"""
from __future__ import annotations

from pathlib import Path

import torch

from lazydit.static import save_schedule

PERF_DIR = Path(__file__).resolve().parent / "zoo" / "perf"
RULE = "spread: synthetic, cost-only (skips evenly spaced over the flattened (step, block, branch) grid)"
# (depth, steps, lazy ratio): the LazyDiT paper's rows (Table 1 / 3: DiT-XL/2, depth 28; Table 2: Large-DiT-3B, depth 32).
PAPER_LEVELS = (
    *((28, s, r) for s, r in ((50, 0.2), (50, 0.4), (50, 0.5), (40, 0.5), (20, 0.3), (20, 0.5), (10, 0.2), (10, 0.3))),
    *((32, s, r) for s, r in ((50, 0.3), (50, 0.5), (40, 0.5), (20, 0.3), (20, 0.5), (10, 0.3))),
)


def spread_schedule(steps: int, depth: int, ratio: float) -> torch.Tensor:
    """(steps, depth, 2) bool compute schedule skipping round(ratio * steps * depth * 2) branches, evenly spaced.

    Args:
        steps, depth: the sampling budget and the model's block count.
        ratio: the share of all branch evaluations skipped (0 <= ratio < 1 - 1 / steps: the first step computes).
    """
    total, eligible = steps * depth * 2, (steps - 1) * depth * 2  # index steps - 1 is the first denoising step
    skips = round(ratio * total)
    if not 0 <= skips <= eligible:
        raise ValueError(f"ratio={ratio!r} skips {skips} of {total} branches; accepted: at most {eligible} "
                         f"(the first of {steps} steps computes)")
    compute = torch.ones(total, dtype=torch.bool)
    positions = ((torch.arange(skips, dtype=torch.float64) + 0.5) * eligible / max(skips, 1)).long()
    compute[positions] = False  # flat index over steps 0..steps-2 (step-major), never the last step's entries
    return compute.view(steps, depth, 2)


def schedule_name(depth: int, steps: int, ratio: float) -> str:
    return f"spread-d{depth}-ddim{steps}-lazy{round(ratio * 100)}.pt"


def write_perf_schedules(folder: Path = PERF_DIR) -> list[Path]:
    """Writes every paper level's schedule into `folder`; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for depth, steps, ratio in PAPER_LEVELS:
        path = folder / schedule_name(depth, steps, ratio)
        save_schedule(spread_schedule(steps, depth, ratio), path, method="lazydit-static", steps=steps,
                      target_ratio=ratio, depth=depth, rule=RULE)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_perf_schedules():
        print(written)
