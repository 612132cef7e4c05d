"""`python -m harness train lazydit | lazydit-static`: argument parsing only; the jobs live in `lazydit.pipeline`."""
from __future__ import annotations

import argparse
import json

from harness.commands import example_formatter
from harness.commands.train import TRAINERS
from lazydit.training import LazyTrainConfig

TRAIN_EXAMPLES = """examples:
  python -m harness train lazydit --model embedded/digits-8 --steps-budget 20 --rho-attn 1e-4 --rho-mlp 1e-4 --iters 300 --batch-size 32 --threads 1 --out lazy-digits8-20.pt
  python -m harness train lazydit --model embedded/digits-8 --steps-budget 20 --target-ratio 0.3 --out lazy.pt
  python -m harness train lazydit --model DiT-XL/2 --checkpoint DiT-XL-2-256x256.pt --image-size 256 --steps-budget 50 \\
      --data imagefolder:/data/imagenet/train --rho-attn 1e-7 --rho-mlp 1e-7 --out lazy-xl-50.pt"""

STATIC_EXAMPLES = """examples:
  python -m harness train lazydit-static --model embedded/digits-8 --weights lazy.pt --steps-budget 20 --out schedule.pt
  python -m harness train lazydit-static --model embedded/digits-8 --weights lazy.pt --steps-budget 20 --target-ratio 0.4 --out schedule.pt"""


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model name, e.g. embedded/digits-8 or DiT-XL/2")
    parser.add_argument("--checkpoint", default=None, help="official DiT .pt (not needed for embedded models)")
    parser.add_argument("--image-size", type=int, default=None, help="decoded image size (default: from the checkpoint)")
    parser.add_argument("--steps-budget", type=int, required=True, help="sampling steps the lazy layers serve")
    parser.add_argument("--target-ratio", type=float, default=None, help="wanted lazy ratio (threshold search)")
    parser.add_argument("--calib-images", type=int, default=16, help="images for the threshold search / calibration")
    parser.add_argument("--cfg-scale", type=float, default=1.5, help="guidance scale of the calibration sampling")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default when omitted)")
    parser.add_argument("--out", required=True, help="file to write")


@TRAINERS.register("lazydit")
def add_train_parser(trainers: argparse._SubParsersAction) -> None:
    p = trainers.add_parser("lazydit", help="train LazyDiT lazy layers on a frozen DiT", epilog=TRAIN_EXAMPLES,
                            formatter_class=example_formatter)
    _model_args(p)
    d = LazyTrainConfig()
    p.add_argument("--rho-attn", type=float, default=d.rho_attn, help="weight of the summed attention scores")
    p.add_argument("--rho-mlp", type=float, default=d.rho_mlp, help="weight of the summed MLP scores")
    p.add_argument("--iters", type=int, default=d.iters, help="optimizer steps (official: 500)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--label-dropout", type=float, default=d.label_dropout)
    p.add_argument("--all-steps", action="store_true", help="train every step index (method lazydit-allsteps)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--data", default="digits", help="digits | latents:PATH | imagefolder:PATH | random")
    p.add_argument("--vae-path", default=None, help="local VAE folder (imagefolder data)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run_train)


@TRAINERS.register("lazydit-static")
def add_static_parser(trainers: argparse._SubParsersAction) -> None:
    p = trainers.add_parser("lazydit-static", help="freeze LazyDiT decisions into a static schedule",
                            epilog=STATIC_EXAMPLES, formatter_class=example_formatter)
    _model_args(p)
    p.add_argument("--weights", required=True, help="lazy-weights file to calibrate")
    p.add_argument("--threshold", type=float, default=None, help="dynamic threshold (default: the file's, else 0.5)")
    p.set_defaults(func=run_static)


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        import torch

        from harness.inputs import check_positive

        torch.set_num_threads(check_positive(args.threads, "--threads"))


def run_train(args: argparse.Namespace) -> int:
    from lazydit.pipeline import train_to_file

    _set_threads(args)
    config = LazyTrainConfig(steps=args.steps_budget, rho_attn=args.rho_attn, rho_mlp=args.rho_mlp, iters=args.iters,
                             batch_size=args.batch_size, lr=args.lr, label_dropout=args.label_dropout,
                             all_steps=args.all_steps, seed=args.seed)
    summary = train_to_file(args.model, args.out, config, args.data, args.checkpoint, args.image_size,
                            args.target_ratio, args.calib_images, args.cfg_scale, args.device, args.vae_path, args.quiet)
    print(json.dumps(summary))
    return 0


def run_static(args: argparse.Namespace) -> int:
    from lazydit.pipeline import calibrate_to_file

    _set_threads(args)
    summary = calibrate_to_file(args.model, args.weights, args.out, args.steps_budget, args.checkpoint, args.image_size,
                                args.threshold, args.target_ratio, args.calib_images, args.cfg_scale, args.device)
    print(json.dumps(summary))
    return 0
