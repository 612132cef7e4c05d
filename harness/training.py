"""Training the embedded DiTs: DiT's train.py loop on the digits, at a CPU-sized budget.

The loss is guided-diffusion's `training_losses` as DiT configures it (`create_diffusion("")`:
1000 linear-beta steps, epsilon prediction, learned-range sigma, loss type MSE): the MSE
on eps plus the variational-bound term for the variance channels, computed with the eps
prediction detached so the bound trains only the variance. Labels are dropped with
probability 0.1 by the model's own LabelEmbedder (the null class feeds classifier-free
guidance); AdamW without weight decay; an EMA copy of the weights is what ships.
"""
from __future__ import annotations

import copy
import csv
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from harness.cache import atomic_torch_save
from harness.data import load_digits_split
from harness.diffusion import NUM_TRAIN_TIMESTEPS, Diffusion, _at
from harness.models import build_model

LOSS_CSV = "loss.csv"
CHECKPOINT = "checkpoint.pt"
LOSS_COLUMNS = ("step", "loss", "mse", "vb", "lr", "elapsed_s")


@dataclass(frozen=True)
class TrainConfig:
    """One training run of an embedded model."""

    name: str = "embedded/digits-8"
    steps: int = 6000
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    threads: int | None = None
    init_from: str | None = None  # a run's checkpoint.pt to continue from (model and EMA; a fresh optimizer)


#################################################################################
#                    Gaussian-diffusion losses (learned sigma)                  #
#################################################################################

def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp logvar1) || N(mean2, exp logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF that guided-diffusion uses."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log p(x) of [-1, 1] images quantised to 256 levels under a Gaussian, elementwise."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=list(range(1, x.dim())))


