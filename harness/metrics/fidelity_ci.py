"""Fidelity to full compute with confidence intervals: per-image PSNR / SSIM / domain feature distance, bootstrapped.

Fidelity is paired by construction (image i of a method against image i of full-compute DDIM with the
same seed and label), so its interval is the bootstrap over images of the per-image mean, on the shared
resampling plan (`harness.bootstrap`). Identical images (PSNR +inf) are counted at `PSNR_CAP` dB so that
the mean stays finite; the record says so.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from harness import bootstrap

PSNR_CAP = 100.0  # dB, for identical images (uint8: any single-level difference is below 60 dB)


def fidelity_intervals(images: np.ndarray, reference: np.ndarray, domain: bool) -> dict[str, Any]:
    """Means and 95% intervals of per-image PSNR (capped), SSIM and, for domain models, the feature distance.

    Args:
        images, reference: uint8 (N, H, W, C), paired by index (the method's and full compute's).
        domain: also the digits classifier's feature distance (`domain.feature_distance`).
    Returns {"<metric>_ci": [low, high], "<metric>_mean": value, ...} plus the bootstrap replicates.
    """
    from harness.metrics.fidelity import psnr, ssim

    per_image = {"psnr_capped": np.minimum(psnr(images, reference).numpy(), PSNR_CAP),
                 "ssim": ssim(images, reference).numpy()}
    if domain:
        from harness.metrics.domain import FEATURE_DISTANCE, feature_distance

        per_image[FEATURE_DISTANCE] = feature_distance(images, reference)
    counts = bootstrap.resample_counts(len(images))
    out: dict[str, Any] = {}
    reps_text = {}
    for name, values in per_image.items():
        point = float(values.mean())
        reps = counts @ values / len(values)
        estimate = bootstrap.interval(point, reps)
        if name != "ssim":  # the record's SSIM mean is compute_fidelity_metrics'
            out[name] = point
        out[f"{name}_ci"] = [estimate.low, estimate.high]
        reps_text[name] = bootstrap.encode(point, reps)
    out["bootstrap"] = {"replicates": bootstrap.REPLICATES, "plan_seed": bootstrap.PLAN_SEED,
                        "encoding": bootstrap.ENCODING, **reps_text}
    return out
