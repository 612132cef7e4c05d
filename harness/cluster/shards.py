"""One cell's images sampled across the ranks of a job, gathered on rank 0 in image order.

The cell's batches are dealt out round-robin (rank r samples batches r, r + W, ...): image i's
noise comes from its seed alone and each batch is the batch a single process would sample, so
batch-coupled methods see the same batches too. Rank 0 joins latents and decision logs in batch
order and decodes them at once, as `harness.sample` does: its record equals the single-process one.
"""
from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from harness.cell_files import resolve_args
from harness.methods import DecisionLog, Policy, create_policy
from harness.models.vae import decode_latents
from harness.sampling import SampleOutput, sample
from harness.suite import Cell


def cell_batches(cell: Cell) -> list[tuple[int, int]]:
    """[lo, hi) image ranges of the cell's batches, in order."""
    size = min(cell.batch_size, cell.num_samples)
    return [(lo, min(lo + size, cell.num_samples)) for lo in range(0, cell.num_samples, size)]


def sample_cell_sharded(model: nn.Module, cell: Cell, policy: Policy, decode: bool = True) -> SampleOutput | None:
    """This rank's share of the cell's images; rank 0 returns the whole cell, the other ranks None.

    Args:
        model, cell, policy: as for `harness.runner.sample_cell`, on every rank.
        decode: whether rank 0 decodes the gathered latents to images.
    """
    from harness.runner import cell_sampling

    rank, world = dist.get_rank(), dist.get_world_size()
    kwargs: dict[str, Any] = cell_sampling(model, cell, decode=False)
    labels, seeds = kwargs.pop("class_labels"), kwargs.pop("seeds")
    mine = []
    for index, (lo, hi) in list(enumerate(cell_batches(cell)))[rank::world]:
        out = sample(model, class_labels=labels[lo:hi], seeds=seeds[lo:hi], method=policy, **kwargs)
        mine.append((index, out.latents.cpu(), out.decisions.to("cpu")))
    parts: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(mine, parts, dst=0)
    if rank != 0:
        return None
    ordered = sorted(itertools.chain.from_iterable(parts), key=lambda part: part[0])
    latents = torch.cat([part[1] for part in ordered])
    images = decode_latents(latents.to(cell.device), model.spec.vae) if decode else None
    return SampleOutput(images=images, latents=latents, decisions=DecisionLog.concat([part[2] for part in ordered]))


def follow_cell(cell: Cell, ctx: Any) -> None:
    """What a rank other than 0 does for a cell: sample its share (rank 0 measures and records)."""
    model = ctx.model(cell)
    policy = create_policy(cell.method, resolve_args(cell.method_args, ctx.base_dir))
    sample_cell_sharded(model, cell, policy, decode=False)
