"""The GPU check: the essentials of `perf-dit-xl2-256` on one CUDA GPU in about 8 minutes, records under results/gpu/.

Runs, in this order (each group resumable; no group starts once the time budget is spent):
  1. DDIM-50 at 1 image + CFG, eager and compiled          (per-step latency; target compiled <= 2.0 ms)
  2. DDIM-25 and LazyDiT-static 50 steps at 50% laziness, 8 images + CFG, eager and compiled
                                                            (target: LazyDiT within 1.1 x DDIM-25)
  3. DDIM-50 at 64 images + CFG, compiled                  (TFLOP/s; target >= 500)
  4. every caching baseline at 8 images + CFG, compiled    (realised / MACs-implied speedup; target >= 0.8)
then prints a summary (figures from the records, never typed in) and writes it to results/gpu/summary.json.

    python benchmarks/gpu_check.py                  # cuda:0, 480 s budget, results/gpu/
    python benchmarks/gpu_check.py --budget-s 900 --results-dir /tmp/gpu
    tox -e gpu-check

Without a CUDA device it prints one line saying so and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

SUITE = "perf-dit-xl2-256"
CACHING = ("l2c", "fora", "taylorseer", "toca", "delta-dit", "ab-cache", "teacache", "fbcache")
# (what it shows, the `--only` filter of its cells), in run order; a group runs while budget is left.
ESSENTIALS: tuple[tuple[str, str], ...] = (
    ("DDIM-50 step latency at 1 image + CFG", "method=ddim,steps=50,batch_size=1"),
    ("DDIM-25 at 8 images + CFG", "method=ddim,steps=25,batch_size=8"),
    ("LazyDiT-static 50 steps, 50% lazy, 8 images + CFG", "method=lazydit-static,steps=50,batch_size=8,method_args=*lazy50*"),
    ("DDIM-50 throughput at 64 images + CFG, compiled", "method=ddim,steps=50,batch_size=64,mode=compile"),
    *((f"{name} at 8 images + CFG, compiled", f"method={name},steps=50,batch_size=8,mode=compile") for name in CACHING),
)
NO_CUDA = "gpu_check: no CUDA device (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU"


def cuda_refusal(available: Callable[[], bool] | None = None) -> str | None:
    """None when a CUDA device is usable, else the one-line message the script exits with."""
    if available is None:
        import torch

        available = torch.cuda.is_available
    return None if available() else NO_CUDA


def plan(cells: Sequence[Any]) -> list[tuple[str, str, list[Any]]]:
    """(label, --only filter, its cells) of every essential, in run order; raises if one selects no cell."""
    from harness.runner import select_cells

    groups = []
    for label, only in ESSENTIALS:
        chosen = select_cells(list(cells), only)
        if not chosen:
            raise ValueError(f"gpu_check essential {label!r} ({only}) selects no cell of {SUITE}: the suite changed")
        groups.append((label, only, chosen))
    return groups


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per record: the figures the issue's targets name, computed from the record only."""
    from harness.cost.macs import MACS_ALL

    rows = []
    for record in records:
        cell, latency = record["cell"], record["metrics"].get("latency", {})
        if not latency:
            continue
        steps = len(record["metrics"]["laziness"]["per_step"])
        images = latency["images"]
        row = {"cell": record["cell_id"], "mode": cell.get("mode", "eager"), "median_s": latency["median_s"],
               "step_ms": 1000 * latency["median_s"] / steps, "speedup_vs_ddim": latency["speedup"],
               "macs_implied_speedup": latency["macs_implied_speedup"],
               "realised_over_implied": latency["speedup"] / latency["macs_implied_speedup"]}
        macs = latency["timed_macs"][MACS_ALL]  # per image, CFG counted, all matmuls
        row["tflops"] = 2 * macs * images / latency["median_s"] / 1e12
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", default="results/gpu", help="records go to DIR/perf-dit-xl2-256/ (default results/gpu)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="no group starts after this many seconds (default 480)")
    parser.add_argument("--device", default="cuda", help="the CUDA device (default cuda)")
    args = parser.parse_args(argv)
    refusal = cuda_refusal()
    if refusal:
        print(refusal, file=sys.stderr)
        return 2

    import dataclasses

    from harness.runner import run_suite
    from harness.store import RecordStore
    from harness.suite import load_suite, suite_path

    suite = dataclasses.replace(load_suite(SUITE), devices=(args.device,))
    start, failed = time.perf_counter(), 0
    for label, only, cells in plan(suite.cells()):
        left = args.budget_s - (time.perf_counter() - start)
        if left <= 0:
            print(f"skipped (budget spent): {label}", file=sys.stderr)
            continue
        print(f"{label}: {len(cells)} cell(s), {left:.0f} s left", file=sys.stderr)
        summary = run_suite(suite, args.results_dir, only=only, resume=True, suite_file=suite_path(SUITE),
                            command=" ".join(sys.argv))
        failed += len(summary.failed)
    records = RecordStore.for_suite(args.results_dir, suite.name).read()
    rows = summarize(records)
    out = Path(args.results_dir) / "summary.json"
    out.write_text(json.dumps({"suite": SUITE, "rows": rows}, indent=1))
    for row in rows:
        print(json.dumps(row))
    print(f"wrote {out}; {len(records)} record(s), {failed} failed cell(s)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
