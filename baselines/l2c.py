"""Learning-to-Cache (Ma et al., NeurIPS 2024): a learned router per step says which branches reuse.

Paper: https://arxiv.org/abs/2406.01733. Official code: horseee/learning-to-cache, commit d6cc781
(`DiT/models/dynamic_models.py`: `load_ranking`, `forward`).

The rule, as the official inference code applies it: one router per respaced step index i
holds 2 * depth logits (entry 2b: block b's attention, 2b + 1: its MLP). At an odd i every
branch computes and refreshes the cache. At an even i a branch computes iff
sigmoid(logit) > threshold; otherwise it reuses its ungated output of step i + 1, and the
gate is recomputed from the current conditioning. The routers are input-independent, so
the schedule is static: one (steps, depth, 2) mask for every sample and both CFG halves,
no overhead and no host reads. With an even step count N the first step (i = N - 1) is
odd, so a reused output is always one step old and from a full step. The official code
counts steps with its own counter and keeps no rank for odd indices; with an odd N the
counter's parity and the router index disagree and it crashes, so an odd N is an error here.

Router files use the official `DDIM{N}_router.pt` layout, {"routers": {"{i}.prob": logits
(2 * depth,)}} for i = 0..N-1 (the official files also pickle their argparse options under
"args"; they load with only `argparse.Namespace` allowed). Files written by the harness hold
plain data only: the same "routers" plus their identity (`harness.inputs.file_identity`),
"args" (the training recipe, a dict), and the skip ratio at the default threshold.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from baselines.caching import ScheduledBranchPolicy
from harness.cache import atomic_torch_save, load_torch_dict
from harness.inputs import IDENTITY_KEYS, check_identity
from harness.methods import METHODS, RunInfo

PAPER = "https://arxiv.org/abs/2406.01733"
METHOD = "l2c"
ROUTERS_KEY = "routers"
DEFAULT_THRESHOLD = 0.1  # the official README's threshold for DiT-XL/2 at 256 (0.9 at 512)
MAKE_HINT = "train one with `python -m harness train l2c` or use an official DDIM{N}_router.pt"
_ROUTER_NAME = re.compile(r"(\d+)\.prob")


#################################################################################
#                                 Router files                                  #
#################################################################################

def read_router_file(path: str | os.PathLike) -> dict[str, Any]:
    """A router file's entries, read without running code; its "method", when recorded, must be "l2c"."""
    payload = load_torch_dict(path, ROUTERS_KEY, "L2C router", MAKE_HINT)
    method = payload.get("method")
    if method is not None and method != METHOD:
        raise ValueError(f"{str(path)!r} is a {method!r} file, not an L2C router (method {METHOD!r})")
    return payload


def router_identity(payload: dict[str, Any]) -> dict[str, Any]:
    """What a router file says it serves: the harness's identity entries, or an official file's options
    (`--model`, `--image-size`, `--num-sampling-steps` of train_router.py)."""
    args = payload.get("args")
    if isinstance(args, argparse.Namespace):
        options = vars(args)
        official = {"model_name": options.get("model"), "image_size": options.get("image_size"),
                    "steps": options.get("num_sampling_steps")}
        return {key: value for key, value in official.items() if value is not None}
    return {key: payload[key] for key in IDENTITY_KEYS if key in payload}


def router_logits(routers: dict[str, Any], path: str | os.PathLike = "<routers>") -> torch.Tensor:
    """The (N, 2 * depth) logits of a "routers" state dict with entries "0.prob" .. "{N-1}.prob"."""
    found = {int(m.group(1)): value for key, value in routers.items() if (m := _ROUTER_NAME.fullmatch(str(key)))}
    if not found or sorted(found) != list(range(len(found))) or len(found) != len(routers):
        keys = ", ".join(sorted(map(str, routers))[:4])
        raise ValueError(f"L2C router file {str(path)!r}: 'routers' must hold '0.prob' .. '{{N-1}}.prob'; found {keys or 'nothing'}")
    try:
        rows = [torch.as_tensor(found[i]).float().flatten() for i in range(len(found))]
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"L2C router file {str(path)!r}: a router is not a tensor of logits ({err})") from None
    if len({len(r) for r in rows}) != 1 or len(rows[0]) % 2:
        raise ValueError(f"L2C router file {str(path)!r}: every router must hold the same even number (2 * depth) of "
                         f"logits; found lengths {sorted({len(r) for r in rows})}")
    logits = torch.stack(rows)
    if not logits.isfinite().all():
        raise ValueError(f"L2C router file {str(path)!r}: its logits hold NaN or infinite values")
    return logits


