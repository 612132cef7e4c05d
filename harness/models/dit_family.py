"""Registers the official DiT family (S/B/L/XL x patch 2/4/8) as latent-space models."""
from __future__ import annotations

import dataclasses

from harness.models import MODELS, ModelSpec
from harness.models.dit import DiT, DiTConfig, DiT_models

VAE_DOWNSAMPLE = 8  # sd-vae-ft-*: 8x smaller, 4 channels
DEFAULT_VAE = "sd-vae-ft-mse"  # DiT's sample.py default


def latent_size_for(name: str, image_size: int, patch_size: int) -> int:
    """Checks that `image_size` fits the VAE and the patch grid; returns the latent size."""
    if not isinstance(image_size, int) or image_size <= 0 or image_size % (VAE_DOWNSAMPLE * patch_size):
        raise ValueError(
            f"image_size={image_size!r} does not fit {name}: accepted: positive multiples of "
            f"{VAE_DOWNSAMPLE * patch_size} (VAE x{VAE_DOWNSAMPLE}, patch {patch_size}); the official checkpoints are 256 and 512"
        )
    return image_size // VAE_DOWNSAMPLE


def _dit_builder(name: str, arch: dict):
    def build(image_size: int = 256, vae: str = DEFAULT_VAE, **overrides) -> DiT:
        latent = latent_size_for(name, image_size, arch["patch_size"])
        config = dataclasses.replace(DiTConfig(input_size=latent, **arch), **overrides)
        model = DiT(config)
        model.spec = ModelSpec(name, image_size, latent, config.in_channels, config.num_classes, vae, "dit")
        return model

    return build


for _name, _arch in DiT_models.items():
    MODELS.register(_name)(_dit_builder(_name, _arch))
