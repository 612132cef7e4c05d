"""Training data for lazy learning: endless shuffled batches of (clean latents, labels).

Sources: "digits" (the embedded models' data, `harness.data`), "latents:PATH" (a .pt / .npz
with "latents" (N, C, H, W), already scaled by 0.18215 for latent models, and "labels"
(N,)), "imagefolder:PATH" (ImageNet-style folders, ADM centre crop, VAE-encoded on the
fly), "random" (Gaussian latents, random labels: smoke tests only).
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

SOURCES = ("digits", "latents:PATH", "imagefolder:PATH", "random")


def training_batches(model: nn.Module, source: str, batch_size: int, seed: int = 0,
                     device: str | torch.device = "cpu", vae_path: str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless iterator of (x0 (N, C, H, W), y (N,)) batches for `model`.

    Args:
        model: the DiT being accelerated (its `spec` gives shape, classes and VAE).
        source: one of "digits", "latents:PATH", "imagefolder:PATH", "random".
        batch_size: samples per batch.
        seed: shuffling seed.
        device: where batches are put.
        vae_path: local VAE folder for "imagefolder:" sources.
    """
    kind, _, path = source.partition(":")
    if kind == "digits":
        x, y = _digits(model)
    elif kind == "latents" and path:
        x, y = _latents_file(path)
    elif kind == "random":
        return _random_batches(model, batch_size, seed, device)
    elif kind == "imagefolder" and path:
        return _imagefolder_batches(model, path, batch_size, seed, device, vae_path)
    else:
        raise ValueError(f"unknown training data source {source!r}; accepted: {', '.join(SOURCES)}")
    want = tuple(model.spec.latent_shape)
    if tuple(x.shape[1:]) != want:
        raise ValueError(f"training data of shape {tuple(x.shape[1:])} does not fit {model.spec.name} (expects {want})")
    if y.min() < 0 or y.max() >= model.spec.num_classes:
        raise ValueError(f"training labels span {int(y.min())}..{int(y.max())}; {model.spec.name} accepts 0..{model.spec.num_classes - 1}")
    return _shuffled(x, y, batch_size, seed, device)


def _shuffled(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    from harness.training import BatchStream

    stream = BatchStream(len(x), batch_size, torch.Generator().manual_seed(seed))  # drop_last, as the official loader
    while True:
        rows = stream.next()
        yield x[rows].to(device), y[rows].to(device)


def _digits(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    from harness.data import load_digits_split

    if model.spec.vae is not None:
        raise ValueError(f"the digits data are pixel-space; {model.spec.name} is a latent model: use latents:PATH or imagefolder:PATH")
    split = load_digits_split("train", resolution=model.spec.image_size)
    return split.images, split.labels


def _latents_file(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The "latents" and "labels" of a .npz (no object arrays) or .pt (weights-only) file."""
    from harness.cache import load_torch_dict

    hint = "a .pt or .npz with 'latents' (N, C, H, W) and 'labels' (N,)"
    if not path.endswith(".npz"):
        data = load_torch_dict(path, "latents", "latents", hint)
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"latents file {path!r} not found; {hint}")
    else:
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = dict(npz)
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"latents file {path!r} is not a readable .npz ({err}); {hint}") from None
    missing = [k for k in ("latents", "labels") if k not in data]
    if missing:
        raise ValueError(f"latents file {path!r} lacks {missing}; {hint}")
    try:
        x, y = torch.as_tensor(data["latents"]).float(), torch.as_tensor(data["labels"]).long()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"latents file {path!r}: 'latents' / 'labels' are not numeric arrays ({err})") from None
    if x.dim() != 4 or y.shape != (len(x),) or not len(x):
        raise ValueError(f"latents file {path!r} holds latents {tuple(x.shape)} and labels {tuple(y.shape)}; {hint}, N > 0")
    return x, y


def _random_batches(model: nn.Module, batch_size: int, seed: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(batch_size, *model.spec.latent_shape, generator=gen)
        y = torch.randint(0, model.spec.num_classes, (batch_size,), generator=gen)
        yield x.to(device), y.to(device)


def center_crop(image, size: int):
    """ADM's centre crop: halve with a box filter while possible, bicubic-resize the short side to `size`, crop."""
    from PIL import Image

    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def _imagefolder_batches(model: nn.Module, root: str, batch_size: int, seed: int, device,
                         vae_path: str | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    from torchvision import datasets, transforms

    from harness.models.vae import LATENT_SCALE, _load_vae, find_vae

    if model.spec.vae is None:
        raise ValueError(f"{model.spec.name} is pixel-space; imagefolder data are VAE-encoded for latent models")
    size = model.spec.image_size
    transform = transforms.Compose([
        transforms.Lambda(lambda im: center_crop(im.convert("RGB"), size)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize([0.5] * 3, [0.5] * 3),
    ])
    dataset = datasets.ImageFolder(root, transform=transform)
    vae = _load_vae(str(find_vae(model.spec.vae, vae_path)), str(torch.device(device)))
    gen = torch.Generator().manual_seed(seed)  # order and, through the worker seeds, the flips
    posterior_gen = torch.Generator(device=device).manual_seed(seed)  # the VAE posterior draws
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         generator=gen, num_workers=min(4, os.cpu_count() or 1))
    while True:
        for images, labels in loader:
            with torch.no_grad():
                x0 = vae.encode(images.to(device)).latent_dist.sample(generator=posterior_gen).mul_(LATENT_SCALE)
            yield x0, labels.to(device)
