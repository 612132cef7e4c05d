"""Sampling: per-image seeds, batching, the DDIM / DDPM loop with CFG and the method policy.

Image i's starting noise (and, for DDPM, its step noise) comes from its own generator
seeded with seeds[i], so images do not depend on batch size, batch position or GPU count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from harness.diffusion import Diffusion, default_guide_channels, model_output_with_cfg
from harness.inputs import check_cfg_scale, check_sampler
from harness.methods import DecisionLog, Policy, RunInfo, create_policy
from harness.models.vae import decode_latents

SAMPLERS = ("ddim", "ddpm")
# CPU GEMM kernels give batch-size dependent rounding below ~12 rows; padding each model
# call to at least this many rows keeps every image bit-identical whatever the batch size.
MIN_INVARIANT_ROWS = 16


@dataclass
class SampleOutput:
    images: np.ndarray | None  # uint8 (N, H, W, C); None when decode=False
    latents: torch.Tensor  # float32 (N, C, H, W), on the CPU
    decisions: DecisionLog  # what ran; the sample axis holds CFG halves [cond..., uncond...]


def image_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...], generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """(N, *shape) standard normal noise, row i drawn from a generator seeded with seeds[i] (on the CPU)."""
    gens = generators or [image_generator(s) for s in seeds]
    return torch.stack([torch.randn(shape, generator=g) for g in gens])


def sample(
    model: nn.Module,
    class_labels: Sequence[int],
    seeds: Sequence[int],
    steps: int | str = 50,
    cfg_scale: float = 1.5,
    method: str | Policy = "ddim",
    method_args: dict[str, Any] | None = None,
    noise: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    decode: bool = True,
    sampler: str = "ddim",
    eta: float = 0.0,
    batch_size: int | None = None,
    guide_channels: int | None = None,
    batch_invariant: bool = True,
    vae_path: str | None = None,
) -> SampleOutput:
    """Draws class-conditional samples with a method policy attached.

    Args:
        model: a harness model (it carries `spec`), e.g. from `load_model`.
        class_labels: one label per image.
        seeds: one seed per image; image i's noise depends on seeds[i] only.
        steps: respaced step budget: N (DiT's `create_diffusion(str(N))`) or "ddimN".
        cfg_scale: classifier-free guidance scale; guidance is off at 1.0.
        method: a registry key ("ddim", "lazydit", ...) or a ready `Policy`.
        method_args: the method's parameters (rejected by name when unknown).
        noise: (N, C, H, W) starting noise overriding the seeds, to compare with other code.
        device, dtype: where and in what precision the model runs (autocast below float32).
        decode: return uint8 images (VAE for latent models, identity for pixel space).
        sampler: "ddim" (eta, default 0) or "ddpm" (ancestral).
        batch_size: images per model call (default: all at once).
        guide_channels: eps channels guided by CFG (default: DiT's 3 of 4 latent channels, else all).
        batch_invariant: pad small model calls so results do not depend on batch size.
        vae_path: local VAE folder for latent models.
    """
    spec = model.spec
    n = len(seeds)
    if len(class_labels) != n:
        raise ValueError(f"got {len(class_labels)} class labels for {n} seeds; give one label per seed")
    check_cfg_scale(cfg_scale)
    check_sampler(sampler, eta)
    labels = torch.as_tensor(list(class_labels), dtype=torch.long)
    if n and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise ValueError(f"class labels must lie in 0..{spec.num_classes - 1} for {spec.name}; got {labels.tolist()}")
    if noise is not None and tuple(noise.shape) != (n, *spec.latent_shape):
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {(n, *spec.latent_shape)}")
    if guide_channels is not None and not 1 <= guide_channels <= spec.in_channels:
        raise ValueError(f"guide_channels={guide_channels} is not an eps channel count of {spec.name}; accepted: "
                         f"1..{spec.in_channels} (learned-variance channels are never guided)")

    policy = method if isinstance(method, Policy) else create_policy(method, method_args)
    diffusion = Diffusion(steps)
    device = torch.device(device)
    model = model.to(device).eval()
    loop = SamplingLoop(model, diffusion, policy, cfg_scale, sampler, eta, device, dtype,
                        default_guide_channels(spec.in_channels) if guide_channels is None else guide_channels,
                        batch_invariant)

    generators = [image_generator(s) for s in seeds]
    start = noise.float() if noise is not None else initial_noise(seeds, spec.latent_shape, generators)
    latents, logs = [], []
    size = batch_size or max(n, 1)
    for lo in range(0, n, size):
        hi = min(lo + size, n)
        x, log = loop.run(start[lo:hi], labels[lo:hi], generators[lo:hi])
        latents.append(x)
        logs.append(log)
    latents = torch.cat(latents) if latents else torch.empty(0, *spec.latent_shape)
    images = decode_latents(latents.to(device), spec.vae, vae_path) if decode else None
    return SampleOutput(images=images, latents=latents, decisions=DecisionLog.concat(logs))


class SamplingLoop:
    """The reverse process for one batch: DiT's `ddim_sample_loop` / `p_sample_loop` with `forward_with_cfg`."""

    def __init__(self, model: nn.Module, diffusion: Diffusion, policy: Policy, cfg_scale: float, sampler: str,
                 eta: float, device: torch.device, dtype: torch.dtype, guide_channels: int, batch_invariant: bool):
        self.model, self.diffusion, self.policy = model, diffusion, policy
        self.cfg_scale, self.sampler, self.eta = cfg_scale, sampler, eta
        self.device, self.dtype = device, dtype
        self.guide_channels = guide_channels
        self.batch_invariant = batch_invariant
        self.use_cfg = cfg_scale > 1.0  # as DiT's sample_ddp.py

    def padded_size(self, n: int) -> int:
        rows_per_image = 2 if self.use_cfg else 1
        if not self.batch_invariant or n * rows_per_image >= MIN_INVARIANT_ROWS:
            return n
        return -(-MIN_INVARIANT_ROWS // rows_per_image)

    @torch.no_grad()
    def run(self, z: torch.Tensor, labels: torch.Tensor, generators: list[torch.Generator]) -> tuple[torch.Tensor, DecisionLog]:
        """Denoises z (n, C, H, W) for labels (n,); returns latents (CPU) and the decision log."""
        n = len(z)
        padded = self.padded_size(n)
        z = torch.cat([z, z[-1:].expand(padded - n, *z.shape[1:])]) if padded > n else z
        labels = torch.cat([labels, labels[-1:].expand(padded - n)]) if padded > n else labels
        x, y = z.to(self.device), labels.to(self.device)
        if self.use_cfg:
            x = torch.cat([x, x])
            y = torch.cat([y, torch.full_like(y, self.model.spec.num_classes)])
        self.policy.start(run_info(self.model, self.diffusion, len(x), self.use_cfg, self.device, real=n))
        for index in reversed(range(self.diffusion.num_timesteps)):
            t = torch.full((len(x),), self.diffusion.timestep_map[index], device=self.device)
            self.policy.begin_step(index)
            out = self.model_output(x, t, y)
            self.policy.end_step()
            x = self.step(out, x, index, generators, padded)
        log = unpad_log(self.policy.finish(), n, padded)
        return x[:n].float().cpu(), log


    def model_output(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            if self.use_cfg:
                out = model_output_with_cfg(self.model, x, t, y, self.cfg_scale, self.guide_channels, self.policy)
            else:
                out = self.model(x, t, y, self.policy)
        return out.float()

    def step(self, out: torch.Tensor, x: torch.Tensor, index: int, generators: list[torch.Generator], padded: int) -> torch.Tensor:
        needs_noise = index > 0 and (self.sampler == "ddpm" or self.eta > 0)
        noise = self.step_noise(x, generators, padded) if needs_noise else None
        if self.sampler == "ddpm":
            return self.diffusion.ddpm_step(out, x, index, noise)
        return self.diffusion.ddim_step(out, x, index, self.eta, noise)

    def step_noise(self, x: torch.Tensor, generators: list[torch.Generator], padded: int) -> torch.Tensor:
        """Per-image step noise; CFG's second half mirrors the first (only the first half is ever read)."""
        shape = x.shape[1:]
        rows = [torch.randn(shape, generator=g) for g in generators]
        rows += [rows[-1]] * (padded - len(rows))
        noise = torch.stack(rows).to(x.device)
        return torch.cat([noise, noise]) if self.use_cfg else noise


def run_info(model: nn.Module, diffusion: Diffusion, batch: int, cfg: bool, device: torch.device,
             real: int | None = None) -> RunInfo:
    """What a policy is told about a sampling call of `batch` model rows (CFG halves included), of which
    `real` images per CFG half are not padding (default: all)."""
    return RunInfo(
        num_steps=diffusion.num_timesteps, timesteps=tuple(diffusion.timestep_map), batch=batch, cfg=cfg,
        depth=model.depth, num_tokens=model.num_tokens, hidden_size=model.config.hidden_size, device=device,
        real=real, model_name=model.spec.name, image_size=model.spec.image_size,
    )


def unpad_log(log: DecisionLog, n: int, padded: int) -> DecisionLog:
    """Drops the rows of padding samples from a decision log."""
    if padded == n:
        return log
    keep = torch.cat([torch.arange(n), torch.arange(padded, padded + n)]) if log.cfg else torch.arange(n)
    return log.select(keep)