def save_routers(logits: torch.Tensor, path: str | os.PathLike, **extra: Any) -> None:
    """Writes (N, 2 * depth) logits in the official layout, plus plain `extra` entries (identity, recipe)."""
    routers = {f"{i}.prob": row.detach().float().cpu().clone() for i, row in enumerate(logits)}
    atomic_torch_save({ROUTERS_KEY: routers, **extra}, path)


#################################################################################
#                                  The rule                                     #
#################################################################################

def check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"L2C threshold={threshold!r} is out of range; accepted: a number in [0, 1] "
                         "(a branch computes when its router's sigmoid exceeds it)")
    return float(threshold)


def check_even_steps(num_steps: int) -> int:
    if num_steps % 2:
        raise ValueError(f"L2C needs an even step count (the official step counter and router index share parity "
                         f"only then); got {num_steps} steps; accepted: an even count, e.g. 10, 20, 50")
    return num_steps


def compute_mask(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N, depth, 2) bool, True = compute: sigmoid(logit) > threshold at even step indices, everything at odd ones."""
    num_steps = check_even_steps(logits.shape[0])
    compute = torch.sigmoid(logits.float()) > threshold  # STE.apply(router(), thres) in load_ranking
    compute[1::2] = True  # odd indices: the cache is cleared and every branch runs
    return compute.view(num_steps, -1, 2)


def skip_ratio(logits: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Share of all branch evaluations (every step) that the routers skip at `threshold`."""
    return 1.0 - compute_mask(logits, threshold).float().mean().item()


#################################################################################
#                                  The policy                                   #
#################################################################################

@METHODS.register(METHOD)
class L2CPolicy(ScheduledBranchPolicy):
    """Learning-to-Cache: the official routers' static branch schedule (no scores, no host reads)."""

    @dataclass(frozen=True)
    class Config:
        router: str = ""  # router file: official DDIM{N}_router.pt or from `python -m harness train l2c`
        threshold: float = DEFAULT_THRESHOLD

    name: ClassVar[str] = METHOD
    paper: ClassVar[str] = PAPER
    code: ClassVar[str] = "https://github.com/horseee/learning-to-cache"
    faithfulness: ClassVar[str] = "matches the official load_ranking inference (golden fixture); official router files load"

    def __init__(self, config: "L2CPolicy.Config | None" = None, logits: torch.Tensor | None = None):
        super().__init__(config)
        check_threshold(self.config.threshold)
        self.identity: dict[str, Any] = {}  # the model, image size and steps the routers were trained for
        if logits is None:
            if not self.config.router:
                raise ValueError(f"method {self.name!r} needs method_args['router']: the path of a router file ({MAKE_HINT})")
            payload = read_router_file(self.config.router)
            logits, self.identity = router_logits(payload[ROUTERS_KEY], self.config.router), router_identity(payload)
        self.logits = logits.detach().float().cpu()

    @classmethod
    def from_logits(cls, logits: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> "L2CPolicy":
        """A policy for routers held in memory, (N, 2 * depth) logits (tests, training)."""
        return cls(cls.Config(router="", threshold=threshold), logits=logits)

    def schedule(self, run: RunInfo) -> torch.Tensor:
        steps, entries = self.logits.shape
        source = repr(self.config.router) if self.config.router else "in memory"
        check_even_steps(run.num_steps)
        check_identity(self.identity, self.config.router, "L2C router", run.model_name, run.image_size, run.num_steps)
        if (steps, entries) != (run.num_steps, 2 * run.depth):
            raise ValueError(f"L2C router {source} holds {steps} routers of {entries} logits (a {steps}-step run, depth "
                             f"{entries // 2}); this run has {run.num_steps} steps and depth {run.depth} "
                             f"({run.num_steps} routers of {2 * run.depth} logits)")
        return compute_mask(self.logits, self.config.threshold)
