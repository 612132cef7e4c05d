"""Sample grids and domain metrics of the embedded models (writes results/embedded/*).

    python results/embedded/make_report.py                    # shipped zoo models, full table
    python results/embedded/make_report.py --grid-only --checkpoint embedded/digits-8=RUN/checkpoint.pt

Grids: rows = classes 0..9, DDIM-50, cfg 1.5 (DiT's FID scale), seeds 0..9 per row. Metrics: for each
DDIM budget, `--num-samples` images (labels i % 10) per seed set, domain FID / KID / PR against the
reference digits (harness/metrics/domain_sets.py) and conditional accuracy; the spread is over `--seed-sets`
disjoint seed sets. The floor row scores as many disjoint sets of real floor digits (seed sets x samples <= 721).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from harness import load_model, sample
from harness.metrics.domain import DOMAIN_ACCURACY, DOMAIN_FID, DOMAIN_KID, DOMAIN_PRECISION, DOMAIN_RECALL, domain_metrics
from harness.models.zoo import EMBEDDED_ARCHS

OUT = Path(__file__).resolve().parent
GRID_PIXELS = 32  # each digit is enlarged (nearest) to this size in the PNG
SEED_SET_STRIDE = 100_000


def load(name: str, checkpoint: str | None):
    return load_model(name, checkpoint, image_size=EMBEDDED_ARCHS[name]["input_size"]) if checkpoint else load_model(name)


def save_grid(images: np.ndarray, rows: int, path: Path) -> None:
    """uint8 (rows * cols, H, W, 1) -> one PNG, row r = images[r * cols:(r + 1) * cols], 2 px gaps."""
    cols, size = len(images) // rows, images.shape[1]
    scale = max(1, GRID_PIXELS // size)
    cell = size * scale + 2
    canvas = np.full((rows * cell + 2, cols * cell + 2), 128, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        big = np.kron(img[..., 0], np.ones((scale, scale), dtype=np.uint8))
        canvas[2 + r * cell:2 + r * cell + size * scale, 2 + c * cell:2 + c * cell + size * scale] = big
    Image.fromarray(canvas).save(path)


def make_grid(model, name: str, steps: int, cfg: float, suffix: str = "") -> Path:
    labels = [c for c in range(10) for _ in range(10)]
    seeds = list(range(100))
    out = sample(model, class_labels=labels, seeds=seeds, steps=steps, cfg_scale=cfg)
    path = OUT / f"{name.split('/')[-1]}-ddim{steps}-cfg{cfg:g}{suffix}.png"
    save_grid(out.images, 10, path)
    return path


def evaluate(model, name: str, budgets: list[int], cfg: float, n: int, seed_sets: int) -> dict:
    labels = [i % 10 for i in range(n)]
    table = {}
    for steps in budgets:
        runs = []
        for s in range(seed_sets):
            start = time.perf_counter()
            out = sample(model, class_labels=labels, seeds=[s * SEED_SET_STRIDE + i for i in range(n)], steps=steps, cfg_scale=cfg)
            metrics = domain_metrics(out.images, name, labels=labels, replicates=0)
            metrics["sample_s"] = round(time.perf_counter() - start, 1)
            runs.append(metrics)
            print(f"{name} ddim{steps} seedset{s}: fid {metrics[DOMAIN_FID]:.1f} acc {metrics[DOMAIN_ACCURACY]:.3f}", file=sys.stderr, flush=True)
        keys = (DOMAIN_FID, DOMAIN_KID, DOMAIN_PRECISION, DOMAIN_RECALL, DOMAIN_ACCURACY)
        table[f"ddim{steps}"] = {k: {"mean": float(np.mean([r[k] for r in runs])), "std": float(np.std([r[k] for r in runs])),
                                     "values": [r[k] for r in runs]} for k in keys}
    return table


def real_floor(name: str, n: int, seed_sets: int) -> dict:
    """The same metrics for disjoint sets of n real floor digits (never seen by the classifier, disjoint from the
    reference): what a perfect model would score."""
    from harness.metrics.domain import floor_metrics

    runs = [floor_metrics(name, n, s, replicates=0) for s in range(seed_sets)]
    return {k: {"mean": float(np.mean([r[k] for r in runs])), "std": float(np.std([r[k] for r in runs]))}
            for k in (DOMAIN_FID, DOMAIN_KID, DOMAIN_PRECISION, DOMAIN_RECALL, DOMAIN_ACCURACY)}


def markdown_table(report: dict) -> str:
    """One row per model and budget: mean +- std over the seed sets."""
    keys = (DOMAIN_FID, DOMAIN_KID, DOMAIN_PRECISION, DOMAIN_RECALL, DOMAIN_ACCURACY)
    head = "| model | sampler | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 2) + "\n"
    rows = []
    for name, table in report["models"].items():
        for budget, cells in table.items():
            values = " | ".join(f"{cells[k]['mean']:.3g} +- {cells[k]['std']:.2g}" for k in keys)
            rows.append(f"| {name} | {budget} | {values} |")
    return head + "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=sorted(EMBEDDED_ARCHS))
    parser.add_argument("--checkpoint", action="append", default=[], help="NAME=PATH: evaluate a run's checkpoint instead")
    parser.add_argument("--budgets", type=int, nargs="+", default=[5, 10, 25, 50])
    parser.add_argument("--cfg", type=float, default=1.5)
    parser.add_argument("--num-samples", type=int, default=240)
    parser.add_argument("--seed-sets", type=int, default=3)
    parser.add_argument("--grid-only", action="store_true")
    parser.add_argument("--suffix", default="")
    args = parser.parse_args()
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    report = {"cfg_scale": args.cfg, "num_samples": args.num_samples, "seed_sets": args.seed_sets, "models": {}}
    for name in args.models:
        model = load(name, checkpoints.get(name))
        print(f"grid: {make_grid(model, name, 50, args.cfg, args.suffix)}", file=sys.stderr)
        if not args.grid_only:
            table = {"real floor digits": real_floor(name, args.num_samples, args.seed_sets)}
            table.update(evaluate(model, name, args.budgets, args.cfg, args.num_samples, args.seed_sets))
            report["models"][name] = table
    if not args.grid_only:
        (OUT / f"metrics{args.suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
        (OUT / f"metrics{args.suffix}.md").write_text(markdown_table(report))
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
