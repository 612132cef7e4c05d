"""A cell's latency on a program device: export (cached), parity with eager, timed runs beside DDIM.

The method's sampler program and full DDIM's at the same steps are timed in alternating rounds
(so drift hits both alike); the speedup is the ratio of their medians. The program's latents
are checked against the eager sampler's on the same noise, and a phone's against the host
runtime's run of the same program. The record has the shape of `harness.runner.latency_metrics`.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from harness.cache import cache_path, content_hash
from harness.cost.latency import Latency, check_protocol
from harness.devices import ProgramDevice, ProgramRun, device_kind, open_device
from harness.methods import DecisionLog, Policy, create_policy
from harness.sampling import initial_noise, sample
from harness.suite import Cell

ROUNDS = 2  # alternating method / DDIM rounds of repeats
PARITY_RTOL = 5e-3  # |program - eager| <= PARITY_RTOL * max|eager|: XNNPACK reorders float32 sums, and the first
# DDIM steps amplify eps errors by sqrt(1/abar - 1) (measured: 1.1e-3 on digits-8 at 4 steps)
FULL_COMPUTE = "ddim"


def export_version() -> str:
    from importlib.metadata import version

    return f"executorch {version('executorch')}, torch {torch.__version__}"


def decisions_hash(log: DecisionLog) -> str:
    """What the program bakes in of a static method: its compute mask (and any output-level skips)."""
    digest = hashlib.sha256()
    for tensor in (log.branch, log.block, log.forward):
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()[:16]


def weights_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cached_sampler_program(model: nn.Module, policy: Policy, decisions: DecisionLog, cell: Cell, images: int,
                           kind: str = "sampler") -> tuple[Path, dict[str, Any]]:
    """The cell's program (exported once, then reused from the cache by content hash) and its export facts."""
    from harness.export import export_programs, forward_path

    # One model call computes everything whatever the method: its program is shared by every method and budget.
    method = {"method": policy.name, "decisions": decisions_hash(decisions), "steps": str(cell.steps)} \
        if kind == "sampler" else {}
    key = content_hash({"model": model.spec.name, "weights": weights_hash(model), **method, "cfg": cell.cfg_scale,
                        "images": images, "kind": kind, "versions": export_version()})
    path = cache_path("programs", key, "pte")
    target = path if kind == "sampler" else forward_path(path)
    if not target.is_file():
        files = export_programs(model, policy, cell.steps, images, path, cell.cfg_scale, kinds=(kind,), etrecord=False,
                                describe={"model": model.spec.name})
        return target, {**asdict(files[kind]), "cached": False}
    return target, {"kind": kind, "path": str(target), "bytes": target.stat().st_size, "cached": True}


def program_latency_metrics(model: nn.Module, policy: Policy, cell: Cell, runner: str | None = None) -> dict[str, Any]:
    """The cell's latency on its program device, with full DDIM at the same steps timed alongside.

    Args:
        model: the cell's model.
        policy: the cell's (static-decision) method policy; the cell's sampler must be DDIM eta 0.
        cell: the cell ("executorch-host", "android" or "android:SERIAL" device).
        runner: the phone's executor_runner (default $HARNESS_ET_RUNNER).
    """
    from harness.export import check_exportable

    check_exportable(policy, cell.sampler, cell.eta)
    check_protocol(cell.latency.warmup, cell.latency.repeats)
    device = open_device(cell.device, runner)  # before minutes of export: no phone, no runner -> fail now
    try:
        return _program_latency(model, policy, cell, device)
    finally:
        device.close()


def _program_latency(model: nn.Module, policy: Policy, cell: Cell, device: ProgramDevice) -> dict[str, Any]:
    from harness.export import forward_inputs, run_program
    from harness.runner import timed_run_metrics

    images = min(cell.latency.batch, cell.num_samples)
    noise = initial_noise(cell.image_seeds(images), model.spec.latent_shape)
    labels = torch.tensor(cell.class_labels(model.spec.num_classes, images), dtype=torch.long)
    candidates = {"method": policy} if cell.method == FULL_COMPUTE else {"method": policy, "ddim": create_policy(FULL_COMPUTE)}
    programs, eager, exports = {}, {}, {}
    for label, candidate in candidates.items():
        eager[label] = sample(model, labels.tolist(), cell.image_seeds(images), steps=cell.steps,
                              cfg_scale=cell.cfg_scale, method=candidate, noise=noise, decode=False, batch_invariant=False)
        programs[label], exports[label] = cached_sampler_program(model, candidate, eager[label].decisions, cell, images)
    forward, exports["forward"] = cached_sampler_program(model, policy, eager["method"].decisions, cell, images, "forward")
    runs = timed_rounds(device, programs, [noise, labels], cell.latency.warmup, cell.latency.repeats)
    forward_run = device.run_program(forward, list(forward_inputs(model, images, cell.cfg_scale > 1.0)),
                                     cell.latency.warmup, cell.latency.repeats)
    lats = {label: to_latency(run, device, cell) for label, run in runs.items()}
    parity = {}
    for label, run in runs.items():
        program_latents = run.outputs[0].reshape(eager[label].latents.shape)
        parity[label] = check_parity(program_latents, eager[label].latents, f"{label} program on {cell.device}")
        if device_kind(cell.device) != "executorch-host":  # a phone's output against the host runtime's
            host = run_program(programs[label], [noise, labels])[0]
            parity[label]["max_abs_vs_host"] = check_parity(program_latents, host, f"{label} program on {cell.device} "
                                                            "vs the host runtime")["max_abs"]
    out = {**lats["method"].to_dict(), "speedup": 1.0, "images": images, "runtime": "executorch-xnnpack",
           "per_forward": to_latency(forward_run, device, cell).to_dict(), "programs": exports, "parity": parity,
           "load_s": runs["method"].load_s, "device_provenance": device.provenance(),
           **timed_run_metrics(model, eager["method"].decisions)}
    if "ddim" in lats:
        out["ddim"] = lats["ddim"].to_dict()
        out["speedup"] = lats["ddim"].median_s / lats["method"].median_s
    return out


def timed_rounds(device: ProgramDevice, programs: dict[str, Path], inputs: list[torch.Tensor], warmup: int,
                 repeats: int) -> dict[str, ProgramRun]:
    """Every program's repeats in ROUNDS alternating rounds (each with its own warm-up), joined."""
    per_round = [repeats // ROUNDS + (i < repeats % ROUNDS) for i in range(ROUNDS)]
    runs: dict[str, ProgramRun] = {}
    for count in per_round:
        for label, program in programs.items():
            run = device.run_program(program, inputs, warmup, count)
            if label in runs:
                runs[label].values_s.extend(run.values_s)
            else:
                runs[label] = run
    return runs


def to_latency(run: ProgramRun, device: ProgramDevice, cell: Cell) -> Latency:
    return Latency.from_values(run.values_s, warmup=cell.latency.warmup, clock=device.clock, device=cell.device,
                               threads=run.threads, scope="sampler", mode="executorch")


def check_parity(program: torch.Tensor, reference: torch.Tensor, what: str) -> dict[str, float]:
    """Max absolute and relative error of a program's latents; raises past PARITY_RTOL."""
    max_abs = float((program.float() - reference.float()).abs().max())
    scale = float(reference.abs().max()) or 1.0
    if max_abs > PARITY_RTOL * scale:
        raise ValueError(f"{what}: latents differ from the reference by {max_abs:.3g} (> {PARITY_RTOL:g} x max "
                         f"|latent| {scale:.3g})")
    return {"max_abs": max_abs, "max_rel": max_abs / scale, "rtol": PARITY_RTOL}
