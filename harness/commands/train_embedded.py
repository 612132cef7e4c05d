"""`harness train embedded`: trains one embedded digits DiT and optionally installs it in the zoo."""
from __future__ import annotations

import argparse
import json
import shlex
import sys

from harness.commands import example_formatter
from harness.commands.train import TRAINERS


@TRAINERS.register("embedded")
def add_parser(trainers: argparse._SubParsersAction) -> None:
    from harness.training import TrainConfig

    defaults = TrainConfig()
    parser = trainers.add_parser(
        "embedded", help="train an embedded digits DiT (learned sigma, label dropout 0.1, EMA)",
        formatter_class=example_formatter,
        epilog="examples:\n"
               "  python -m harness train embedded --name digits-8 --steps 200 --out runs/digits-8\n"
               "  python -m harness train embedded --name digits-16 --install   # full budget, then into harness/zoo",
    )
    parser.add_argument("--name", required=True, help="digits-8 or digits-16 (the 'embedded/' prefix is optional)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="AdamW learning rate (default: %(default)s)")
    parser.add_argument("--ema-decay", type=float, default=defaults.ema_decay, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="default: %(default)s")
    parser.add_argument("--log-every", type=int, default=defaults.log_every, help="loss.csv row interval (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--init-from", default=None, help="continue from a run's checkpoint.pt (model and EMA)")
    parser.add_argument("--out", default=None, help="run folder for loss.csv and checkpoint.pt "
                        "(default: $HARNESS_CACHE_DIR or ~/.cache/lazydit-harness, then runs/<name>)")
    parser.add_argument("--install", action="store_true", help="afterwards write the fp16 EMA weights and manifest entry to harness/zoo")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.models.zoo import canonical_name, install_run
    from harness.training import TrainConfig, default_run_dir, train_embedded

    name = canonical_name(args.name)
    config = TrainConfig(name=name, steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                         seed=args.seed, log_every=args.log_every, threads=args.threads, init_from=args.init_from)
    out = args.out or default_run_dir(name)
    command = "python -m harness " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else None
    summary = train_embedded(config, out)
    summary["command"] = command or f"python -m harness train embedded --name {args.name} --steps {args.steps}"
    if args.install:
        summary = install_run(out, command=summary["command"])
    print(json.dumps(summary, indent=2))
    return 0


@TRAINERS.register("digits-classifier")
def add_classifier_parser(trainers: argparse._SubParsersAction) -> None:
    parser = trainers.add_parser(
        "digits-classifier", help="train the domain classifier behind domain FID (digits-cnn) on the held-out digits",
        formatter_class=example_formatter,
        epilog="example:\n  python -m harness train digits-classifier --install",
    )
    parser.add_argument("--epochs", type=int, default=120, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=64, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--install", action="store_true", help="write the fp16 weights and manifest entry to harness/zoo")
    parser.set_defaults(func=run_classifier)


def run_classifier(args: argparse.Namespace) -> int:
    from harness.metrics.domain import install_classifier, train_classifier

    model, summary = train_classifier(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    if args.install:
        summary = install_classifier(model, summary, command="python -m harness " + shlex.join(sys.argv[1:]))
    print(json.dumps(summary, indent=2))
    return 0
