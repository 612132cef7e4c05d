"""Registers the official DiT family (S/B/L/XL x patch 2/4/8) as latent-space models."""
from __future__ import annotations

import dataclasses

from harness.models import MODELS, ModelSpec
from harness.models.dit import DiT, DiTConfig, DiT_models

VAE_DOWNSAMPLE = 8  # sd-vae-ft-*: 8x smaller, 4 channels
DEFAULT_VAE = "sd-vae-ft-mse"  # DiT's sample.py default


def latent_size_for(name: str, image_size: int, patch_size: int, vae: str | None) -> int:
    """Checks that `image_size` fits the VAE (if any) and the patch grid; returns the denoised size."""
    downsample = VAE_DOWNSAMPLE if vae else 1
    if not isinstance(image_size, int) or image_size <= 0 or image_size % (downsample * patch_size):
        where = f"VAE x{downsample}, patch {patch_size}" if vae else f"pixel space, patch {patch_size}"
        raise ValueError(
            f"image_size={image_size!r} does not fit {name}: accepted: positive multiples of "
            f"{downsample * patch_size} ({where}); the official checkpoints are 256 and 512"
        )
    return image_size // downsample


def _dit_builder(name: str, arch: dict):
    def build(image_size: int = 256, vae: str | None = DEFAULT_VAE, **overrides) -> DiT:
        """vae=None builds a pixel-space DiT that denoises the image itself."""
        latent = latent_size_for(name, image_size, arch["patch_size"], vae)
        config = dataclasses.replace(DiTConfig(input_size=latent, **arch), **overrides)
        model = DiT(config)
        model.spec = ModelSpec(name, image_size, latent, config.in_channels, config.num_classes, vae, "dit")
        return model

    return build


for _name, _arch in DiT_models.items():
    MODELS.register(_name)(_dit_builder(_name, _arch))
