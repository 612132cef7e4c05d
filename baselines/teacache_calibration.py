"""`harness calibrate teacache`: fit TeaCache's rescaling polynomial on full-compute runs.

As the TeaCache authors describe it (ali-vilab/TeaCache issue #2): run the full model, record for
every pair of consecutive steps x = the relative L1 change of block 0's modulated input and
y = the relative L1 change of the model output, and fit `np.polyfit(x, y, 4)`. Both statistics are
pooled over the real [cond; uncond] rows of a batch, exactly as inference pools delta, with the
previous step as the reference (denominator). The model output is the raw network output before
guidance (all channels, learned variance included), as TeaCache's "model output". The file is JSON
(no pickling): the coefficients, what they were fitted for (checked when loaded), the raw pairs, the
fit's residual and provenance.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Callable

import numpy as np
import torch

from harness.cache import atomic_write_json
from harness.commands import example_formatter
from harness.commands.train import CALIBRATORS
from harness.methods import ATTN, Policy, RunInfo
from baselines.teacache import CALIBRATION_FORMAT, relative_l1

EXAMPLES = """examples:
  python -m harness calibrate teacache --model embedded/digits-8 --steps 25 --images 64 --out baselines/zoo/teacache-digits-8-ddim25.json
  python -m harness calibrate teacache --model DiT-XL/2 --checkpoint DiT-XL-2-256x256.pt --steps 50 --images 100 --batch-size 25 --out teacache-xl-50.json"""


class TeaCacheRecorder(Policy):
    """Computes everything (plain DDIM) and records, per step after the first, the pooled statistics."""

    def __init__(self):
        super().__init__()
        self.pairs: list[tuple[int, float, float]] = []  # (sampling order j, x, y) over every batch

    def start(self, run: RunInfo) -> None:
        super().start(run)
        self.previous_input: torch.Tensor | None = None
        self.previous_output: torch.Tensor | None = None
        self.x = float("nan")

    def forward(self, model, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        out = compute()
        pooled = self.run.pool(out)
        if self.previous_output is not None:
            self.pairs.append((self.run.num_steps - 1 - self.step, self.x, relative_l1(pooled, self.previous_output).item()))
        self.previous_output = pooled
        return out

    def run_blocks(self, model, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        m = self.run.pool(model.branch_input(0, ATTN, x, c)())
        if self.previous_input is not None:
            self.x = relative_l1(m, self.previous_input).item()
        self.previous_input = m
        return super().run_blocks(model, x, c)


def record_pairs(model: torch.nn.Module, labels: list[int], seeds: list[int], steps: int, cfg_scale: float,
                 batch_size: int, device: str = "cpu") -> list[tuple[int, float, float]]:
    """(j, x, y) for every step j >= 1 of every batch of a full-compute DDIM run."""
    from harness import sample

    recorder = TeaCacheRecorder()
    sample(model, labels, seeds, steps=steps, cfg_scale=cfg_scale, method=recorder, decode=False,
           batch_size=batch_size, device=device)
    return recorder.pairs


def fit_polynomial(x: np.ndarray, y: np.ndarray) -> tuple[list[float], float]:
    """The degree-4 least-squares fit y ~ poly(x) (np.poly1d order) and its root-mean-square residual."""
    if len(x) < 5:
        raise ValueError(f"a degree-4 fit needs at least 5 (x, y) pairs; got {len(x)} (give more --images or --steps)")
    coefficients = np.polyfit(x, y, 4)
    residual = float(np.sqrt(np.mean((np.poly1d(coefficients)(x) - y) ** 2)))
    return [float(a) for a in coefficients], residual


def calibrate_to_file(model_name: str, out: str, steps: int, images: int, cfg_scale: float, batch_size: int,
                      seed: int = 1000, checkpoint: str | None = None, image_size: int | None = None,
                      device: str = "cpu", command: str | None = None) -> dict[str, Any]:
    """Records the pairs, fits the polynomial and writes the calibration file atomically; returns its summary.

    Args:
        model_name, checkpoint, image_size: the model (see `harness.load_model`).
        out: the JSON file to write.
        steps: DDIM steps (TeaCache's decisions and so its polynomial depend on them).
        images: calibration images; image i has class i mod num_classes and seed image_seed(seed, i),
            a seed set apart from the suites' (0, 1) so the evaluation images are not the calibration ones.
        cfg_scale: guidance scale (the batch holds [cond; uncond] when > 1, as at inference).
        batch_size: images per model call; each batch gives one pair per step, pooled like inference pools.
    """
    from harness.models import load_model
    from harness.provenance import git_state, sha256_file
    from harness.suite import image_seed

    model = load_model(model_name, checkpoint, image_size=image_size).to(device).eval()
    labels = [i % model.spec.num_classes for i in range(images)]
    seeds = [image_seed(seed, i) for i in range(images)]
    pairs = record_pairs(model, labels, seeds, steps, cfg_scale, batch_size, device)
    x, y = np.array([p[1] for p in pairs]), np.array([p[2] for p in pairs])
    coefficients, residual = fit_polynomial(x, y)
    data = {
        "format": CALIBRATION_FORMAT, "version": 1, "method": "teacache",
        "model": model.spec.name, "image_size": model.spec.image_size, "steps": steps, "sampler": "ddim",
        "cfg_scale": cfg_scale, "images": images, "batch_size": batch_size, "seed_set": seed, "seeds": seeds,
        "labels": "i mod num_classes", "coefficients": coefficients, "fit_rmse": residual,
        "statistic": "relative L1 to the previous step over the real [cond; uncond] rows of a batch: "
                     "x of block 0's modulated attention input, y of the model output before guidance",
        "pairs": {"step": [p[0] for p in pairs], "x": x.tolist(), "y": y.tolist()},
        "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
        "git_commit": git_state()["git_commit"], "torch": torch.__version__, "command": command,
    }
    atomic_write_json(out, data)
    return {"out": out, "model": data["model"], "steps": steps, "pairs": len(pairs), "coefficients": coefficients,
            "fit_rmse": residual}


@CALIBRATORS.register("teacache")
def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("teacache", help="fit TeaCache's rescaling polynomial on full-compute runs",
                       formatter_class=example_formatter, epilog=EXAMPLES)
    p.add_argument("--model", required=True, help="model name, e.g. embedded/digits-8 or DiT-XL/2")
    p.add_argument("--checkpoint", default=None, help="official DiT .pt (not needed for embedded models)")
    p.add_argument("--image-size", type=int, default=None, help="decoded image size (default: from the checkpoint)")
    p.add_argument("--steps", type=int, required=True, help="DDIM steps the calibration serves")
    p.add_argument("--images", type=int, default=64, help="calibration images (class i mod num_classes)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch: one pooled pair per step and batch")
    p.add_argument("--cfg-scale", type=float, default=1.5, help="guidance scale, as in the suites")
    p.add_argument("--seed", type=int, default=1000, help="seed set of the calibration images (suites use 0, 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch default when omitted)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.set_defaults(func=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    summary = calibrate_to_file(args.model, args.out, args.steps, args.images, args.cfg_scale, args.batch_size,
                                args.seed, args.checkpoint, args.image_size, args.device,
                                command=getattr(args, "command_line", None))
    print(json.dumps(summary))
    return 0
