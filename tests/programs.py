"""Tiny exported programs shared by the export and device tests (lowering an unrolled sampler takes a while).

The model is the smallest DiT that still has something to skip (2 blocks); 2 DDIM steps with CFG.
Each program is exported once per test process into a temporary folder.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch

from harness import build_model
from harness.methods import Policy, create_policy
from conftest import randomize

STEPS, CFG, IMAGES = 2, 1.5, 2
SKIP_SCHEDULE = torch.tensor([[[False, True], [True, False]],  # step index 0: block 0 reuses attn, block 1 its MLP
                              [[True, True], [True, True]]])  # the first sampled step computes everything
FOLDER = Path(tempfile.mkdtemp(prefix="harness-programs-"))
atexit.register(shutil.rmtree, FOLDER, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def tiny_model() -> torch.nn.Module:
    return randomize(build_model("DiT-S/2", image_size=32, depth=2, hidden_size=32, num_heads=2, num_classes=10))


def policy_for(method: str) -> Policy:
    if method == "lazydit-static":
        from lazydit.static import LazyDiTStaticPolicy

        return LazyDiTStaticPolicy.from_schedule(SKIP_SCHEDULE)
    return create_policy(method)


def inputs(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    noise = torch.randn(IMAGES, *tiny_model().spec.latent_shape, generator=torch.Generator().manual_seed(seed))
    return noise, torch.arange(IMAGES) % 10


@functools.lru_cache(maxsize=None)
def sampler_program(method: str) -> Path:
    """The tiny model's sampler for `method`, exported once (no ETRecord)."""
    from harness.export import export_programs

    files = export_programs(tiny_model(), policy_for(method), STEPS, IMAGES, FOLDER / f"{method}.pte", CFG,
                            kinds=("sampler",), etrecord=False)
    return Path(files["sampler"].path)
