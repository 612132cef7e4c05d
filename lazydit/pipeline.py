"""End-to-end jobs behind `python -m harness train lazydit | lazydit-static`: load, train / calibrate, write.

Each job returns a plain summary dict (what the command prints as JSON).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch.nn as nn

from harness.diffusion import parse_steps
from harness.fill_blend import progress_printer
from harness.inputs import (check_cfg_scale, check_identity, check_positive, check_ratio, check_writable,
                            file_identity)
from lazydit.accounting import realised_ratio, threshold_for_ratio
from lazydit.data import training_batches
from lazydit.layers import DEFAULT_THRESHOLD
from lazydit.training import LazyTrainConfig, train_lazy_layers
from lazydit.weights import METHOD_KEY, WEIGHTS_KEY, layers_from_state, read_lazy_file, save_lazy_weights


def load_for_training(model_name: str, checkpoint: str | None, image_size: int | None, device: str) -> nn.Module:
    """The model whose lazy layers are trained: a shipped embedded model or an official checkpoint."""
    from harness.models import load_model

    return load_model(model_name, checkpoint, image_size=image_size).to(device)


def calibration_set(model: nn.Module, images: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Class labels cycling through the classes and consecutive seeds, for threshold search / calibration."""
    labels = [i % model.spec.num_classes for i in range(images)]
    return labels, [seed + i for i in range(images)]


def train_to_file(model_name: str, out: str, config: LazyTrainConfig, data: str, checkpoint: str | None = None,
                  image_size: int | None = None, target_ratio: float | None = None, calib_images: int = 16,
                  cfg_scale: float = 1.5, device: str = "cpu", vae_path: str | None = None, quiet: bool = False) -> dict:
    """Trains lazy layers and writes the official lazy-weights file (plus method, threshold, recipe).

    Args:
        model_name, checkpoint, image_size: the frozen DiT (see `harness.load_model`).
        out: the .pt file to write.
        config: the recipe.
        data: a `lazydit.data` source ("digits", "latents:PATH", "imagefolder:PATH").
        target_ratio: when given, bisect the threshold reaching this lazy ratio on calibration images.
        calib_images, cfg_scale: the calibration sampling for the threshold search and the reported ratio.
        device: where training runs; vae_path: local VAE for imagefolder data.
        quiet: no progress on stderr.
    """
    check_training(config, target_ratio, calib_images, cfg_scale, out)
    model = load_for_training(model_name, checkpoint, image_size, device)
    batches = training_batches(model, data, config.batch_size, config.seed, device, vae_path)
    start = time.perf_counter()
    layers, history = train_lazy_layers(model, batches, config, on_step=None if quiet else progress_printer(
        config.iters, lambda m: f"attn lazy {m['attn_lazy']:.0%} mlp lazy {m['mlp_lazy']:.0%}"))
    train_s = time.perf_counter() - start
    labels, seeds = calibration_set(model, calib_images)
    if target_ratio is not None:
        threshold, achieved = threshold_for_ratio(model, layers, target_ratio, config.steps, labels, seeds, cfg_scale,
                                                  method=config.method, device=device)
    else:
        threshold = DEFAULT_THRESHOLD
        achieved = realised_ratio(model, layers, threshold, config.steps, labels, seeds, cfg_scale, config.method, device)
    summary = {
        "method": config.method, "model": model_name, "weights": out, "threshold": threshold,
        "target_ratio": target_ratio, "achieved_ratio": achieved, "train_seconds": round(train_s, 1),
        "final_loss": _tail_mean(history, "loss"), "final_mse": _tail_mean(history, "mse"), "train": config.to_dict(),
    }
    save_lazy_weights(layers, out, **file_identity(model, config.steps, config.method), threshold=threshold,
                      target_ratio=target_ratio, achieved_ratio=achieved, train=config.to_dict())
    return summary


def check_training(config: LazyTrainConfig, target_ratio: float | None, calib_images: int, cfg_scale: float,
                   out: str) -> None:
    """Every value of a training job, checked before the model is loaded (nothing trains on a bad value)."""
    parse_steps(config.steps)
    for name, value in (("--iters", config.iters), ("--batch-size", config.batch_size), ("--calib-images", calib_images)):
        check_positive(value, name)
    for name, value in (("--rho-attn", config.rho_attn), ("--rho-mlp", config.rho_mlp)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}={value!r} is out of range; accepted: a finite number >= 0")
    if not math.isfinite(config.lr) or config.lr <= 0:
        raise ValueError(f"--lr={config.lr!r} is out of range; accepted: a finite number > 0")
    if not 0.0 <= config.label_dropout < 1.0:
        raise ValueError(f"--label-dropout={config.label_dropout!r} is out of range; accepted: 0 <= p < 1")
    check_ratio(target_ratio, "--target-ratio")
    check_cfg_scale(cfg_scale, "--cfg-scale")
    check_writable(out, "--out")


def _tail_mean(history: list[dict[str, float]], key: str, tail: int = 20) -> float:
    values = [h[key] for h in history[-tail:]]
    return sum(values) / max(len(values), 1)


def calibrate_to_file(model_name: str, weights: str, out: str, steps: int, checkpoint: str | None = None,
                      image_size: int | None = None, threshold: float | None = None, target_ratio: float | None = None,
                      calib_images: int = 16, cfg_scale: float = 1.5, device: str = "cpu") -> dict:
    """Freezes a lazy-weights file's decisions on calibration images into a static schedule file.

    Args:
        model_name, checkpoint, image_size: the DiT.
        weights: its lazy-weights file; out: the schedule file to write.
        steps: the step budget (must match the weights).
        threshold: the dynamic policy's threshold (default: the one stored in the file, else 0.5).
        target_ratio: skip exactly this share of branches (default: majority vote of the samples).
        calib_images, cfg_scale: the calibration sampling.
        device: where calibration runs.
    """
    from lazydit.static import calibrate_schedule, save_schedule

    parse_steps(steps)
    check_positive(calib_images, "--calib-images")
    check_ratio(target_ratio, "--target-ratio")
    check_cfg_scale(cfg_scale, "--cfg-scale")
    check_writable(out, "--out")
    payload = read_lazy_file(weights)
    layers_from_state(payload[WEIGHTS_KEY])  # fail early on a malformed file
    method = payload.get(METHOD_KEY, "lazydit")
    threshold = float(payload.get("threshold", DEFAULT_THRESHOLD)) if threshold is None else threshold
    model = load_for_training(model_name, checkpoint, image_size, device)
    check_identity(payload, weights, "lazy-weights", model.spec.name, model.spec.image_size, steps)
    labels, seeds = calibration_set(model, calib_images)
    compute = calibrate_schedule(model, weights, steps, labels, seeds, cfg_scale, threshold, target_ratio, method, device)
    ratio = 1.0 - compute.float().mean().item()
    save_schedule(compute, out, **file_identity(model, steps, "lazydit-static"), source_method=method,
                  weights=Path(weights).name, threshold=threshold, target_ratio=target_ratio, lazy_ratio=ratio,
                  calibration={"images": calib_images, "cfg_scale": cfg_scale})
    return {"method": "lazydit-static", "schedule": out, "weights": weights, "threshold": threshold,
            "target_ratio": target_ratio, "achieved_ratio": ratio, "steps": int(compute.shape[0])}
