"""ExecuTorch export of the harness's own sampler: `SamplingLoop` traced, its step loop unrolled.

Two programs per cell: the whole sampler (noise, labels -> latents: every step, CFG and the
method's compute schedule baked in) and one guided model call (for per-step timing). Both are
the harness's code traced by `torch.export`, not a copy: a method with static decisions
(`Policy.static_decisions`) turns into a fixed sequence of kernels, and a data-dependent one is
refused before tracing. Programs are lowered with the XNNPACK partitioner in float32; an
ETRecord (for `executorch.devtools.Inspector`) goes next to each program.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from harness.cache import atomic_write_bytes, atomic_write_json
from harness.diffusion import Diffusion, default_guide_channels
from harness.methods import COMPUTE_ALL, METHODS, Policy, RunInfo
from harness.sampling import SamplingLoop

PROGRAM_KINDS = ("sampler", "forward")
INSTALL_HINT = "install the mobile extra: pip install 'lazydit-harness[mobile]'"


def static_methods() -> list[str]:
    """Registered methods whose decisions are fixed before sampling (exportable)."""
    return [name for name in METHODS.names() if METHODS.get(name).static_decisions]


def check_exportable(policy: Policy, sampler: str = "ddim", eta: float = 0.0) -> None:
    """Raises one ValueError line unless `policy` and the sampler give a fixed sequence of kernels."""
    if not policy.static_decisions:
        raise ValueError(
            f"method {policy.name!r} cannot be exported: it decides from the data while sampling (scores, "
            f"thresholds or top-k on activations), so its program would need data-dependent control flow; "
            f"exportable (static-schedule) methods: {', '.join(static_methods())}")
    if sampler != "ddim" or eta != 0.0:
        raise ValueError(f"sampler={sampler!r}, eta={eta!r} cannot be exported: step noise comes from per-image "
                         "generators; accepted: sampler 'ddim' with eta 0")


class _PlanOutsideTrace:
    """A policy whose `start` (planning from its schedule tensor) runs on real tensors during export.

    Under `torch.export` every tensor op is traced with fake tensors, so reading a schedule into
    Python bools (`tolist`) would be data-dependent; the plan is a constant of the program, so it
    is computed eagerly. Every other hook is the wrapped policy's own.
    """

    def __init__(self, policy: Policy):
        self._policy = policy

    def start(self, run: RunInfo) -> None:
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        with unset_fake_temporarily():
            self._policy.start(run)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)


class SamplerProgram(nn.Module):
    """noise (n, C, H, W) float32, labels (n,) int64 -> latents (n, C, H, W): `SamplingLoop.run`, DDIM eta 0."""

    def __init__(self, model: nn.Module, policy: Policy, steps: int | str, cfg_scale: float,
                 guide_channels: int | None = None):
        super().__init__()
        self.model = model.eval()
        channels = default_guide_channels(model.spec.in_channels) if guide_channels is None else guide_channels
        # batch_invariant=False: the program's shapes are fixed, so there is no small batch to pad.
        self.loop = SamplingLoop(self.model, Diffusion(steps), _PlanOutsideTrace(policy), cfg_scale, "ddim", 0.0,
                                 torch.device("cpu"), torch.float32, channels, False)

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loop.run(noise, labels, [])[0]


class ForwardProgram(nn.Module):
    """One model call as the sampler makes it: x (B, C, H, W), t (B,), y (B,) -> output, CFG applied."""

    def __init__(self, model: nn.Module, cfg_scale: float, guide_channels: int | None = None):
        super().__init__()
        self.model = model.eval()
        channels = default_guide_channels(model.spec.in_channels) if guide_channels is None else guide_channels
        self.loop = SamplingLoop(self.model, Diffusion(1), COMPUTE_ALL, cfg_scale, "ddim", 0.0, torch.device("cpu"),
                                 torch.float32, channels, False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loop.model_output(x, t, y)


def sampler_inputs(model: nn.Module, noise: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampler program's inputs, checked against the model."""
    if tuple(noise.shape[1:]) != model.spec.latent_shape or noise.dim() != 4 or labels.shape != (len(noise),):
        raise ValueError(f"noise {tuple(noise.shape)} / labels {tuple(labels.shape)} do not fit {model.spec.name}; "
                         f"expected (n, {', '.join(map(str, model.spec.latent_shape))}) and (n,)")
    return noise.float().contiguous(), labels.long().contiguous()


