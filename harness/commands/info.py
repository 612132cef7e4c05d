"""`harness info`: environment, versions, and which weights are present."""
from __future__ import annotations

import argparse
import json

from harness.commands import example_formatter


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, device, threads, which weights are present, the methods",
                       epilog="examples:\n  python -m harness info\n  python -m harness info --json",
                       formatter_class=example_formatter)
    p.add_argument("--device", default="cpu", help="device to describe (default cpu)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.inventory import weights_inventory
    from harness.provenance import device_info, package_versions

    info = {"packages": package_versions(), "device": device_info(args.device), "weights": weights_inventory(),
            "methods": method_inventory()}
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print("packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items()))
    print("device:   " + ", ".join(f"{k}={v}" for k, v in info["device"].items()))
    for w in info["weights"]:
        status = w["path"] if w["found"] else "MISSING - " + w.get("detail", "")
        print(f"{w['kind']:<10} {w['name']:<22} {status}")
    for m in info["methods"]:
        coupled = ", batch-coupled" if m["batch_coupled"] else ""
        print(f"method     {m['name']:<22} {m['faithfulness']}{coupled}; paper {m['paper']}; code {m['code'] or 'none reachable'}")
    return 0


def method_inventory() -> list[dict[str, object]]:
    """Every registered method: its paper, official code and how faithful this implementation is."""
    from harness.methods import METHODS

    return [{"name": name, "paper": cls.paper, "code": cls.code, "faithfulness": cls.faithfulness,
             "batch_coupled": cls.batch_coupled} for name, cls in ((n, METHODS.get(n)) for n in METHODS.names())]
