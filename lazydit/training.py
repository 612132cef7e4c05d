"""Lazy learning: training the lazy layers of a frozen DiT (the official recipe, and an all-steps variant).

Official recipe (shawnricecake/lazydit, `lazy_learning_loss`): draw one odd step index t
per batch; x_t = q_sample(x0, t); one full DDIM step (eta 0, no CFG) from x_t fills the
branch caches and gives x_{t-1}; at index t-1 the full model's output is the target and
the lazy model's output blends each branch as score * f(h) + (1 - score) * cache, with
score = sigmoid(sum Linear_{t-1}(h)) per sample; loss = MSE(full, lazy) (all output
channels) + rho_attn * mean_N(sum_blocks attn scores) + rho_mlp * (same for MLP). Labels
are dropped to the null class with probability 0.1 in all three passes; AdamW, lr 1e-4,
no weight decay. Only even-index layers ever train, which caps laziness at 50%.
The all-steps variant (method "lazydit-allsteps") draws t from every index 1..S-1.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, ClassVar, Iterator

import numpy as np
import torch
import torch.nn as nn

from harness.diffusion import Diffusion
from harness.fill_blend import BlendPolicy, draw_index, drop_labels, fill_then_blend, frozen, output_mse
from lazydit.layers import DEFAULT_THRESHOLD, LazyLayers

OFFICIAL, ALL_STEPS = "lazydit", "lazydit-allsteps"  # the method name each recipe's weights serve


@dataclass(frozen=True)
class LazyTrainConfig:
    """Lazy-learning hyper-parameters; defaults are the official recipe except the batch (64 per GPU x 8 there)."""

    steps: int = 50  # sampling step budget the layers serve
    rho_attn: float = 1e-7
    rho_mlp: float = 1e-7
    iters: int = 500
    batch_size: int = 64
    lr: float = 1e-4
    label_dropout: float = 0.1
    all_steps: bool = False  # every step index trainable (method "lazydit-allsteps")
    seed: int = 0

    @property
    def method(self) -> str:
        return ALL_STEPS if self.all_steps else OFFICIAL

    def to_dict(self) -> dict:
        return asdict(self)


#################################################################################
#                                  The loss                                     #
#################################################################################

class SoftLazyPolicy(BlendPolicy):
    """Blends score * f(h) + (1 - score) * cache per sample, the score from the lazy layer of `step`."""

    name: ClassVar[str] = "lazydit-train-blend"

    def __init__(self, layers: LazyLayers, step: int, cache: dict[tuple[int, int], torch.Tensor]):
        super().__init__(cache)
        self.layers, self.step_index = layers, step

    def decision(self, h: torch.Tensor, block: int, kind: int) -> torch.Tensor:
        return self.layers.scores(h, self.step_index, block, kind)  # (N,)

    def score_sums(self, kind: int) -> torch.Tensor:
        """(N,) sum over blocks of the scores of branch type `kind`."""
        return torch.stack(self.scores[kind]).sum(dim=0)


def lazy_learning_loss(model: nn.Module, diffusion: Diffusion, layers: LazyLayers, x0: torch.Tensor, y: torch.Tensor,
                       index: int, rho_attn: float, rho_mlp: float, noise: torch.Tensor,
                       threshold: float = DEFAULT_THRESHOLD) -> dict[str, torch.Tensor]:
    """The official lazy-learning loss at respaced step index `index` (the layers of index - 1 learn).

    Args:
        model: the frozen DiT (call inside `frozen(model)`).
        diffusion: the respaced diffusion of the step budget.
        layers: the lazy layers being trained.
        x0: clean latents (N, C, H, W); y: labels (N,), already label-dropped.
        index: the step index t >= 1 of the full DDIM step that fills the caches.
        rho_attn, rho_mlp: weights of the summed-score penalties.
        noise: the q_sample noise, like x0.
        threshold: only for the reported hard lazy ratio.
    """
    target, pred, lazy = fill_then_blend(model, diffusion, x0, y, index, noise,
                                         lambda cache: SoftLazyPolicy(layers, index - 1, cache))
    mse = output_mse(target, pred)
    attn, mlp = lazy.score_sums(0), lazy.score_sums(1)  # (N,)
    loss = mse + rho_attn * attn.mean() + rho_mlp * mlp.mean()
    with torch.no_grad():
        skipped = [(torch.stack(lazy.scores[k]) < threshold).float().mean() for k in (0, 1)]
    return {"loss": loss, "mse": mse.detach(), "attn_score": attn.mean().detach(), "mlp_score": mlp.mean().detach(),
            "attn_lazy": skipped[0], "mlp_lazy": skipped[1]}


#################################################################################
#                                 Training loop                                 #
#################################################################################

def train_lazy_layers(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], config: LazyTrainConfig,
                      layers: LazyLayers | None = None, on_step: Callable[[int, dict[str, float]], None] | None = None,
                      ) -> tuple[LazyLayers, list[dict[str, float]]]:
    """Trains lazy layers on a frozen DiT; returns them and the per-iteration losses.

    Args:
        model: the DiT (left unchanged).
        batches: an endless iterator of (x0 latents (N, C, H, W), labels (N,)) on the model's device.
        config: the recipe (`LazyTrainConfig`).
        layers: layers to continue training (default: zero-initialised).
        on_step: called with (iteration, metrics) after each update (progress display).
    """
    device = next(model.parameters()).device
    diffusion = Diffusion(config.steps)
    if layers is None:
        layers = LazyLayers(diffusion.num_timesteps, model.depth, model.config.hidden_size)
    layers.check_fits(diffusion.num_timesteps, model.depth, model.config.hidden_size)
    layers = layers.to(device)
    optimizer = torch.optim.AdamW(layers.parameters(), lr=config.lr, weight_decay=0.0)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    null_class = model.config.num_classes
    if config.label_dropout > 0 and model.config.class_dropout_prob <= 0:
        raise ValueError(f"label_dropout={config.label_dropout} needs a null-class embedding, which {model.spec.name} lacks; accepted: 0")
    history = []
    with frozen(model):
        for it in range(config.iters):
            x0, y = next(batches)
            y = drop_labels(y, null_class, config.label_dropout, gen)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            index = draw_index(diffusion.num_timesteps, config.all_steps, rng)
            out = lazy_learning_loss(model, diffusion, layers, x0, y, index, config.rho_attn, config.rho_mlp, noise)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            metrics = {k: float(v.detach()) for k, v in out.items()} | {"index": index}
            history.append(metrics)
            if on_step is not None:
                on_step(it, metrics)
    return layers.cpu(), history
