"""`harness macs`: MACs per image in both conventions for a model, a step budget and a method."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from harness.commands import example_formatter

EXAMPLES = """examples:
  python -m harness macs --model DiT-XL/2 --image-size 256 --steps 50 --json
  python -m harness macs --model DiT-XL/2 --image-size 512 --steps 50 --cfg-scale 1.5
  python -m harness macs --model DiT-XL/2 --image-size 256 --steps 50 --method l2c --method-args '{"router": "DDIM50_router.pt"}' --dry-run
  python -m harness macs --model embedded/digits-8 --image-size 8 --steps 20 --method lazydit --method-args '{...}' --num-images 4
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("macs", help="MACs per image: (a) all matmuls with CFG, (b) linear layers without CFG",
                            formatter_class=example_formatter, epilog=EXAMPLES,
                            description="Combines the model's per-branch cost table (measured once with FlopCounterMode "
                                        "on the meta device, cached) with the method's decision log.")
    parser.add_argument("--model", required=True, help="registered model name, e.g. DiT-XL/2")
    parser.add_argument("--image-size", type=int, default=256, help="decoded image size in pixels (default 256)")
    parser.add_argument("--steps", default="50", help="respaced step budget, e.g. 50 or ddim50 (default 50)")
    parser.add_argument("--method", default="ddim", help="method registry key (default ddim: full compute)")
    parser.add_argument("--method-args", default="{}", help="the method's parameters as a JSON object")
    parser.add_argument("--cfg-scale", type=float, default=1.5, help="CFG scale; > 1 doubles the batch (default 1.5)")
    parser.add_argument("--num-images", type=int, default=1, help="images in the run that yields the decision log")
    parser.add_argument("--dry-run", action="store_true",
                        help="read the decisions of an input-independent schedule without running the model")
    parser.add_argument("--ckpt", default=None, help="checkpoint for a real run (data-dependent methods need real weights)")
    parser.add_argument("--device", default="cpu", help="device of a real run (default cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    method_args = _parse_json(args.method_args)
    record = compute_macs_record(args.model, args.image_size, args.steps, args.method, method_args, args.cfg_scale,
                                 args.num_images, args.dry_run, args.ckpt, args.device)
    if args.json:
        print(json.dumps(record, indent=1))
    else:
        print(format_record(record))
    return 0


def _parse_json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--method-args {text!r} is not valid JSON ({err.msg}); expected an object like '{{\"threshold\": 0.5}}'")
    if not isinstance(value, dict):
        raise ValueError(f"--method-args {text!r} is not a JSON object; expected an object like '{{\"threshold\": 0.5}}'")
    return value


def compute_macs_record(model_name: str, image_size: int, steps: str | int, method: str = "ddim",
                        method_args: dict[str, Any] | None = None, cfg_scale: float = 1.5, num_images: int = 1,
                        dry_run: bool = False, ckpt: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """The command's record: both conventions for the run, per forward and at full compute.

    Args:
        model_name, image_size: the architecture (built on the meta device for the cost table).
        steps: the step budget; method, method_args: the policy whose decisions are counted.
        cfg_scale: > 1 doubles the model batch (counted under (a) only).
        num_images: images of the run that yields the log; dry_run: read a static schedule only.
        ckpt, device: weights and device of a real run (methods other than ddim, without dry_run).
    """
    from harness.cost.macs import cost_table, dry_run_decisions, full_compute_log, macs_from_log
    from harness.diffusion import Diffusion
    from harness.methods import Policy, create_policy
    from harness.models import build_model, load_model

    with torch.device("meta"):
        meta = build_model(model_name, image_size=image_size)
    table = cost_table(meta)
    cfg = cfg_scale > 1.0
    policy = create_policy(method, method_args)
    if type(policy) is Policy:  # plain DDIM computes everything: no run needed
        log, source = full_compute_log(Diffusion(steps).num_timesteps, num_images, meta.depth, cfg), "full-compute"
    elif dry_run:
        log, source = dry_run_decisions(policy, meta, steps, num_images, cfg), "dry-run"
    else:
        log, source = _run_decisions(model_name, image_size, steps, policy, cfg_scale, num_images, ckpt, device, load_model, build_model)
    return {"model": model_name, "image_size": image_size, "steps": Diffusion(steps).num_timesteps, "method": method,
            "method_args": method_args or {}, "cfg_scale": cfg_scale, "num_images": num_images, "decisions": source,
            "cost_table": table.key, **macs_from_log(table, log)}


def _run_decisions(model_name, image_size, steps, policy, cfg_scale, num_images, ckpt, device, load_model, build_model):
    from harness.sampling import sample

    if ckpt:
        model, source = load_model(model_name, ckpt, image_size=image_size), "run"
    else:
        model, source = build_model(model_name, image_size=image_size), "run (random weights)"
        print("harness macs: decisions come from a run with random weights; pass --ckpt for a data-dependent method",
              file=sys.stderr)
    labels = [i % model.spec.num_classes for i in range(num_images)]
    out = sample(model, labels, list(range(num_images)), steps=steps, cfg_scale=cfg_scale, method=policy,
                 device=device, decode=False)
    return out.decisions, source


def format_record(record: dict[str, Any]) -> str:
    """Human-readable summary (the JSON has every field)."""
    from harness.cost.macs import (MACS_ALL, MACS_ALL_PER_FORWARD, MACS_LINEAR, MACS_LINEAR_FULL,
                                   MACS_LINEAR_PER_FORWARD, SKIP_RATIO)

    return "\n".join([
        f"{record['model']} @ {record['image_size']}, {record['steps']} steps, method {record['method']}, "
        f"cfg {record['cfg_scale']} ({record['decisions']})",
        f"  per forward, one image:        (a) {record[MACS_ALL_PER_FORWARD] / 1e9:.1f} GMACs   (b) {record[MACS_LINEAR_PER_FORWARD] / 1e9:.1f} GMACs",
        f"  per image, whole run:          (a) {record[MACS_ALL] / 1e12:.2f} TMACs   (b) {record[MACS_LINEAR] / 1e12:.2f} TMACs "
        f"(full compute {record[MACS_LINEAR_FULL] / 1e12:.2f})",
        f"  branch evaluations skipped:    {100 * record[SKIP_RATIO]:.2f}%",
        "  (a) all matmuls incl. attention, CFG counted; (b) linear layers only, no CFG doubling (LazyDiT / L2C tables)",
    ])
