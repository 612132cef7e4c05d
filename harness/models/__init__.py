"""Model registry: paper names -> builders, and loading of official checkpoints.

Every built model carries a `spec` (`ModelSpec`) that says how to sample and decode it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from harness.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """What the sampler needs to know about a model beyond its weights."""

    name: str
    image_size: int  # pixels of the decoded image
    latent_size: int  # spatial size the model denoises
    in_channels: int
    num_classes: int
    vae: str | None  # "sd-vae-ft-ema" / "sd-vae-ft-mse" for latent models, None for pixel space
    family: str  # "dit", "large-dit"

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.latent_size, self.latent_size)


ModelBuilder = Callable[..., nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model", plugins=("harness.models.zoo", "harness.models.large_dit"))


def build_model(name: str, image_size: int | None = None, **overrides) -> nn.Module:
    """A randomly initialised model in the official state-dict layout.

    Args:
        name: a registered model name, e.g. "DiT-XL/2", "Large-DiT-3B", "embedded/digits-8".
        image_size: decoded image size in pixels (latent models: a multiple of 8 x patch); default: the
            model's own (256 for the DiT family, the native size for embedded models).
        overrides: architecture fields to change (e.g. num_classes=10).
    """
    sized = {} if image_size is None else {"image_size": image_size}
    return MODELS.get(name)(**sized, **overrides)


def load_model(name: str, path: str | None = None, image_size: int | None = None, **overrides) -> nn.Module:
    """A model with weights: an official checkpoint by path, or a shipped embedded model.

    Args:
        name: a registered model name.
        path: the checkpoint (the EMA state dict itself, or a dict holding it under "ema"/"model");
            optional for embedded models, which ship their weights.
        image_size: decoded image size; inferred from the checkpoint's positional grid when omitted.
    """
    from harness.models import zoo
    from harness.models.checkpoints import load_checkpoint

    MODELS.get(name)  # an unknown name fails first, listing the accepted ones
    if zoo.is_embedded(name) and path is None:
        return zoo.load_embedded(name)
    if path is None:
        raise ValueError(f"model {name!r} needs a checkpoint path (the official .pt); none was given")
    return load_checkpoint(name, path, image_size=image_size, **overrides)


from harness.models import dit_family  # noqa: E402,F401  (registers the DiT-*/* builders)
