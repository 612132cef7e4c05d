"""`harness export`: a cell's sampler and one model call as ExecuTorch programs (XNNPACK, float32)."""
from __future__ import annotations

import argparse
import sys

from harness.commands import example_formatter

EPILOG = """examples:
  python -m harness export --model embedded/digits-8 --method ddim --steps 4 --out ddim4.pte
  python -m harness export --model embedded/digits-8 --method lazydit-static --steps 25 \\
      --method-args '{"schedule": "lazydit/zoo/digits-8-ddim25-rho1e-3-static.pt"}' --out lazy25.pte
writes FILE.pte (the whole sampler: noise (n,C,H,W) float32, labels (n,) int64 -> latents), FILE.forward.pte
(one guided model call), an .etrecord beside each and FILE.json (what they are); data-dependent methods are refused.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a method's sampler to ExecuTorch programs (.pte) for phones",
                       epilog=EPILOG, formatter_class=example_formatter)
    p.add_argument("--model", required=True, help="registered model name, e.g. embedded/digits-8")
    p.add_argument("--checkpoint", help="official checkpoint (.pt); not needed for embedded models")
    p.add_argument("--image-size", type=int, help="image size in pixels (default: from the checkpoint)")
    p.add_argument("--method", default="ddim", help="a static-schedule method registry key (default ddim)")
    p.add_argument("--method-args", default="{}", help="method parameters as JSON")
    p.add_argument("--steps", default="50", help="sampling steps: N or ddimN (default 50); the loop is unrolled")
    p.add_argument("--cfg-scale", type=float, default=1.5, help="classifier-free guidance scale (default 1.5)")
    p.add_argument("--batch", type=int, default=1, help="images per program call (shapes are static; default 1)")
    p.add_argument("--no-forward", action="store_true", help="export the sampler only, not the one-call program")
    p.add_argument("--no-etrecord", action="store_true", help="do not write ETRecords")
    p.add_argument("--out", required=True, help="the sampler program, FILE.pte")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.diffusion import parse_steps
    from harness.export import PROGRAM_KINDS, check_exportable, export_programs, manifest_text
    from harness.inputs import check_cfg_scale, check_method_files, check_positive, check_writable, parse_method_args
    from harness.methods import create_policy
    from harness.models import load_model

    steps = parse_steps(args.steps)
    check_cfg_scale(args.cfg_scale, "--cfg-scale")
    check_positive(args.batch, "--batch")
    method_args = parse_method_args(args.method_args)
    policy = create_policy(args.method, method_args)
    check_exportable(policy)  # before loading anything large
    if not args.out.endswith(".pte"):
        raise ValueError(f"--out {args.out!r} must end in .pte")
    check_writable(args.out, "--out")
    model = load_model(args.model, args.checkpoint, image_size=args.image_size)
    check_method_files(method_args, model.spec.name, model.spec.image_size, steps)
    kinds = ("sampler",) if args.no_forward else PROGRAM_KINDS
    print(f"exporting {args.method} at {steps} steps (the loop is unrolled; this can take minutes)", file=sys.stderr)
    files = export_programs(model, policy, steps, args.batch, args.out, args.cfg_scale, kinds,
                            etrecord=not args.no_etrecord, describe={"model": model.spec.name,
                                                                      "command": args.command_line})
    print(manifest_text(files))
    return 0
