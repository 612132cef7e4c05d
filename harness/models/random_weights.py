"""Random weights for cost benchmarks that still behave like a trained DiT's.

DiT's adaLN-Zero initialisation zeroes every block's modulation and the final layer, so a
freshly built model is the identity in every block and outputs zeros: kernels cost the
same, but data-dependent methods (TeaCache, First-Block-Cache, LazyDiT) see constant or
zero residuals and decide degenerately. Perturbing exactly-zero linear layers gives every
block a real residual, while MACs and kernel shapes stay those of the model.
"""
from __future__ import annotations

import torch
import torch.nn as nn

ZERO_INIT_STD = 0.02


@torch.no_grad()
def perturb_zero_linears(model: nn.Module, std: float = ZERO_INIT_STD, seed: int = 0) -> nn.Module:
    """Draws N(0, std) weights for every nn.Linear whose weight is exactly zero (adaLN-Zero); returns the model.

    Args:
        model: a freshly built model (its other weights are untouched).
        std, seed: the normal's standard deviation and the generator's seed (same model every run).
    """
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.is_meta and not module.weight.any():
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
    return model
