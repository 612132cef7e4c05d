"""Does a LazyDiT skip save wall-clock time? Speedup over full-compute DDIM vs the MACs-implied speedup.

CPU (default): the embedded-size DiT (random weights unless the shipped ones exist), 16
images + CFG; target: measured speedup >= 0.9 x the MACs-implied one.
GPU: DiT-XL/2 with random weights at 256, 8 images + CFG, 50 steps, half of the branches
lazy, against DDIM-25 and DDIM-50 in the same run, eager and compiled (target: within
1.1 x DDIM-25).

Lazy weights: `--weights PATH` (trained), or forcing weights built here: at the lazy
(step, block, branch) entries w = -k m / |m|^2, m the mean over samples of the summed
branch input in a full-compute run, so most samples score ~0 there (skip) and some may
not; zero elsewhere (score 0.5: compute). The MACs-implied speedup always comes from the
decision log the timed run actually produced. Speedups are ratios of medians with the
candidates' repeats interleaved.

    python benchmarks/lazydit_speed.py                      # CPU, embedded/digits-8, 20 steps
    python benchmarks/lazydit_speed.py --gpu                # DiT-XL/2 256, cuda, eager + compile
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from harness import build_model, load_model, sample
from harness.cost.latency import compare_latency, compiled, pin_cpu_allocator, speedups
from harness.cost.macs import MACS_ALL, MACS_ALL_FULL, cost_table, macs_from_log
from harness.methods import Policy
from harness.models.random_weights import perturb_zero_linears
from lazydit.accounting import laziness
from lazydit.layers import LazyLayers
from lazydit.policy import LazyDiTPolicy
from lazydit.static import LazyDiTStaticPolicy, schedule_from_log
from lazydit.weights import load_lazy_weights


CPU_TARGET = 0.9  # measured speedup >= 0.9 x the MACs-implied one


#################################################################################
#                         Model and forcing lazy weights                        #
#################################################################################

def bench_model(name: str, checkpoint: str | None, image_size: int | None, seed: int) -> nn.Module:
    """A checkpoint, the shipped weights of embedded models, else random weights (adaLN-Zero replaced by noise)."""
    if checkpoint:
        return load_model(name, checkpoint, image_size=image_size).eval()
    try:
        return load_model(name) if name.startswith("embedded/") else _random(name, image_size, seed)
    except (FileNotFoundError, NotImplementedError, ValueError, KeyError) as err:
        print(f"# {name}: no shipped weights ({err}); random weights", file=sys.stderr)
        return _random(name, image_size, seed)


def _random(name: str, image_size: int | None, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, image_size=image_size) if image_size else build_model(name)
    return perturb_zero_linears(model, seed=seed).eval()


class BranchInputMeans(Policy):
    """Computes everything and records, per step x block x branch, the batch mean of sum_tokens h."""

    def start(self, run) -> None:
        super().start(run)
        self.means = torch.zeros(run.num_steps, run.depth, 2, run.hidden_size)

    def branch(self, block: int, kind: int, fn: Callable, make_h: Callable) -> torch.Tensor:
        h = make_h()
        self.means[self.step, block, kind] = h.float().sum(dim=1).mean(dim=0).cpu()
        return fn(h)


def forcing_layers(model: nn.Module, steps: int, lazy: torch.Tensor, common: dict[str, Any], strength: float = 30.0) -> LazyLayers:
    """Lazy layers that skip the `lazy` (S, depth, 2) entries for samples near the batch mean."""
    recorder = BranchInputMeans()
    sample(model, **common, steps=steps, method=recorder, decode=False)
    m = recorder.means
    layers = LazyLayers(*lazy.shape[:2], m.shape[-1])
    return layers.copy_weight_(torch.where(lazy[..., None], -strength * m / m.pow(2).sum(-1, keepdim=True).clamp_min(1e-12), 0.0))


def half_lazy(steps: int, depth: int) -> torch.Tensor:
    """Every branch lazy at even step indices (the layout the official recipe learns)."""
    lazy = torch.zeros(steps, depth, 2, dtype=torch.bool)
    lazy[0::2] = True
    return lazy


#################################################################################
#                                  The benchmark                                #
#################################################################################

def candidates(model: nn.Module, args: argparse.Namespace, common: dict[str, Any]) -> tuple[dict, dict]:
    """label -> (steps, policy factory); label -> decision log of one untimed run; LazyDiT speculation reruns."""
    if args.weights:
        layers = load_lazy_weights(args.weights)
    else:
        layers = forcing_layers(model, args.steps, half_lazy(args.steps, model.depth), common)
    dynamic = lambda: LazyDiTPolicy.from_layers(layers, args.threshold)  # noqa: E731
    eager_score = lambda: LazyDiTPolicy.from_layers(layers, args.threshold, score="eager")  # noqa: E731
    log = sample(model, **common, steps=args.steps, method=dynamic(), decode=False).decisions
    schedule = schedule_from_log(log)
    static = lambda: LazyDiTStaticPolicy.from_schedule(schedule)  # noqa: E731
    speculate = lambda: LazyDiTPolicy.from_layers(layers, args.threshold, "speculate", prediction=schedule)  # noqa: E731
    matched = max(1, round(args.steps * (1 - laziness(log).overall)))
    runs = {f"ddim-{args.steps}": (args.steps, Policy), "lazydit": (args.steps, dynamic),
            "lazydit-eager-score": (args.steps, eager_score), "lazydit-speculate": (args.steps, speculate),
            "lazydit-static": (args.steps, static),
            f"ddim-{matched}": (matched, Policy)}
    for s in args.extra_ddim:
        runs.setdefault(f"ddim-{s}", (s, Policy))
    policies = {label: make() for label, (_, make) in runs.items() if label != "lazydit"}
    logs = {"lazydit": log, **{label: sample(model, **common, steps=runs[label][0], method=policy, decode=False).decisions
                               for label, policy in policies.items()}}
    reruns = {label: p.reruns for label, p in policies.items() if isinstance(p, LazyDiTPolicy)}
    return runs, logs, reruns


def time_mode(model: nn.Module, runs: dict, common: dict[str, Any], args: argparse.Namespace, mode: str) -> dict:
    net = model
    if mode == "compile":
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        net = compiled(model, mode=args.compile_mode)
    cpu_s: dict[str, list[float]] = {label: [] for label in runs}

    def timed(label: str, steps: int, make: Callable) -> Callable[[], Any]:
        def call() -> Any:  # also records this thread's CPU time: robust to other tenants on a shared CPU
            start = time.thread_time()
            out = sample(net, **common, steps=steps, method=make(), decode=False)
            cpu_s[label].append(time.thread_time() - start)
            return out
        return call

    fns = {label: timed(label, steps, make) for label, (steps, make) in runs.items()}
    lats = compare_latency(fns, args.device, warmup=args.warmup, repeats=args.repeats, mode=mode)
    return lats, {label: float(np.median(v[args.warmup:])) for label, v in cpu_s.items()}


def report(runs: dict, logs: dict, reruns: dict, timed: dict, table, args: argparse.Namespace) -> dict:
    base = f"ddim-{args.steps}"
    out: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items()}, "threads": torch.get_num_threads(),
                           "device": args.device, "modes": {}}
    macs = {label: macs_from_log(table, log) for label, log in logs.items()}
    full = macs[base][MACS_ALL_FULL]
    for mode, (lats, cpu) in timed.items():
        ratios = speedups(lats, base)
        rows = {}
        for label in runs:
            implied = full / macs[label][MACS_ALL]
            rows[label] = {"median_s": lats[label].median_s, "p10_s": lats[label].p10_s, "p90_s": lats[label].p90_s,
                           "speedup": ratios[label], "macs_implied_speedup": implied,
                           "speedup_over_implied": ratios[label] / implied,
                           "thread_cpu_s": cpu[label], "cpu_speedup_over_implied": cpu[base] / cpu[label] / implied,
                           "lazy_ratio": laziness(logs[label]).overall,
                           "meets_cpu_target": ratios[label] / implied >= CPU_TARGET,
                           **({"speculation_reruns": reruns[label]} if label in reruns else {}),
                           # latency relative to each DDIM budget timed (GPU target: <= 1.1 x DDIM-25)
                           "latency_over": {other: lats[label].median_s / lats[other].median_s
                                            for other in runs if other.startswith("ddim-")}}
        out["modes"][mode] = rows
    return out


def print_table(result: dict) -> None:
    for mode, rows in result["modes"].items():
        print(f"\n[{mode}] device={result['device']} threads={result['threads']}", file=sys.stderr)
        print(f"{'method':<20}{'median s':>10}{'p10':>8}{'p90':>8}{'speedup':>9}{'MACs-impl':>10}{'ratio':>7}"
              f"{'cpu s':>8}{'cpu ratio':>10}{'lazy':>7}", file=sys.stderr)
        for label, r in rows.items():
            print(f"{label:<20}{r['median_s']:>10.3f}{r['p10_s']:>8.3f}{r['p90_s']:>8.3f}{r['speedup']:>9.2f}"
                  f"{r['macs_implied_speedup']:>10.2f}{r['speedup_over_implied']:>7.2f}{r['thread_cpu_s']:>8.3f}"
                  f"{r['cpu_speedup_over_implied']:>10.2f}{r['lazy_ratio']:>7.1%}", file=sys.stderr)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="DiT-XL/2 256, cuda, 8 images, 50 steps, DDIM-25/50, eager + compile")
    p.add_argument("--model", default=None, help="default: embedded/digits-8 (CPU), DiT-XL/2 (GPU)")
    p.add_argument("--checkpoint", default=None, help="model weights (default: shipped embedded weights, else random)")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--images", type=int, default=None, help="images per call (CFG doubles the batch); default 16 CPU, 8 GPU")
    p.add_argument("--steps", type=int, default=None, help="default 20 (CPU), 50 (GPU)")
    p.add_argument("--extra-ddim", type=int, nargs="*", default=None, help="more DDIM budgets to time (GPU default: 25)")
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--weights", default=None, help="trained lazy-weights file (default: forcing weights, half lazy)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--modes", default=None, help="eager,compile (default: eager on CPU, both on GPU)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (e.g. reduce-overhead)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable on a shared machine)")
    p.add_argument("--allocator", default="pinned", choices=["pinned", "default"],
                   help="pinned: freed memory stays in the process (harness.cost.latency.pin_cpu_allocator)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args(argv)
    gpu = args.gpu
    args.model = args.model or ("DiT-XL/2" if gpu else "embedded/digits-8")
    args.image_size = args.image_size or (256 if gpu else None)
    args.images = args.images or (8 if gpu else 16)
    args.steps = args.steps or (50 if gpu else 20)
    args.extra_ddim = args.extra_ddim if args.extra_ddim is not None else ([25] if gpu else [])
    args.device = args.device or ("cuda" if gpu else "cpu")
    args.modes = (args.modes or ("eager,compile" if gpu else "eager")).split(",")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
        args.allocator_pinned = args.allocator == "pinned" and pin_cpu_allocator()
    model = bench_model(args.model, args.checkpoint, args.image_size, args.seed).to(args.device)
    labels = [i % model.spec.num_classes for i in range(args.images)]
    common = dict(class_labels=labels, seeds=list(range(args.images)), cfg_scale=args.cfg_scale, device=args.device,
                  dtype=getattr(torch, args.dtype))
    runs, logs, reruns = candidates(model, args, common)
    lats = {mode: time_mode(model, runs, common, args, mode) for mode in args.modes}
    result = report(runs, logs, reruns, lats, cost_table(model), args)
    print_table(result)
    text = json.dumps(result, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
