"""Fidelity to full compute: PSNR / SSIM of a method's images and MSE of its latents against plain DDIM.

The protocol of the caching papers (FORA, Delta-DiT, ToCa, ...): the same seeds, labels, step
count and guidance, once with every branch computed and once with the method; the gap
measures what the method changed. The full-compute reference is sampled once per (model
weights, resolution, steps, seeds, labels, cfg, sampler, eta, dtype, the sampling code and
the torch version) and cached by content hash.
"""
from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.cache import atomic_write_bytes, cache_path, content_hash

# Record keys.
PSNR, PSNR_STD = "psnr", "psnr_std"
SSIM, SSIM_STD = "ssim", "ssim_std"
LATENT_MSE = "latent_mse"
IDENTICAL_IMAGES = "identical_images"
FIDELITY_REFERENCE_KEY = "fidelity_reference_key"

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Wang et al. (2004): Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0
# The code that computes a full-compute reference: a change to any of it makes a new cache entry.
REFERENCE_CODE = ("harness.sampling", "harness.diffusion", "harness.methods", "harness.models.vae")


# ----------------------------------------------------------------------------------------
#                                    Image comparisons
# ----------------------------------------------------------------------------------------

def _as_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float64 (N, C, H, W)."""
    x = images if torch.is_tensor(images) else torch.from_numpy(np.asarray(images))
    return x.to(torch.float64).permute(0, 3, 1, 2)


def psnr(images: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB (N,) of uint8 images (N, H, W, C); +inf where identical."""
    mse = (_as_float(images) - _as_float(reference)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(DATA_RANGE**2 / mse)


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]  # (size, size)


def ssim(images: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (N,) of uint8 images, Wang et al.'s Gaussian-window form, averaged over channels.

    Equals scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255)`: statistics over the valid region.
    Images smaller than the 11-pixel window use the largest odd window that fits.
    """
    x, y = _as_float(images), _as_float(reference)
    channels, size = x.shape[1], min(SSIM_WINDOW, *x.shape[2:])
    size -= 1 - size % 2  # odd
    window = gaussian_window(size, SSIM_SIGMA).expand(channels, 1, size, size)
    blur = lambda t: F.conv2d(t, window, groups=channels)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)


def latent_mse(latents: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image MSE (N,) between latents (N, C, H, W)."""
    return (latents.double() - reference.double()).pow(2).flatten(1).mean(1)


# ----------------------------------------------------------------------------------------
#                              The full-compute reference
# ----------------------------------------------------------------------------------------

@dataclass
class FullComputeReference:
    """Plain DDIM's output for one (model, resolution, steps, seeds, labels, cfg)."""

    key: str
    latents: torch.Tensor  # float32 (N, C, H, W)
    images: np.ndarray | None  # uint8 (N, H, W, C)


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's state dict (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def full_compute_reference(model: nn.Module, class_labels: Sequence[int], seeds: Sequence[int], steps: int | str,
                           cfg_scale: float, *, model_key: str | None = None, decode: bool = True,
                           **sample_kwargs: Any) -> FullComputeReference:
    """Plain DDIM with the same seeds, labels, steps and guidance, sampled once and cached.

    Args:
        model: the harness model (weights as used by the method's run).
        class_labels, seeds, steps, cfg_scale: as for the method's `sample` call.
        model_key: identity of the weights (e.g. the checkpoint's sha256); default: hash of the state dict.
        decode: also keep the decoded images (PSNR / SSIM need them).
        sample_kwargs: the rest of the method's `sample` call (device, dtype, sampler, eta, batch_size,
            guide_channels, vae_path); anything that changes numbers belongs in the key.
    """
    from harness.provenance import code_fingerprint
    from harness.sampling import sample

    spec = model.spec
    key = content_hash({
        "code": code_fingerprint((*REFERENCE_CODE, type(model).__module__)), "torch": torch.__version__,
        "model": model_key or weights_fingerprint(model), "name": spec.name, "image_size": spec.image_size,
        "steps": str(steps), "seeds": list(map(int, seeds)), "labels": list(map(int, class_labels)),
        "cfg_scale": float(cfg_scale), "decode": decode,
        "sample": {k: str(v) for k, v in sorted(sample_kwargs.items()) if k != "batch_size"},
    })
    entry = cache_path("full-compute", key, "npz")
    if not entry.is_file():
        out = sample(model, class_labels, seeds, steps=steps, cfg_scale=cfg_scale, method="ddim", decode=decode,
                     **sample_kwargs)
        buffer = io.BytesIO()
        arrays = {"latents": out.latents.float().numpy()}
        if out.images is not None:
            arrays["images"] = out.images
        np.savez(buffer, **arrays)
        atomic_write_bytes(entry, buffer.getvalue())
    with np.load(entry, allow_pickle=False) as data:
        images = data["images"] if "images" in data else None
        return FullComputeReference(key, torch.from_numpy(data["latents"]), images)


# ----------------------------------------------------------------------------------------
#                                       Entry point
# ----------------------------------------------------------------------------------------

def compute_fidelity_metrics(images: np.ndarray | None, latents: torch.Tensor, reference: FullComputeReference) -> dict[str, Any]:
    """PSNR, SSIM (images) and latent MSE of a method's output against its full-compute reference.

    Args:
        images: the method's uint8 images (N, H, W, C), or None when not decoded.
        latents: the method's latents (N, C, H, W).
        reference: `full_compute_reference(...)` for the same seeds, labels, steps and guidance.
    """
    if tuple(latents.shape) != tuple(reference.latents.shape):
        raise ValueError(f"latents of shape {tuple(latents.shape)} do not match the full-compute reference's "
                         f"{tuple(reference.latents.shape)}; sample the same seeds and labels")
    mse = latent_mse(latents.cpu(), reference.latents)
    out: dict[str, Any] = {LATENT_MSE: float(mse.mean()), FIDELITY_REFERENCE_KEY: reference.key}
    if images is not None and reference.images is not None:
        p, s = psnr(images, reference.images), ssim(images, reference.images)
        out.update({PSNR: float(p.mean()), PSNR_STD: _std(p), SSIM: float(s.mean()), SSIM_STD: _std(s),
                    IDENTICAL_IMAGES: int(torch.isinf(p).sum())})
    return out


def _std(values: torch.Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.std(unbiased=False)) if len(finite) > 1 else (0.0 if len(finite) else math.nan)
