"""sFID (Nash et al., 2021) as the ADM evaluator computes it: FID on spatial Inception features.

ADM's evaluator (openai/guided-diffusion, evaluations/evaluator.py) reads the TF graph's
`mixed_6/conv:0`, keeps its first 7 channels (`spatial[..., :7]`) and flattens each image's
17 x 17 x 7 map in TF's NHWC order. In the 2015-12-05 graph, `mixed_6` is the third 17x17
Inception block (torch-fidelity's `Mixed_6d`) and its `conv` is the 1x1 branch with batch norm
and ReLU (`Mixed_6d.branch1x1`, a `BasicConv2d`). The flattening order matters: it must
match the `mu_s` / `sigma_s` stored in ADM reference batches.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

SPATIAL_MODULE = "Mixed_6d.branch1x1"  # the TF graph's mixed_6/conv
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS  # 2023


def spatial_features(activation: torch.Tensor) -> torch.Tensor:
    """(N, 192, 17, 17) mixed_6/conv output -> (N, 2023): first 7 channels, flattened as NHWC."""
    return activation[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(activation), -1).float().cpu()


@contextmanager
def capture_spatial_features(extractor: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While active, every forward of torch-fidelity's Inception appends its (N, 2023) spatial features.

    Args:
        extractor: torch-fidelity's `FeatureExtractorInceptionV3` (module names as in its port).
    """
    module = extractor.get_submodule(SPATIAL_MODULE)
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _inp, out: captured.append(spatial_features(out)))
    try:
        yield captured
    finally:
        handle.remove()


def spatial_statistics(features: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """{"mu", "sigma"} in float64, as ADM stores `mu_s` / `sigma_s`."""
    feats = np.asarray(features, dtype=np.float64)
    return {"mu": feats.mean(0), "sigma": np.cov(feats, rowvar=False)}