def forward_inputs(model: nn.Module, batch: int, cfg: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Example inputs of one model call for `batch` images (CFG doubles the rows)."""
    rows = 2 * batch if cfg else batch
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, *model.spec.latent_shape, generator=gen)
    labels = torch.arange(rows) % model.spec.num_classes
    return x, torch.full((rows,), 500, dtype=torch.long), labels


@dataclass(frozen=True)
class ProgramFile:
    """An exported program on disk and what it took to make it."""

    kind: str  # "sampler" or "forward"
    path: str
    etrecord: str | None
    bytes: int
    export_s: float  # torch.export + lowering + serialisation
    delegated_subgraphs: int  # XNNPACK delegate calls in the program (graph fragmentation)


def lower_to_file(module: nn.Module, inputs: tuple[torch.Tensor, ...], path: str | Path, kind: str,
                  etrecord: bool = True) -> ProgramFile:
    """torch.export -> XNNPACK lowering -> a .pte at `path` (atomic), an ETRecord beside it.

    Args:
        module: the program's eager module.
        inputs: example inputs (their shapes become the program's).
        path: the .pte file to write.
        kind: "sampler" or "forward" (recorded).
        etrecord: also write `<path minus .pte>.etrecord`.
    """
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    except ImportError as err:
        raise ImportError(f"ExecuTorch is not installed ({err}); {INSTALL_HINT}") from None
    path = Path(path)
    started = time.perf_counter()
    with torch.no_grad():
        exported = torch.export.export(module, inputs)
    # IR validity checks re-run every pass's verifier on the unrolled graph (minutes); the
    # program is checked numerically against eager instead (tests/test_export.py).
    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()], generate_etrecord=etrecord,
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    delegated = sum(1 for node in edge.exported_program().graph.nodes
                    if node.op == "call_function" and "executorch_call_delegate" in str(node.target))
    program = edge.to_executorch()
    atomic_write_bytes(path, program.buffer)
    record_path = None
    if etrecord:
        record_path = path.with_suffix(".etrecord")
        program.get_etrecord().save(str(record_path))
    return ProgramFile(kind=kind, path=str(path), etrecord=str(record_path) if record_path else None,
                       bytes=path.stat().st_size, export_s=time.perf_counter() - started,
                       delegated_subgraphs=delegated)


def forward_path(sampler_path: str | Path) -> Path:
    """Where the one-forward program of a sampler program goes: FILE.pte -> FILE.forward.pte."""
    sampler_path = Path(sampler_path)
    return sampler_path.with_name(sampler_path.stem + ".forward.pte")


def export_programs(model: nn.Module, policy: Policy, steps: int | str, batch: int, out: str | Path,
                    cfg_scale: float = 1.5, kinds: tuple[str, ...] = PROGRAM_KINDS,
                    etrecord: bool = True, describe: dict[str, Any] | None = None) -> dict[str, ProgramFile]:
    """Exports a cell's programs: the sampler to `out`, one model call to `forward_path(out)`.

    Args:
        model: the harness model.
        policy: a static-decision policy (others are refused by `check_exportable`).
        steps: the step budget (the loop is unrolled over it).
        batch: images per program call (shapes are static).
        out: the sampler's .pte path; a manifest `<out>.json` says what the files are.
        cfg_scale: guidance scale (1 turns CFG off).
        kinds: which programs to write.
        etrecord: write an ETRecord next to each program.
        describe: extra facts for the manifest (model name, method arguments, ...).
    """
    check_exportable(policy)
    unknown = sorted(set(kinds) - set(PROGRAM_KINDS))
    if unknown:
        raise ValueError(f"unknown program kind {unknown[0]!r}; accepted: {', '.join(PROGRAM_KINDS)}")
    out = Path(out)
    if out.suffix != ".pte":
        raise ValueError(f"--out {str(out)!r} must end in .pte")
    files: dict[str, ProgramFile] = {}
    if "sampler" in kinds:
        noise = torch.randn(batch, *model.spec.latent_shape, generator=torch.Generator().manual_seed(0))
        labels = torch.arange(batch) % model.spec.num_classes
        module = SamplerProgram(model, policy, steps, cfg_scale)
        files["sampler"] = lower_to_file(module, sampler_inputs(model, noise, labels), out, "sampler", etrecord)
    if "forward" in kinds:
        files["forward"] = lower_to_file(ForwardProgram(model, cfg_scale), forward_inputs(model, batch, cfg_scale > 1.0),
                                         forward_path(out), "forward", etrecord)
    manifest = {**(describe or {}), "method": policy.name, "method_parameters": policy.parameters(),
                "steps": steps, "batch": batch, "cfg_scale": cfg_scale, "sampler": "ddim", "eta": 0.0,
                "dtype": "float32", "backend": "xnnpack", "programs": {k: asdict(v) for k, v in files.items()}}
    atomic_write_json(out.with_suffix(".json"), manifest)
    return files


def run_program(path: str | Path, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Runs a .pte's forward once with the ExecuTorch Python runtime on this machine."""
    return list(load_method(path).execute(inputs))


def load_method(path: str | Path, method: str = "forward") -> Any:
    """A loaded ExecuTorch method (the host runtime); one line naming the file when it does not load."""
    try:
        from executorch.runtime import Runtime
    except ImportError as err:
        raise ImportError(f"the ExecuTorch runtime is not installed ({err}); {INSTALL_HINT}") from None
    if not Path(path).is_file():
        raise FileNotFoundError(f"program {str(path)!r} does not exist; make it with `python -m harness export`")
    try:
        return Runtime.get().load_program(str(path)).load_method(method)
    except RuntimeError as err:
        raise ValueError(f"{str(path)!r} is not a loadable ExecuTorch program ({err})") from None


def manifest_text(files: dict[str, ProgramFile]) -> str:
    """One JSON line describing exported programs (the export command's stdout)."""
    return json.dumps({kind: asdict(f) for kind, f in files.items()})
