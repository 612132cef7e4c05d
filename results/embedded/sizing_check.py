"""The sizing check behind the embedded evaluation: how many images per cell resolve DDIM-25 vs DDIM-50 and a
~35%-lazy LazyDiT vs DDIM-25 (paired bootstrap over images), and where the real-data floor lies.

    python results/embedded/sizing_check.py --num-samples 512      # about 25 minutes on 2 loaded cores

Samples seeds 0..N-1 (labels i % 10), cfg 1.5, for DDIM-20 / 25 / 50 and LazyDiT (rho 1e-4 and 1e-3 layers,
threshold 0.5) per embedded model, then prints domain FID and KID at the first 256, 384 and N images with
95% intervals, the paired differences, and the floor of the same size. Not a suite: a standalone check of
the metric's resolving power (the `methods` suite measures the same on its own seeds).
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
PAIRS = (("ddim25", "ddim50"), ("lazy-rho1e-4", "ddim25"), ("lazy-rho1e-3", "ddim25"), ("ddim20", "ddim25"))


def settings(short: str) -> dict[str, tuple[str, int, dict]]:
    lazy = lambda rho: {"weights": str(ROOT / f"lazydit/zoo/{short}-ddim25-rho{rho}.pt"), "threshold": 0.5}  # noqa: E731
    return {"ddim20": ("ddim", 20, {}), "ddim25": ("ddim", 25, {}), "ddim50": ("ddim", 50, {}),
            "lazy-rho1e-4": ("lazydit", 25, lazy("1e-4")), "lazy-rho1e-3": ("lazydit", 25, lazy("1e-3"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=512)
    args = parser.parse_args()
    n = args.num_samples
    labels, seeds = [i % 10 for i in range(n)], list(range(n))
    for name in ("embedded/digits-16", "embedded/digits-8"):
        model, short = load_model(name), name.split("/")[1]
        resolution = model.spec.image_size
        reference = domain.reference_set(resolution)
        images = {}
        for tag, (method, steps, method_args) in settings(short).items():
            out = sample(model, class_labels=labels, seeds=seeds, steps=steps, cfg_scale=1.5, method=method,
                         method_args=method_args, batch_size=128)
            images[tag] = out.images
            print(f"{short} {tag}: lazy {out.decisions.laziness().get('all', 0):.3f}", file=sys.stderr, flush=True)
        for size in sorted({256, 384, n} & set(range(2, n + 1))):
            counts = bootstrap.resample_counts(size)
            stats = {}
            for tag, imgs in images.items():
                features = domain.image_features(imgs[:size])
                stats[tag] = (frechet_distance(features, reference)[0], frechet_distance(features, reference, counts),
                              kernel_distance(features, reference)[0], kernel_distance(features, reference, counts))
            floor = domain.floor_metrics(resolution, size, 0, replicates=0)
            print(f"\n{short}, {size} images: floor FID {floor[domain.DOMAIN_FID]:.2f}, KID {floor[domain.DOMAIN_KID]:.4f}")
            for tag, (fid, _, kid, _) in stats.items():
                print(f"  {tag:14s} FID {fid:7.2f}  KID {kid:.4f}")
            for a, b in PAIRS:
                d = bootstrap.interval(stats[a][0] - stats[b][0], stats[a][1] - stats[b][1])
                k = bootstrap.interval(stats[a][2] - stats[b][2], stats[a][3] - stats[b][3])
                print(f"  {a} - {b}: FID {d.value:+.2f} [{d.low:+.2f}, {d.high:+.2f}]{'*' if d.significant else ''}"
                      f"  KID {k.value:+.4f} [{k.low:+.4f}, {k.high:+.4f}]{'*' if k.significant else ''}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
