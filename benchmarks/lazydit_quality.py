"""Quality of LazyDiT's dynamic policy next to its static-schedule variant (and DDIM at matched MACs).

For one model, lazy-weights file and step budget: samples N images with full-compute DDIM
(the reference), the dynamic policy, the static schedule calibrated on a *separate* seed
set, and DDIM with the step budget of equal laziness; reports fidelity to the reference
(PSNR of the uint8 images, latent MSE), the domain metrics of the embedded models (FID,
accuracy) when available, and the realised lazy ratios.

    python benchmarks/lazydit_quality.py --model embedded/digits-8 --weights lazy-d8-20.pt --steps 20 --images 256
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from harness import load_model, sample
from harness.metrics.fidelity import LATENT_MSE, PSNR, SSIM, FullComputeReference, compute_fidelity_metrics
from lazydit.accounting import laziness
from lazydit.static import LazyDiTStaticPolicy, calibrate_schedule
from lazydit.weights import read_lazy_file


FIDELITY_SHOWN = (PSNR, SSIM, LATENT_MSE)  # per-image means against full DDIM, as in suite records


def quality(model, images: np.ndarray, labels: list[int], use_domain: bool) -> dict:
    if not use_domain:
        return {}
    from harness.metrics.domain import domain_metrics

    return domain_metrics(images, model.spec.name, labels=labels)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded/digits-8")
    p.add_argument("--checkpoint", default=None, help="model weights (default: the shipped embedded ones)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--weights", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--calib-images", type=int, default=64)
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--threshold", type=float, default=None, help="default: the file's, else 0.5")
    p.add_argument("--no-domain", action="store_true", help="skip the domain FID / accuracy")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = load_model(args.model, args.checkpoint, image_size=args.image_size)
    payload = read_lazy_file(args.weights)
    method = payload.get("method", "lazydit")
    threshold = args.threshold if args.threshold is not None else float(payload.get("threshold", 0.5))
    n = model.spec.num_classes
    labels = [i % n for i in range(args.images)]
    seeds = list(range(args.images))
    calib_labels = [i % n for i in range(args.calib_images)]
    calib_seeds = [10_000 + i for i in range(args.calib_images)]  # disjoint from the evaluation seeds
    common = dict(class_labels=labels, seeds=seeds, cfg_scale=args.cfg_scale)

    lazy_args = {"weights": args.weights, "threshold": threshold}
    schedule = calibrate_schedule(model, args.weights, args.steps, calib_labels, calib_seeds, args.cfg_scale,
                                  threshold, method=method)
    runs = {f"ddim-{args.steps}": sample(model, **common, steps=args.steps),
            method: sample(model, **common, steps=args.steps, method=method, method_args=lazy_args)}
    runs["lazydit-static"] = sample(model, **common, steps=args.steps, method=LazyDiTStaticPolicy.from_schedule(schedule))
    matched = max(1, round(args.steps * (1 - laziness(runs[method].decisions).overall)))
    if f"ddim-{matched}" not in runs:
        runs[f"ddim-{matched}"] = sample(model, **common, steps=matched)

    full = runs[f"ddim-{args.steps}"]
    reference = FullComputeReference(f"ddim-{args.steps}", full.latents, full.images)
    rows = {}
    for label, out in runs.items():
        rows[label] = {"lazy_ratio": laziness(out.decisions).overall,
                       **{f"{name}_vs_full": value for name, value in
                          compute_fidelity_metrics(out.images, out.latents, reference).items() if name in FIDELITY_SHOWN},
                       **quality(model, out.images, labels, not args.no_domain)}
    print(f"{'method':<18}" + "".join(f"{k[:14]:>16}" for k in next(iter(rows.values()))), file=sys.stderr)
    for label, r in rows.items():
        print(f"{label:<18}" + "".join(f"{v:>16.4f}" for v in r.values()), file=sys.stderr)
    print(json.dumps({"settings": vars(args), "threshold": threshold, "method": method, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
