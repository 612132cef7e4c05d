"""The `[slurm]` table of a suite: a job's resources and where it queues; flags override it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

EXECUTORS = ("inline", "local", "slurm")


@dataclass(frozen=True)
class SlurmConfig:
    """Resources of one job (one rank per GPU) and the queue it goes to; None leaves the cluster's default."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None  # e.g. "volta32gb"
    timeout_min: int = 120  # per job: cells_per_job cells must fit
    cpus_per_task: int = 8
    mem_gb: int = 64
    cells_per_job: int = 1  # cells run one after another in one job (they share the loaded model)
    ranks_per_cell: int = 1  # > 1: a cell's images are sharded across this many ranks (one GPU each)
    shard_min_images: int = 0  # only cells with at least this many images are sharded
    array_parallelism: int = 64  # most array tasks running at once
    setup: tuple[str, ...] = ()  # shell lines run before each job, e.g. "source ~/venv/bin/activate"

    def validate(self) -> None:
        """Positive counts, one line naming the key otherwise."""
        for key in ("timeout_min", "cpus_per_task", "mem_gb", "cells_per_job", "ranks_per_cell", "array_parallelism"):
            if getattr(self, key) < 1:
                raise ValueError(f"slurm.{key} = {getattr(self, key)!r} must be a positive integer")
        if self.shard_min_images < 0:
            raise ValueError(f"slurm.shard_min_images = {self.shard_min_images!r} must be >= 0")

    def with_overrides(self, overrides: dict[str, Any]) -> "SlurmConfig":
        """This table with the command line's values (None: not given) in place of its own."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown slurm setting {unknown[0]!r}")
        config = dataclasses.replace(self, **given)
        config.validate()
        return config

    def ranks_for(self, num_samples: int) -> int:
        """How many ranks a cell of `num_samples` images runs on."""
        return self.ranks_per_cell if num_samples >= self.shard_min_images else 1
