"""`harness sample`: draw images with a method and save them as an ADM-format `.npz`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.commands import example_formatter

EPILOG = """examples:
  python -m harness sample --model embedded/digits-8 --steps 50 --cfg-scale 1.5 --seeds 0-63 --out samples.npz
  python -m harness sample --model DiT-XL/2 --checkpoint DiT-XL-2-256x256.pt --image-size 256 \\
      --steps 50 --cfg-scale 1.5 --seeds 0-7 --method lazydit --method-args '{"weights": "lazy.pt"}' --out xl.npz
  torchrun --nproc_per_node=2 -m harness sample --model embedded/digits-8 --steps 25 --seeds 0-999 --out s.npz
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample images to an .npz (torchrun-aware)", epilog=EPILOG,
                       formatter_class=example_formatter)
    p.add_argument("--model", required=True, help="registered model name, e.g. DiT-XL/2 or embedded/digits-8")
    p.add_argument("--checkpoint", help="official checkpoint (.pt); not needed for embedded models")
    p.add_argument("--image-size", type=int, help="image size in pixels (default: from the checkpoint)")
    p.add_argument("--steps", default="50", help="sampling steps: N or ddimN (default 50)")
    p.add_argument("--cfg-scale", type=float, default=1.5, help="classifier-free guidance scale (default 1.5)")
    p.add_argument("--seeds", required=True, help="image seeds: A-B (inclusive) or a list 1,2,3")
    p.add_argument("--labels", help="class labels, comma separated (default: seed index modulo the class count)")
    p.add_argument("--method", default="ddim", help="method registry key (default ddim)")
    p.add_argument("--method-args", default="{}", help="method parameters as JSON")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic (default), > 0 adds step noise")
    p.add_argument("--batch-size", type=int, help="images per model call (default: all of this rank's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--vae-path", help="local folder of the VAE for latent models")
    p.add_argument("--out", required=True, help="output .npz (arr_0: uint8 N,H,W,C; labels, seeds: one per image)")
    p.add_argument("--png-dir", help="also write one PNG per image here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.diffusion import parse_steps
    from harness.inputs import (check_cfg_scale, check_labels, check_method_files, check_positive, check_sampler,
                                check_writable, parse_ints, parse_method_args)
    from harness.models import load_model
    from harness.sharded import parse_seed_range, sample_to_npz

    seeds = parse_seed_range(args.seeds)
    labels = parse_ints(args.labels, "--labels") if args.labels else None
    if labels is not None and len(labels) != len(seeds):
        raise ValueError(f"--labels: got {len(labels)} label(s) for {len(seeds)} seed(s); give one label per seed")
    steps = parse_steps(args.steps)
    check_cfg_scale(args.cfg_scale, "--cfg-scale")
    check_sampler(args.sampler, args.eta)
    if args.batch_size is not None:
        check_positive(args.batch_size, "--batch-size")
    method_args = parse_method_args(args.method_args)
    check_writable(args.out, "--out")
    if args.png_dir:
        check_writable(Path(args.png_dir) / "000000.png", "--png-dir")
    model = load_model(args.model, args.checkpoint, image_size=args.image_size)
    labels = check_labels(labels if labels is not None else [i % model.spec.num_classes for i in range(len(seeds))],
                          len(seeds), model.spec.num_classes, "--labels")
    check_method_files(method_args, model.spec.name, model.spec.image_size, steps)
    path = sample_to_npz(
        model, labels, seeds, args.out, png_dir=args.png_dir, steps=steps, cfg_scale=args.cfg_scale,
        method=args.method, method_args=method_args, sampler=args.sampler, eta=args.eta,
        batch_size=args.batch_size, device=args.device, vae_path=args.vae_path,
    )
    if path is not None:
        print(json.dumps({"out": str(path), "images": len(seeds)}))
        print(f"wrote {len(seeds)} images to {path}", file=sys.stderr)
    return 0
