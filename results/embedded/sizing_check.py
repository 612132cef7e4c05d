"""The sizing check behind the embedded evaluation: does the domain metric resolve DDIM-25 vs DDIM-50 and a
~35%-lazy LazyDiT vs DDIM-25 (paired bootstrap over images), where does the real-data floor lie, and does it
rank approximations at or below full compute?

    python results/embedded/sizing_check.py --num-samples 512      # about 15 minutes on 2 quiet cores

Samples seeds 0..N-1 (labels i % 10), cfg 1.5, per embedded model: DDIM-10 / 20 / 25 / 50, LazyDiT (rho 1e-4
layers, threshold 0.5, 25 steps) and the cached settings that scored better than DDIM-50 in the unwhitened
space (TaylorSeer interval 6, Delta-DiT interval 4, AB-Cache interval 8). Then, for the shipped feature space
(32 whitened principal axes) and the unwhitened one it replaced, prints each setting's domain FID and KID,
its paired difference with DDIM-50, and the two reference differences, at the first 256 and N images, with
95% intervals (* = excludes zero) and the floor of the same size. Not a suite: a standalone check of the
metric's resolving power (the `methods` suite measures the same on its own seeds).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from harness import bootstrap, load_model, sample
from harness.metrics import domain
from harness.metrics.feature_stats import frechet_distance, kernel_distance

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_PAIRS = (("ddim25", "ddim50"), ("lazy-rho1e-4", "ddim25"))
SPACES = {"whitened (shipped)": True, "unwhitened (before)": False}


def settings(short: str) -> dict[str, tuple[str, int, dict]]:
    lazy = {"weights": str(ROOT / f"lazydit/zoo/{short}-ddim25-rho1e-4.pt"), "threshold": 0.5}
    return {"ddim10": ("ddim", 10, {}), "ddim20": ("ddim", 20, {}), "ddim25": ("ddim", 25, {}), "ddim50": ("ddim", 50, {}),
            "lazy-rho1e-4": ("lazydit", 25, lazy), "taylorseer-i6": ("taylorseer", 50, {"interval": 6}),
            "delta-dit-i4": ("delta-dit", 50, {"interval": 4}), "ab-cache-i8": ("ab-cache", 50, {"interval": 8})}


def paired(stats: dict, a: str, b: str, metric: str) -> str:
    (point_a, reps_a), (point_b, reps_b) = stats[a][metric], stats[b][metric]
    d = bootstrap.interval(point_a - point_b, reps_a - reps_b)
    return f"{d.value:+.4g} [{d.low:+.4g}, {d.high:+.4g}]{'*' if d.significant else ''}"


def report(short: str, images: dict[str, np.ndarray], resolution: int, size: int, whiten: bool) -> None:
    counts = bootstrap.resample_counts(size)
    reference = domain.reference_set(resolution, whiten=whiten)
    stats = {}  # tag -> metric -> (point, replicates)
    for tag, imgs in {**images, "floor": domain.floor_images(resolution, size)[0]}.items():
        features = domain.image_features(imgs[:size], whiten=whiten)
        stats[tag] = {name: (distance(features, reference)[0], distance(features, reference, counts))
                      for name, distance in (("FID", frechet_distance), ("KID", kernel_distance))}
    print(f"\n{short}, {size} images, {[k for k, v in SPACES.items() if v == whiten][0]}: "
          f"floor FID {stats['floor']['FID'][0]:.4g}, KID {stats['floor']['KID'][0]:.4g}")
    for tag in images:
        versus = "" if tag == "ddim50" else \
            f"  - DDIM-50: FID {paired(stats, tag, 'ddim50', 'FID')}  KID {paired(stats, tag, 'ddim50', 'KID')}"
        print(f"  {tag:14s} FID {stats[tag]['FID'][0]:8.4g}  KID {stats[tag]['KID'][0]:.4g}{versus}")
    for a, b in REFERENCE_PAIRS:
        print(f"  {a} - {b}: FID {paired(stats, a, b, 'FID')}  KID {paired(stats, a, b, 'KID')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=512)
    args = parser.parse_args()
    n = args.num_samples
    labels, seeds = [i % 10 for i in range(n)], list(range(n))
    for name in ("embedded/digits-16", "embedded/digits-8"):
        model, short = load_model(name), name.split("/")[1]
        images = {}
        for tag, (method, steps, method_args) in settings(short).items():
            out = sample(model, class_labels=labels, seeds=seeds, steps=steps, cfg_scale=1.5, method=method,
                         method_args=method_args, batch_size=128)
            images[tag] = out.images
            print(f"{short} {tag}: lazy {out.decisions.laziness().get('all', 0):.3f}", file=sys.stderr, flush=True)
        for size in sorted({256, n} & set(range(2, n + 1))):
            for whiten in SPACES.values():
                report(short, images, model.spec.image_size, size, whiten)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
