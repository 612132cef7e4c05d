"""LazyDiT with a static schedule: decisions frozen per step x block x branch from a calibration run.

The dynamic policy decides per sample from the branch input; this variant replays one
decision per (step index, block, branch) for the whole batch, chosen from the decision
log of a calibration run with the dynamic policy. No score is computed and nothing is
read back from the device, so a step is a fixed sequence of kernels: what
`torch.compile`, CUDA graphs and mobile export need.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
import torch.nn as nn

from harness.cache import atomic_torch_save, load_torch_dict
from baselines.caching import ScheduledBranchPolicy
from harness.inputs import IDENTITY_KEYS, check_identity
from harness.methods import METHODS, DecisionLog, RunInfo
from lazydit.policy import PAPER

SCHEDULE_KEY = "compute"  # bool (S, depth, 2): True = compute the branch at that step for every sample


#################################################################################
#                                 Schedules                                     #
#################################################################################

def schedule_from_log(log: DecisionLog, target_ratio: float | None = None) -> torch.Tensor:
    """A static schedule (S, depth, 2) bool from a dynamic run's decisions (all model-batch samples).

    Args:
        log: the decision log of a calibration run with the dynamic policy.
        target_ratio: skip exactly this share of the branches, least computed first;
            None: skip a branch where most calibration samples skipped it.
    """
    share = log.branch.float().mean(dim=-1).cpu()  # (S, depth, 2): share of samples computing
    compute = share >= 0.5
    if target_ratio is not None:
        if not 0.0 <= target_ratio < 1.0:
            raise ValueError(f"target_ratio={target_ratio!r} is out of range; accepted: 0 <= r < 1")
        order = torch.argsort(share.flatten(), stable=True)  # least computed first
        skip = torch.zeros(share.numel(), dtype=torch.bool)
        skip[order[: round(target_ratio * share.numel())]] = True
        compute = ~skip.view_as(share)
    compute[-1] = True  # the first denoising step has nothing to reuse
    return compute


def save_schedule(compute: torch.Tensor, path: str | os.PathLike, **extra: Any) -> None:
    """Writes {"compute": (S, depth, 2) bool, **extra} atomically."""
    atomic_torch_save({SCHEDULE_KEY: compute.bool().cpu(), **extra}, path)


def load_schedule(path: str | os.PathLike) -> torch.Tensor:
    """The (S, depth, 2) bool compute schedule of a file written by `save_schedule`."""
    return read_schedule_file(path)[SCHEDULE_KEY]


def read_schedule_file(path: str | os.PathLike) -> dict[str, Any]:
    """The whole schedule file, its "compute" entry checked and made a bool tensor."""
    payload = load_torch_dict(path, SCHEDULE_KEY, "LazyDiT schedule", "make one with `python -m harness train lazydit-static`")
    compute = torch.as_tensor(payload[SCHEDULE_KEY]).bool()
    if compute.dim() != 3 or compute.shape[-1] != 2:
        raise ValueError(f"schedule in {str(path)!r} has shape {tuple(compute.shape)}; expected (steps, depth, 2)")
    return {**payload, SCHEDULE_KEY: compute}


def calibrate_schedule(model: nn.Module, weights: str, steps: int | str, class_labels: Sequence[int],
                       seeds: Sequence[int], cfg_scale: float = 1.5, threshold: float = 0.5,
                       target_ratio: float | None = None, method: str = "lazydit",
                       device: str | torch.device = "cpu") -> torch.Tensor:
    """Runs the dynamic policy on calibration images and freezes its decisions into a schedule.

    Args:
        model: the DiT the schedule is for.
        weights: its lazy-weights file.
        steps: the step budget the weights were trained for.
        class_labels, seeds: the calibration images.
        cfg_scale, threshold: as in the runs the schedule will serve.
        target_ratio: skip exactly this share of branches (None: majority vote).
        method: "lazydit" or "lazydit-allsteps" (the file's method).
        device: where the calibration runs.
    """
    from harness.sampling import sample

    out = sample(model, class_labels, seeds, steps=steps, cfg_scale=cfg_scale, method=method,
                 method_args={"weights": weights, "threshold": threshold}, device=device, decode=False)
    return schedule_from_log(out.decisions, target_ratio)


#################################################################################
#                                  The policy                                   #
#################################################################################

@METHODS.register("lazydit-static")
class LazyDiTStaticPolicy(ScheduledBranchPolicy):
    """LazyDiT with decisions frozen per step x block x branch: no scores, no host reads."""

    @dataclass(frozen=True)
    class Config:
        schedule: str = ""  # file from `python -m harness train lazydit-static`

    name: ClassVar[str] = "lazydit-static"
    paper: ClassVar[str] = PAPER
    code: ClassVar[str] = "https://github.com/shawnricecake/lazydit"
    faithfulness: ClassVar[str] = "this harness's variant: LazyDiT decisions frozen from a calibration run"

    def __init__(self, config: "LazyDiTStaticPolicy.Config | None" = None, compute: torch.Tensor | None = None):
        super().__init__(config)
        self.identity: dict[str, Any] = {}  # model, image size and steps the schedule was calibrated for
        if compute is None:
            if not self.config.schedule:
                raise ValueError(f"method {self.name!r} needs method_args['schedule']: the path of a schedule file")
            payload = read_schedule_file(self.config.schedule)
            if payload.get("method", self.name) != self.name:
                raise ValueError(f"{self.config.schedule!r} is a {payload['method']!r} file, not a {self.name!r} schedule")
            compute, self.target_ratio = payload[SCHEDULE_KEY], payload.get("target_ratio")
            self.identity = {key: payload[key] for key in IDENTITY_KEYS if key in payload}
        self.compute = compute.bool().cpu()

    @classmethod
    def from_schedule(cls, compute: torch.Tensor) -> "LazyDiTStaticPolicy":
        return cls(cls.Config(schedule=""), compute=compute)

    def schedule(self, run: RunInfo) -> torch.Tensor:
        check_identity(self.identity, self.config.schedule, "LazyDiT schedule", run.model_name, run.image_size,
                       run.num_steps)
        return self.compute
