"""Decoding: diffusers' AutoencoderKL for latent models (offline only), identity for pixel space."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

VAE_ENV = "HARNESS_VAE_DIR"
VAE_REPOS = {"sd-vae-ft-ema": "stabilityai/sd-vae-ft-ema", "sd-vae-ft-mse": "stabilityai/sd-vae-ft-mse"}
LATENT_SCALE = 0.18215  # Stable Diffusion's latent scaling, as DiT uses it


def find_vae(name: str, vae_path: str | os.PathLike | None = None) -> Path:
    """The local folder of VAE `name`: `vae_path`, $HARNESS_VAE_DIR/<name>, or the Hugging Face cache."""
    if name not in VAE_REPOS:
        raise ValueError(f"unknown VAE {name!r}; accepted: {', '.join(VAE_REPOS)}")
    repo = VAE_REPOS[name]
    candidates = []
    if vae_path is not None:
        candidates.append(Path(vae_path).expanduser())
    if os.environ.get(VAE_ENV):
        candidates.append(Path(os.environ[VAE_ENV]) / name)
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", hf_home / "hub"))
    candidates += sorted((hub / f"models--{repo.replace('/', '--')}" / "snapshots").glob("*"))
    for folder in candidates:
        if (folder / "config.json").is_file():
            return folder
    looked = ", ".join(str(c) for c in candidates) or str(hub)
    raise FileNotFoundError(
        f"VAE {name!r} not found (looked in: {looked}); fetch the Hugging Face repo {repo} "
        f"(e.g. `huggingface-cli download {repo}` where there is network) and pass its folder with --vae-path or ${VAE_ENV}"
    )


@functools.lru_cache(maxsize=2)
def _load_vae(folder: str, device: str):
    from diffusers.models import AutoencoderKL

    return AutoencoderKL.from_pretrained(folder, local_files_only=True).to(device).eval()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] images (N, C, H, W) -> uint8 (N, H, W, C), DiT's rounding: clamp(127.5 x + 128)."""
    return torch.clamp(127.5 * x + 128.0, 0, 255).permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8).numpy()


@torch.no_grad()
def decode_latents(latents: torch.Tensor, vae: str | None, vae_path: str | os.PathLike | None = None) -> np.ndarray:
    """uint8 images (N, H, W, C) from latents; pixel-space models (vae=None) decode by identity."""
    if vae is None:
        return to_uint8(latents)
    model = _load_vae(str(find_vae(vae, vae_path)), str(latents.device))
    return to_uint8(model.decode(latents / LATENT_SCALE).sample)