def vb_terms_bpd(diffusion: Diffusion, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:
    """Per-sample variational-bound term in bits per dim: KL(q(x_{t-1}|x_t,x0) || p) or, at t = 0, the decoder NLL."""
    c = x0.shape[1]
    eps, var_values = model_output[:, :c], model_output[:, c:]
    true_mean = _at(diffusion.posterior_mean_coef1, t, x0) * x0 + _at(diffusion.posterior_mean_coef2, t, x0) * x_t
    true_log_var = _at(diffusion.posterior_log_variance_clipped, t, x0)
    # Learned range: interpolate between log beta_t and the clipped posterior log variance.
    min_log, max_log = true_log_var, _at(np.log(diffusion.betas), t, x0)
    frac = (var_values + 1) / 2
    model_log_var = frac * max_log + (1 - frac) * min_log
    pred_x0 = _at(diffusion.sqrt_recip_alphas_cumprod, t, x0) * x_t - _at(diffusion.sqrt_recipm1_alphas_cumprod, t, x0) * eps
    model_mean = _at(diffusion.posterior_mean_coef1, t, x0) * pred_x0 + _at(diffusion.posterior_mean_coef2, t, x0) * x_t
    kl = mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / math.log(2.0)
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


def training_losses(model: nn.Module, diffusion: Diffusion, x0: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                    noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """guided-diffusion's `training_losses` for loss type MSE with learned-range sigma: per-sample mse, vb, loss.

    Args:
        model: a learned-sigma DiT in train mode (its LabelEmbedder drops labels).
        diffusion: the unrespaced 1000-step diffusion.
        x0: clean images (N, C, H, W) in [-1, 1]; t: timesteps (N,); y: labels (N,).
        noise: the eps target (default: standard normal).
    """
    noise = torch.randn_like(x0) if noise is None else noise
    x_t = diffusion.q_sample(x0, t, noise)
    out = model(x_t, t, y)  # (N, 2C, H, W)
    c = x0.shape[1]
    # The bound trains only the variance: the mean's eps is detached, as in guided-diffusion.
    frozen = torch.cat([out[:, :c].detach(), out[:, c:]], dim=1)
    vb = vb_terms_bpd(diffusion, frozen, x0, x_t, t)
    mse = mean_flat((noise - out[:, :c]) ** 2)
    return {"loss": mse + vb, "mse": mse, "vb": vb}


#################################################################################
#                                 Training loop                                 #
#################################################################################

@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    ema_params = dict(ema.named_parameters())
    for name, param in model.named_parameters():
        ema_params[name].mul_(decay).add_(param.data, alpha=1 - decay)


class BatchStream:
    """Epoch-wise shuffled minibatches drawn with a seeded generator (DataLoader(shuffle, drop_last) semantics)."""

    def __init__(self, size: int, batch_size: int, generator: torch.Generator):
        if batch_size > size:
            raise ValueError(f"batch_size={batch_size} exceeds the {size} training images; accepted: 1..{size}")
        self.size, self.batch_size, self.generator = size, batch_size, generator
        self.order, self.pos = torch.randperm(size, generator=generator), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.size:
            self.order, self.pos = torch.randperm(self.size, generator=self.generator), 0
        batch = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return batch


def train_embedded(config: TrainConfig, out_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Trains one embedded DiT; writes `loss.csv` and `checkpoint.pt` (model, EMA, summary) to `out_dir`.

    Args:
        config: model name, steps, batch size, lr, EMA decay, seed, logging cadence, threads.
        out_dir: the run folder (created).
        progress: print one line per log interval to stderr.
    Returns the run summary (steps, final loss, wall time, device, data hash, ...).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model = build_model(config.name)
    data = load_digits_split("train", model.spec.image_size)
    if config.init_from:
        previous = torch.load(config.init_from, map_location="cpu", weights_only=True)
        model.load_state_dict(previous["model"])
    ema = copy.deepcopy(model).requires_grad_(False)
    if config.init_from:
        ema.load_state_dict(previous["ema"])
    model.train()
    ema.eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    diffusion = Diffusion(NUM_TRAIN_TIMESTEPS)
    stream = BatchStream(len(data), config.batch_size, torch.Generator().manual_seed(config.seed))

    start, window, final_loss = time.perf_counter(), [], float("nan")
    with open(out / LOSS_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LOSS_COLUMNS)
        for step in range(1, config.steps + 1):
            idx = stream.next()
            x0, y = data.images[idx], data.labels[idx]
            t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (len(idx),))
            losses = training_losses(model, diffusion, x0, t, y)
            loss = losses["loss"].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            update_ema(ema, model, config.ema_decay)
            window.append([loss.item(), losses["mse"].mean().item(), losses["vb"].mean().item()])
            if step % config.log_every == 0 or step == config.steps:
                mean = np.mean(window, axis=0)
                elapsed = time.perf_counter() - start
                writer.writerow([step, f"{mean[0]:.6f}", f"{mean[1]:.6f}", f"{mean[2]:.6f}", config.lr, f"{elapsed:.1f}"])
                handle.flush()
                if progress:
                    print(f"[{config.name}] step {step}/{config.steps} loss {mean[0]:.4f} mse {mean[1]:.4f} "
                          f"vb {mean[2]:.4f} {elapsed:.0f}s", file=sys.stderr, flush=True)
                final_loss, window = float(mean[0]), []
            if step % config.checkpoint_every == 0 or step == config.steps:
                summary = run_summary(config, step, final_loss, time.perf_counter() - start, data.data_hash)
                atomic_torch_save({"model": model.state_dict(), "ema": ema.state_dict(), "summary": summary}, out / CHECKPOINT)
    return summary


def default_run_dir(name: str) -> Path:
    """<harness cache>/runs/<short name> ($HARNESS_CACHE_DIR, default ~/.cache/lazydit-harness)."""
    from harness.cache import cache_root

    return cache_root() / "runs" / name.split("/")[-1]


def run_summary(config: TrainConfig, step: int, final_loss: float, wall_s: float, data_hash: str) -> dict:
    """What the zoo manifest records about a run."""
    import platform

    return {
        "config": asdict(config), "steps": step, "final_loss": round(final_loss, 6), "wall_time_s": round(wall_s, 1),
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": str(torch.__version__), "data_hash": data_hash,
    }
