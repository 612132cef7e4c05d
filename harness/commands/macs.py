"""`harness macs`: MACs per image in both conventions for a model, a step budget and a method."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch
import torch.nn as nn

from harness.commands import example_formatter

EXAMPLES = """examples:
  python -m harness macs --model DiT-XL/2 --image-size 256 --steps 50 --json
  python -m harness macs --model DiT-XL/2 --image-size 512 --steps 50 --cfg-scale 1.5
  python -m harness macs --model embedded/digits-8 --steps 25 --method lazydit-static \\
      --method-args '{"schedule": "lazydit/zoo/digits-8-ddim25-rho1e-3-static.pt"}' --dry-run
  python -m harness macs --model embedded/digits-8 --steps 25 --method lazydit \\
      --method-args '{"weights": "lazydit/zoo/digits-8-ddim25-rho1e-4.pt", "threshold": 0.5}' --num-images 256 --batch-size 128
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("macs", help="MACs per image: (a) all matmuls with CFG, (b) linear layers without CFG",
                            formatter_class=example_formatter, epilog=EXAMPLES,
                            description="Combines the model's per-branch cost table (measured once with FlopCounterMode "
                                        "on the meta device, cached) with the method's decision log. A data-dependent "
                                        "method runs on the model's real weights (shipped for embedded models, "
                                        "--checkpoint otherwise) with the suites' seeds: image i uses the seed derived "
                                        "from (--seed, i) and label i mod the class count, so the numbers equal a suite "
                                        "record's for the same cell.")
    parser.add_argument("--model", required=True, help="registered model name, e.g. DiT-XL/2 or embedded/digits-8")
    parser.add_argument("--image-size", type=int, default=None, help="decoded image size in pixels (default: the model's)")
    parser.add_argument("--steps", default="50", help="respaced step budget, e.g. 50 or ddim50 (default 50)")
    parser.add_argument("--method", default="ddim", help="method registry key (default ddim: full compute)")
    parser.add_argument("--method-args", default="{}", help="the method's parameters as a JSON object")
    parser.add_argument("--cfg-scale", type=float, default=1.5, help="CFG scale (>= 1); > 1 doubles the batch (default 1.5)")
    parser.add_argument("--num-images", type=int, default=1, help="images in the run that yields the decision log")
    parser.add_argument("--seed", type=int, default=0, help="the suite seed the image seeds derive from (default 0)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per model call (default: all at once)")
    parser.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default 0)")
    parser.add_argument("--dry-run", action="store_true",
                        help="read the decisions of an input-independent schedule without running the model")
    parser.add_argument("--checkpoint", default=None,
                        help="official checkpoint for a real run (embedded models use their shipped weights)")
    parser.add_argument("--device", default="cpu", help="device of a real run (default cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.inputs import parse_method_args

    record = compute_macs_record(args.model, args.image_size, args.steps, args.method, parse_method_args(args.method_args),
                                 args.cfg_scale, args.num_images, args.dry_run, args.checkpoint, args.device,
                                 seed=args.seed, batch_size=args.batch_size, sampler=args.sampler, eta=args.eta)
    print(json.dumps(record, indent=1) if args.json else format_record(record))
    return 0


def compute_macs_record(model_name: str, image_size: int | None, steps: str | int, method: str = "ddim",
                        method_args: dict[str, Any] | None = None, cfg_scale: float = 1.5, num_images: int = 1,
                        dry_run: bool = False, checkpoint: str | None = None, device: str = "cpu", *, seed: int = 0,
                        batch_size: int | None = None, sampler: str = "ddim", eta: float = 0.0) -> dict[str, Any]:
    """The command's record: both conventions for the run, per forward and at full compute.

    Args:
        model_name, image_size: the architecture (built on the meta device for the cost table); image_size
            None: the model's own.
        steps: the step budget; method, method_args: the policy whose decisions are counted.
        cfg_scale: >= 1; > 1 doubles the model batch (counted under (a) only).
        num_images: images of the run that yields the log; dry_run: read a static schedule only.
        checkpoint, device: weights and device of a real run (methods other than ddim, without dry_run).
        seed, batch_size, sampler, eta: as a suite cell's seed set, batch size and sampler.
    """
    from harness.cost.macs import cost_table, dry_run_decisions, full_compute_log, macs_from_log
    from harness.diffusion import Diffusion, parse_steps
    from harness.inputs import check_cfg_scale, check_method_files, check_positive, check_sampler, check_seeds
    from harness.methods import DDIMPolicy, Policy, create_policy
    from harness.models import build_model

    steps = parse_steps(steps)
    check_cfg_scale(cfg_scale, "--cfg-scale")
    check_positive(num_images, "--num-images")
    check_seeds([seed], "--seed")
    check_sampler(sampler, eta)
    if batch_size is not None:
        check_positive(batch_size, "--batch-size")
    with torch.device("meta"):
        meta = build_model(model_name, **({} if image_size is None else {"image_size": image_size}))
    check_method_files(method_args or {}, meta.spec.name, meta.spec.image_size, steps)
    table = cost_table(meta)
    cfg = cfg_scale > 1.0
    policy = create_policy(method, method_args)
    if type(policy) in (Policy, DDIMPolicy):  # plain DDIM computes everything: no run needed
        log, source = full_compute_log(Diffusion(steps).num_timesteps, num_images, meta.depth, cfg), "full-compute"
    elif dry_run:
        log, source = dry_run_decisions(policy, meta, steps, num_images, cfg), "dry-run"
    else:
        model, source = run_model(model_name, meta.spec.image_size, checkpoint)
        log = run_decisions(model, policy, steps, cfg_scale, num_images, seed, batch_size, sampler, eta, device)
    return {"model": meta.spec.name, "image_size": meta.spec.image_size, "steps": Diffusion(steps).num_timesteps,
            "method": method, "method_args": method_args or {}, "cfg_scale": cfg_scale, "num_images": num_images,
            "seed": seed, "sampler": sampler, "eta": eta, "decisions": source, "cost_table": table.key,
            **macs_from_log(table, log)}


def run_model(model_name: str, image_size: int, checkpoint: str | None) -> tuple[nn.Module, str]:
    """The weights a real run uses: the checkpoint, the shipped embedded weights, else seeded random weights (warned)."""
    from harness.models import build_model, load_model, zoo

    if checkpoint or zoo.is_embedded(model_name):
        return load_model(model_name, checkpoint, image_size=image_size), "run"
    print("harness macs: decisions come from a run with random weights (seed 0); pass --checkpoint for a "
          "data-dependent method", file=sys.stderr)
    torch.manual_seed(0)  # as the runner's random-init cells
    return build_model(model_name, image_size=image_size), "run (random weights)"


def run_decisions(model: nn.Module, policy: Any, steps: int | str, cfg_scale: float, num_images: int, seed: int,
                  batch_size: int | None, sampler: str, eta: float, device: str):
    """The decision log of a run on the suites' images: seeds derived from (seed, i), labels i mod classes."""
    from harness.sampling import sample
    from harness.suite import image_seed

    labels = [i % model.spec.num_classes for i in range(num_images)]
    seeds = [image_seed(seed, i) for i in range(num_images)]
    out = sample(model, labels, seeds, steps=steps, cfg_scale=cfg_scale, method=policy, sampler=sampler, eta=eta,
                 batch_size=batch_size, device=device, decode=False)
    return out.decisions


def format_record(record: dict[str, Any]) -> str:
    """Human-readable summary (the JSON has every field), in units that fit the model."""
    from harness.cost.macs import (MACS_ALL, MACS_ALL_PER_FORWARD, MACS_LINEAR, MACS_LINEAR_FULL,
                                   MACS_LINEAR_PER_FORWARD, SKIP_RATIO)
    from harness.tables import macs_unit

    def show(key: str) -> str:
        unit, scale = macs_unit([record[key]])
        return f"{record[key] / scale:.4g} {unit}"

    return "\n".join([
        f"{record['model']} @ {record['image_size']}, {record['steps']} steps, method {record['method']}, "
        f"cfg {record['cfg_scale']} ({record['decisions']})",
        f"  per forward, one image:        (a) {show(MACS_ALL_PER_FORWARD)}   (b) {show(MACS_LINEAR_PER_FORWARD)}",
        f"  per image, whole run:          (a) {show(MACS_ALL)}   (b) {show(MACS_LINEAR)} "
        f"(full compute {show(MACS_LINEAR_FULL)})",
        f"  branch evaluations skipped:    {100 * record[SKIP_RATIO]:.2f}%",
        "  (a) all matmuls incl. attention, CFG counted; (b) linear layers only, no CFG doubling (LazyDiT / L2C tables)",
    ])
