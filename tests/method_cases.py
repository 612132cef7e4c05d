"""How the method contract test drives each registered method.

Every name in `harness.methods.METHODS` needs an entry (a test checks it): a policy whose
settings compute everything, a typical setting that skips work, and whether its
decisions are fixed before sampling (static: the dry run must equal the real log).
A method's module adds its entry here when it registers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from harness.methods import Policy, create_policy

STEPS = 10  # even, as Learning-to-Cache requires


@dataclass(frozen=True)
class MethodCase:
    full: Callable[[nn.Module, Path], Policy]  # settings under which every branch is computed
    typical: Callable[[nn.Module, Path], Policy]  # a setting that skips work
    static: bool  # decisions fixed before sampling: dry run == real log


def lazy_layers(model: nn.Module, scale: float, seed: int = 0):
    from lazydit.layers import LazyLayers

    layers = LazyLayers(STEPS, model.depth, model.config.hidden_size)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layers.copy_weight_(torch.randn(layers.weight.shape, generator=gen) * scale)
    return layers


def lazydit(name: str) -> MethodCase:
    from lazydit.policy import lazydit_policy_for

    return MethodCase(
        full=lambda model, tmp: lazydit_policy_for(name, lazy_layers(model, 0.0), threshold=0.0),
        typical=lambda model, tmp: lazydit_policy_for(name, lazy_layers(model, 0.05), threshold=0.5),
        static=False,
    )


def lazydit_static(compute_share: float) -> Callable[[nn.Module, Path], Policy]:
    def make(model: nn.Module, tmp: Path) -> Policy:
        from lazydit.static import LazyDiTStaticPolicy

        gen = torch.Generator().manual_seed(1)
        return LazyDiTStaticPolicy.from_schedule(torch.rand(STEPS, model.depth, 2, generator=gen) < compute_share)

    return make


def l2c(threshold: float) -> Callable[[nn.Module, Path], Policy]:
    """A random router in the official file layout (threshold 0: every sigmoid > 0, so everything computes)."""
    def make(model: nn.Module, tmp: Path) -> Policy:
        from baselines.l2c import save_routers

        path = tmp / "l2c-router.pt"
        save_routers(torch.randn(STEPS, 2 * model.depth, generator=torch.Generator().manual_seed(2)), path)
        return create_policy("l2c", {"router": str(path), "threshold": threshold})

    return make


CASES: dict[str, MethodCase] = {
    "ddim": MethodCase(full=lambda m, tmp: create_policy("ddim"), typical=lambda m, tmp: create_policy("ddim"), static=True),
    "lazydit": lazydit("lazydit"),
    "lazydit-allsteps": lazydit("lazydit-allsteps"),
    "lazydit-static": MethodCase(full=lazydit_static(1.1), typical=lazydit_static(0.5), static=True),
    "teacache": MethodCase(full=lambda m, tmp: create_policy("teacache", {"threshold": 0.0}),
                           typical=lambda m, tmp: create_policy("teacache", {"threshold": 0.3}), static=False),
    "fbcache": MethodCase(full=lambda m, tmp: create_policy("fbcache", {"threshold": 0.0}),
                          typical=lambda m, tmp: create_policy("fbcache", {"threshold": 0.5}), static=False),
    "ab-cache": MethodCase(full=lambda m, tmp: create_policy("ab-cache", {"warmup": STEPS}),
                           typical=lambda m, tmp: create_policy("ab-cache", {"order": 3, "warmup": 2, "interval": 4}),
                           static=True),
    "toca": MethodCase(full=lambda m, tmp: create_policy("toca", {"fresh_threshold": 1, "fresh_ratio": 0.0}),
                       typical=lambda m, tmp: create_policy("toca"), static=False),
    "delta-dit": MethodCase(full=lambda m, tmp: create_policy("delta-dit", {"interval": 1}),
                            typical=lambda m, tmp: create_policy("delta-dit", {"interval": 3, "cached_blocks": 2}),
                            static=True),
    "fora": MethodCase(full=lambda m, tmp: create_policy("fora", {"interval": 1}),
                       typical=lambda m, tmp: create_policy("fora", {"interval": 3}), static=True),
    "taylorseer": MethodCase(full=lambda m, tmp: create_policy("taylorseer", {"interval": 1}),
                             typical=lambda m, tmp: create_policy("taylorseer", {"interval": 3, "max_order": 2}),
                             static=True),
    "l2c": MethodCase(full=l2c(0.0), typical=l2c(0.5), static=True),
}
