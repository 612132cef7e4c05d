"""Command-line options of `harness run` / `harness status` for running cells as jobs (harness.cluster)."""
from __future__ import annotations

import argparse
from typing import Any

from harness.cluster.config import EXECUTORS

# flag -> SlurmConfig field, type, help
SLURM_FLAGS = (
    ("--partition", "partition", str, "Slurm partition"),
    ("--account", "account", str, "Slurm account to charge"),
    ("--qos", "qos", str, "Slurm quality of service"),
    ("--constraint", "constraint", str, "Slurm node constraint (e.g. a GPU type)"),
    ("--timeout-min", "timeout_min", int, "time limit per job in minutes"),
    ("--cpus-per-task", "cpus_per_task", int, "CPUs per rank"),
    ("--mem-gb", "mem_gb", int, "memory per node in GB"),
    ("--cells-per-job", "cells_per_job", int, "cells run one after another in one job"),
    ("--ranks-per-cell", "ranks_per_cell", int, "shard a cell's images across this many ranks (one GPU each)"),
    ("--shard-min-images", "shard_min_images", int, "shard only cells with at least this many images"),
    ("--array-parallelism", "array_parallelism", int, "most Slurm array tasks running at once"),
)


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    """--executor, --no-wait and the job resources (each overrides the suite's [slurm] table)."""
    p.add_argument("--executor", choices=EXECUTORS, default="inline",
                   help="inline: cells one after another in this process (default); local: each job a subprocess "
                        "(submitit); slurm: a Slurm job array")
    p.add_argument("--no-wait", action="store_true",
                   help="with local/slurm: return once submitted (harness status / table merge records later)")
    group = p.add_argument_group("job resources (override the suite's [slurm] table)")
    for flag, _, kind, help_text in SLURM_FLAGS:
        group.add_argument(flag, type=kind, default=None, help=help_text)


def slurm_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The SlurmConfig fields given on the command line."""
    return {name: getattr(args, name) for _, name, _, _ in SLURM_FLAGS if getattr(args, name, None) is not None}
