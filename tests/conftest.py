"""Shared fixtures: tiny random-weight DiTs that exercise every code path in milliseconds."""
from __future__ import annotations

import pytest
import torch

from harness import build_model


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Random weights everywhere, including adaLN and the final layer, which DiT zero-initialises."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


@pytest.fixture
def one_thread():
    """One intra-op thread: small GEMMs on a shared 2-core machine run far faster without OpenMP spinning."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_latent_dit() -> torch.nn.Module:
    """A 4-channel latent DiT (so DiT's 3-of-4-channel CFG quirk applies), 16 tokens."""
    return randomize(build_model("DiT-S/2", image_size=64, depth=3, hidden_size=64, num_heads=4, num_classes=10))


def golden_model(spec: dict) -> torch.nn.Module:
    """The random-weight DiT a golden fixture was made with (its "model" entry: architecture, seed, std)."""
    model = build_model("DiT-S/2", image_size=spec["image_size"], depth=spec["depth"], hidden_size=spec["hidden_size"],
                        num_heads=spec["num_heads"], num_classes=spec["num_classes"])
    return randomize(model, spec["seed"], spec["std"])
