"""Learning-to-Cache router training (`python -m harness train l2c`): the official recipe on a frozen DiT.

Official code: horseee/learning-to-cache, commit d6cc781 (`DiT/train_router.py`,
`DiT/models/router_models.py`, `gaussian_diffusion.router_training_losses`). Per iteration
one odd step index t is drawn for the whole batch; x_t = q_sample(x0, t); one full DDIM
step (eta 0, no CFG) fills the branch caches and gives x_{t-1}; at index t-1 the full
model's output is the target and the routed model blends every branch as
s * fresh + (1 - s) * cached with s = sigmoid(router_{t-1}); loss = MSE over all output
channels + lambda * sum(s). Labels are dropped to the null class with probability 0.1 in
all three passes; AdamW (lr 1e-3, no weight decay) on the routers only; after each step the
logits are clamped to [-5, 5]. One router per step index, randn-initialised; each is its
own parameter, so (as in the official single-process run) an unsampled router gets no
gradient and no Adam step. The shared fill-then-blend recipe is `harness.fill_blend`.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, ClassVar, Iterator

import numpy as np
import torch
import torch.nn as nn

from baselines.l2c import DEFAULT_THRESHOLD, METHOD, check_even_steps, save_routers, skip_ratio
from harness.commands import example_formatter
from harness.commands.train import TRAINERS
from harness.diffusion import Diffusion
from harness.fill_blend import (BlendPolicy, draw_index, drop_labels, fill_then_blend, frozen, output_mse,
                                progress_printer)

README_LAMBDA = {50: 1e-6, 20: 5e-6, 10: 1e-6}  # the official README's lambda for DiT-XL/2 at 256, by step count
DATA_SOURCES = ("digits", "latents:PATH", "imagefolder:PATH", "random")  # lazydit.data.training_batches


@dataclass(frozen=True)
class L2CTrainConfig:
    """Router-training hyper-parameters; defaults are the official recipe except the iterations (~20-40k there)."""

    steps: int = 50  # the sampling step budget the routers serve (even)
    lam: float | None = None  # weight of sum(sigmoid(logits)); None: the README's value for `steps`
    iters: int = 1000
    batch_size: int = 64  # the official global batch (8 per GPU x 8)
    lr: float = 1e-3
    label_dropout: float = 0.1
    clamp: float = 5.0
    seed: int = 0

    @property
    def penalty(self) -> float:
        if self.lam is not None:
            return self.lam
        if self.steps not in README_LAMBDA:
            raise ValueError(f"no official lambda for {self.steps} steps (the README gives "
                             f"{', '.join(f'{n}: {v:g}' for n, v in README_LAMBDA.items())}); pass --lam")
        return README_LAMBDA[self.steps]

    def check(self) -> None:
        """Every value, checked before any work."""
        for name, value in (("--steps-budget", self.steps), ("--iters", self.iters), ("--batch-size", self.batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        check_even_steps(self.steps)
        for name, value, low in (("--lam", self.penalty, 0.0), ("--lr", self.lr, None), ("--clamp", self.clamp, None)):
            if not math.isfinite(value) or (value < low if low is not None else value <= 0):
                raise ValueError(f"{name}={value!r} is out of range; accepted: a finite number "
                                 f"{'>= 0' if low is not None else '> 0'}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"--label-dropout={self.label_dropout!r} is out of range; accepted: 0 <= p < 1")

    def to_dict(self) -> dict:
        return asdict(self) | {"lam": self.penalty}


#################################################################################
#                                  The loss                                     #
#################################################################################

class RouterBlendPolicy(BlendPolicy):
    """Blends s * f(h) + (1 - s) * cache per branch, s = sigmoid of the router entry of that branch."""

    name: ClassVar[str] = "l2c-train-blend"

    def __init__(self, router: torch.Tensor, cache: dict[tuple[int, int], torch.Tensor]):
        super().__init__(cache)
        self.s = torch.sigmoid(router)  # (2 * depth,): entry 2b is block b's attention, 2b + 1 its MLP

    def decision(self, h: torch.Tensor, block: int, kind: int) -> torch.Tensor:
        return self.s[2 * block + kind]


def router_loss(model: nn.Module, diffusion: Diffusion, router: torch.Tensor, x0: torch.Tensor, y: torch.Tensor,
                index: int, lam: float, noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """The official router loss at step index `index` - 1 (caches filled at `index`); `router` is that step's logits.

    Args:
        model: the frozen DiT (call inside `frozen(model)`).
        diffusion: the respaced diffusion of the step budget.
        router: (2 * depth,) logits of the router of step index `index` - 1.
        x0: clean latents (N, C, H, W); y: labels (N,), already label-dropped.
        index: the odd step index t of the full DDIM step that fills the caches.
        lam: weight of sum(sigmoid(router)).
        noise: the q_sample noise, like x0.
    """
    target, pred, blend = fill_then_blend(model, diffusion, x0, y, index, noise,
                                          lambda cache: RouterBlendPolicy(router, cache))
    mse = output_mse(target, pred)
    scores = blend.s.sum()
    with torch.no_grad():
        skipped = (blend.s <= DEFAULT_THRESHOLD).float().mean()
    return {"loss": mse + lam * scores, "mse": mse.detach(), "score_sum": scores.detach(), "skipped": skipped}


#################################################################################
#                                 Training loop                                 #
#################################################################################

def init_routers(num_steps: int, depth: int, seed: int) -> nn.ParameterList:
    """One randn-initialised router of 2 * depth logits per step index (official `Router`)."""
    gen = torch.Generator().manual_seed(seed)
    return nn.ParameterList([nn.Parameter(torch.randn(2 * depth, generator=gen)) for _ in range(num_steps)])


def train_routers(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], config: L2CTrainConfig,
                  on_step: Callable[[int, dict[str, float]], None] | None = None,
                  ) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """Trains routers on a frozen DiT; returns the (N, 2 * depth) logits and the per-iteration metrics.

    Args:
        model: the DiT (left unchanged).
        batches: an endless iterator of (x0 (N, C, H, W), labels (N,)) on the model's device.
        config: the recipe (`L2CTrainConfig`).
        on_step: called with (iteration, metrics) after each update (progress display).
    """
    config.check()
    if config.label_dropout > 0 and model.config.class_dropout_prob <= 0:
        raise ValueError(f"label_dropout={config.label_dropout} needs a null-class embedding, which "
                         f"{model.spec.name} lacks; accepted: 0")
    device = next(model.parameters()).device
    diffusion = Diffusion(config.steps)
    routers = init_routers(config.steps, model.depth, config.seed).to(device)
    optimizer = torch.optim.AdamW(routers.parameters(), lr=config.lr, weight_decay=0.0)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    history = []
    with frozen(model):
        for it in range(config.iters):
            x0, y = next(batches)
            y = drop_labels(y, model.config.num_classes, config.label_dropout, gen)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            index = draw_index(config.steps, False, rng)  # odd: the routed step index - 1 is even
            out = router_loss(model, diffusion, routers[index - 1], x0, y, index, config.penalty, noise)
            optimizer.zero_grad(set_to_none=True)  # only the sampled router has a gradient, so only it steps
            out["loss"].backward()
            optimizer.step()
            with torch.no_grad():
                for router in routers:
                    router.clamp_(-config.clamp, config.clamp)
            metrics = {k: float(v.detach()) for k, v in out.items()} | {"index": index}
            history.append(metrics)
            if on_step is not None:
                on_step(it, metrics)
    return torch.stack([r.detach().cpu() for r in routers]), history


def train_to_file(model_name: str, out: str, config: L2CTrainConfig, data: str = "digits", checkpoint: str | None = None,
                  image_size: int | None = None, device: str = "cpu", vae_path: str | None = None,
                  quiet: bool = False) -> dict:
    """Trains routers and writes them in the official layout with their identity and recipe; returns a summary.

    Args:
        model_name, checkpoint, image_size: the frozen DiT (see `harness.load_model`).
        out: the router file to write.
        config: the recipe.
        data: a `lazydit.data.training_batches` source ("digits" for the embedded models).
        device: where training runs; vae_path: local VAE for imagefolder data.
        quiet: no progress on stderr.
    """
    from harness.inputs import check_readable, check_writable, file_identity
    from harness.models import load_model
    from lazydit.data import training_batches

    config.check()
    kind, _, path = data.partition(":")
    if f"{kind}:PATH" in DATA_SOURCES and path:
        check_readable(path, "--data")
    elif kind not in DATA_SOURCES:
        raise ValueError(f"unknown training data source {data!r}; accepted: {', '.join(DATA_SOURCES)}")
    check_writable(out, "--out")
    model = load_model(model_name, checkpoint, image_size=image_size).to(device)
    batches = training_batches(model, data, config.batch_size, config.seed, device, vae_path)
    start = time.perf_counter()
    logits, history = train_routers(model, batches, config, on_step=None if quiet else progress_printer(
        config.iters, lambda m: f"router {m['index'] - 1} skips {m['skipped']:.0%}", every=50))
    seconds = time.perf_counter() - start
    ratio = skip_ratio(logits, DEFAULT_THRESHOLD)
    save_routers(logits, out, **file_identity(model, config.steps, METHOD), args=config.to_dict(),
                 threshold=DEFAULT_THRESHOLD, skip_ratio=ratio)
    tail = history[-20:]
    return {"method": METHOD, "model": model.spec.name, "router": out, "steps": config.steps,
            "threshold": DEFAULT_THRESHOLD, "skip_ratio": round(ratio, 4), "train_seconds": round(seconds, 1),
            "final_loss": sum(h["loss"] for h in tail) / len(tail), "final_mse": sum(h["mse"] for h in tail) / len(tail),
            "args": config.to_dict()}


#################################################################################
#                                 Command line                                  #
#################################################################################

EXAMPLES = """examples:
  python -m harness train l2c --model embedded/digits-8 --steps-budget 10 --lam 1e-3 --lr 1e-2 --iters 1000 --threads 1 --out routers.pt
  python -m harness train l2c --model DiT-XL/2 --checkpoint DiT-XL-2-256x256.pt --image-size 256 --steps-budget 50 \\
      --data imagefolder:/data/imagenet/train --iters 40000 --out DDIM50_router.pt"""


@TRAINERS.register(METHOD)
def add_parser(trainers: argparse._SubParsersAction) -> None:
    d = L2CTrainConfig()
    p = trainers.add_parser(METHOD, help="train Learning-to-Cache routers on a frozen DiT", epilog=EXAMPLES,
                            formatter_class=example_formatter)
    p.add_argument("--model", required=True, help="model name, e.g. embedded/digits-8 or DiT-XL/2")
    p.add_argument("--checkpoint", default=None, help="official DiT .pt (not needed for embedded models)")
    p.add_argument("--image-size", type=int, default=None, help="decoded image size (default: from the checkpoint)")
    p.add_argument("--steps-budget", type=int, required=True, help="sampling steps the routers serve (even)")
    p.add_argument("--lam", type=float, default=None,
                   help="weight of sum(sigmoid(logits)) (default: the official README's: "
                        f"{', '.join(f'{v:g} at {n} steps' for n, v in README_LAMBDA.items())}; others must pass it)")
    p.add_argument("--iters", type=int, default=d.iters, help="optimizer steps (default: %(default)s; official ~20-40k)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--label-dropout", type=float, default=d.label_dropout, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    p.add_argument("--data", default="digits", help=f"{' | '.join(DATA_SOURCES)} (default: %(default)s)")
    p.add_argument("--vae-path", default=None, help="local VAE folder (imagefolder data)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch default when omitted)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--out", required=True, help="router file to write (official DDIM{N}_router.pt layout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = L2CTrainConfig(steps=args.steps_budget, lam=args.lam, iters=args.iters, batch_size=args.batch_size,
                            lr=args.lr, label_dropout=args.label_dropout, seed=args.seed)
    config.check()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    summary = train_to_file(args.model, args.out, config, args.data, args.checkpoint, args.image_size, args.device,
                            args.vae_path, args.quiet)
    print(json.dumps(summary | {"command": getattr(args, "command_line", None)}))
    return 0
