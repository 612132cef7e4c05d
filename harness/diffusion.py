"""Gaussian diffusion as DiT uses it: linear betas, respacing, DDIM / DDPM steps, CFG.

Equal to guided-diffusion (Nichol & Dhariwal) under DiT's `create_diffusion`: 1000
linear-beta steps, epsilon prediction, learned-range variance, no clipping. Schedule
arrays are float64 (numpy), as in the reference; each step multiplies float32 tensors
by float64 coefficients read at the step's index.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np
import torch

from harness.methods import Policy

NUM_TRAIN_TIMESTEPS = 1000


def linear_betas(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """Ho et al.'s linear schedule, rescaled so that any step count spans the same range."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: str | int | list[int]) -> list[int]:
    """The original timesteps kept when respacing, ascending.

    `section_counts` is an int N (N evenly strided steps, rounding fractional strides,
    as `create_diffusion(str(N))` does in DiT), a comma list "10,15,20" (one count per
    equal section), or "ddimN" (the fixed integer stride of the DDIM paper).
    """
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    elif isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {desired} steps with an integer stride from {num_timesteps}")
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, kept = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(f"cannot divide a section of {size} steps into {count}; accepted: 1..{size}")
        stride = 1.0 if count == 1 else (size - 1) / (count - 1)
        position = 0.0  # a running float sum, as the reference: round(stride * j) differs for 278 of N = 1..1000
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def parse_steps(steps: int | str) -> int | str:
    """Validates a step budget: a positive int, "ddimN" or a comma list of section counts."""
    if isinstance(steps, bool) or not isinstance(steps, (int, str)):
        raise ValueError(f"steps must be an int or a string like 'ddim50'; got {steps!r}")
    if isinstance(steps, str) and not re.fullmatch(r"ddim\d+|\d+(,\d+)*", steps):
        raise ValueError(f"steps={steps!r} is not a step budget; accepted: an int, 'ddimN' or section counts "
                         "like '10,15,20'")
    if isinstance(steps, str) and steps.isdigit():
        steps = int(steps)
    if isinstance(steps, int) and not 1 <= steps <= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"steps={steps} is out of range; accepted: 1..{NUM_TRAIN_TIMESTEPS}")
    return steps


class Diffusion:
    """A respaced Gaussian diffusion; index i runs over the kept timesteps in ascending order."""

    def __init__(self, steps: int | str = NUM_TRAIN_TIMESTEPS, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
        base_alphas_cumprod = np.cumprod(1.0 - linear_betas(num_train_timesteps))
        self.timestep_map = space_timesteps(num_train_timesteps, parse_steps(steps))
        # Respaced betas keep alpha_bar at every kept timestep: 1 - abar_t / abar_{previous kept}.
        kept = base_alphas_cumprod[self.timestep_map]
        betas = 1.0 - kept / np.append(1.0, kept[:-1])
        self._set_schedule(betas)

    def _set_schedule(self, betas: np.ndarray) -> None:
        self.betas = betas
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, posterior_variance)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The variance is 0 at t = 0; the log takes the value of t = 1 there (never read with a single step).
        self.posterior_log_variance_clipped = (
            np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:])) if len(betas) > 1 else np.array([])
        )
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # ---- forward process -------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, index: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, for per-sample step indices (N,)."""
        return _at(self.sqrt_alphas_cumprod, index, x0) * x0 + _at(self.sqrt_one_minus_alphas_cumprod, index, x0) * noise

    def model_timesteps(self, index: torch.Tensor) -> torch.Tensor:
        """The original timesteps the model is conditioned on, for respaced indices."""
        return torch.as_tensor(self.timestep_map, device=index.device)[index]

    # ---- reverse process --------------------------------------------------------------
    def predict_xstart(self, model_output: torch.Tensor, x: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 prediction, eps) from the model's eps channels: x0 = x / sqrt(abar) - sqrt(1/abar - 1) eps."""
        eps = model_output[:, : x.shape[1]]
        x0 = self.sqrt_recip_alphas_cumprod[index] * x - self.sqrt_recipm1_alphas_cumprod[index] * eps
        return x0, eps

    def log_variance(self, model_output: torch.Tensor, x: torch.Tensor, index: int) -> torch.Tensor:
        """Learned-range variance: interpolate log beta_t and the clipped posterior log variance."""
        min_log = self.posterior_log_variance_clipped[index]
        if model_output.shape[1] == x.shape[1]:  # no learned sigma: the fixed small variance
            return torch.full_like(x, min_log)
        frac = (model_output[:, x.shape[1]:] + 1) / 2
        return frac * np.log(self.betas[index]) + (1 - frac) * min_log

    def ddim_step(self, model_output: torch.Tensor, x: torch.Tensor, index: int, eta: float = 0.0,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z (Song et al., eq. 12)."""
        x0, _ = self.predict_xstart(model_output, x, index)
        eps = (self.sqrt_recip_alphas_cumprod[index] * x - x0) / self.sqrt_recipm1_alphas_cumprod[index]
        abar, abar_prev = self.alphas_cumprod[index], self.alphas_cumprod_prev[index]
        sigma = eta * np.sqrt((1 - abar_prev) / (1 - abar)) * np.sqrt(1 - abar / abar_prev)
        x_prev = x0 * np.sqrt(abar_prev) + np.sqrt(1 - abar_prev - sigma**2) * eps
        if index > 0 and sigma > 0:
            x_prev = x_prev + sigma * noise
        return x_prev

    def ddpm_step(self, model_output: torch.Tensor, x: torch.Tensor, index: int, noise: torch.Tensor) -> torch.Tensor:
        """Ancestral step: x_{t-1} = posterior mean(x0, x_t) + exp(log_var / 2) z (no noise at t = 0)."""
        x0, _ = self.predict_xstart(model_output, x, index)
        mean = self.posterior_mean_coef1[index] * x0 + self.posterior_mean_coef2[index] * x
        if index == 0:
            return mean
        return mean + torch.exp(0.5 * self.log_variance(model_output, x, index)) * noise


def _at(array: np.ndarray, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """array[index] as a float32 tensor broadcastable against `like`, (N, 1, 1, 1)."""
    values = torch.from_numpy(array).to(like.device)[index].float()
    return values.view(-1, *([1] * (like.dim() - 1)))


def default_guide_channels(in_channels: int) -> int:
    """DiT guides only 3 of the 4 latent eps channels (its reference quirk); other models guide all."""
    return 3 if in_channels == 4 else in_channels


def model_output_with_cfg(model: Callable, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float,
                          guide_channels: int, policy: Policy) -> torch.Tensor:
    """DiT's `forward_with_cfg`: both halves see the first half's x; guided eps is copied to both.

    y holds the class labels in the first half and the null label in the second;
    eps = eps_uncond + s (eps_cond - eps_uncond) on the first `guide_channels` channels.
    """
    half = x[: len(x) // 2]
    out = model(torch.cat([half, half], dim=0), t, y, policy)
    eps, rest = out[:, :guide_channels], out[:, guide_channels:]
    cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
    half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)
