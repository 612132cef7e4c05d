"""Execution settings of a cell: mode (eager / torch.compile / CUDA graph), precision, CPU threads.

Everything here changes numbers or speed, so it is configuration, recorded per cell, and
switched only for the cell (TF32, thread count) and restored after it; nothing happens at
import time.

Modes:
  "eager"            the model's PyTorch ops as written.
  "compile[:MODE]"   regional `torch.compile` (MODE: default, reduce-overhead, max-autotune,
                     max-autotune-no-cudagraphs): every block's parametrised sub-modules
                     (attention, MLP, adaLN modulation) and the embedders / final layer are
                     compiled; the method's hooks stay Python between them, so every method,
                     static or dynamic, runs compiled without graph breaks inside the regions.
  "cuda-graph"       the whole sampling loop of one batch captured once and replayed
                     (`harness.graphs`): only for a static schedule (a fixed kernel sequence,
                     no host read) on a CUDA device.
A mode a method cannot run in is refused with one line naming the mode and why (`mode_refusal`).
"""
from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn as nn

MODE_KINDS = ("eager", "compile", "cuda-graph")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PRECISIONS = {"float32": torch.float32, "tf32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALL_THREADS = "all"


# ----------------------------------------------------------------------------------------
#                                        Modes
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExecutionMode:
    """A parsed mode: its kind and, for "compile", torch.compile's mode."""

    kind: str
    compile_mode: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ExecutionMode":
        """"eager", "compile" (= "compile:default"), "compile:reduce-overhead", ..., "cuda-graph"."""
        kind, _, option = str(text).partition(":")
        if kind not in MODE_KINDS or (option and kind != "compile"):
            raise ValueError(f"unknown execution mode {text!r}; accepted: eager, compile, "
                             f"{', '.join('compile:' + m for m in COMPILE_MODES)}, cuda-graph")
        if kind == "compile":
            option = option or "default"
            if option not in COMPILE_MODES:
                raise ValueError(f"unknown torch.compile mode {option!r} in {text!r}; accepted: {', '.join(COMPILE_MODES)}")
            return cls(kind, option)
        return cls(kind)

    @property
    def label(self) -> str:
        return f"compile:{self.compile_mode}" if self.kind == "compile" and self.compile_mode != "default" else self.kind

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.kind, "compile_mode": self.compile_mode}


def static_schedule(method: str) -> bool:
    """Whether the registered method decides without looking at the data (fixed kernels, no host read)."""
    from harness.methods import METHODS

    return bool(getattr(METHODS.get(method), "static_schedule", False))


def mode_refusal(mode: str, method: str, device: str) -> str | None:
    """None when `method` can run in `mode` on `device`, else one line naming the mode and why not."""
    parsed = ExecutionMode.parse(mode)
    if parsed.kind != "cuda-graph":
        return None
    if not str(device).startswith("cuda"):
        return f"mode cuda-graph refused for {method} on {device}: CUDA graphs need a CUDA device"
    if not static_schedule(method):
        return (f"mode cuda-graph refused for {method}: its decisions depend on the data (read on the host during "
                f"sampling), so the kernel sequence is not fixed; use eager or compile")
    return None


# ----------------------------------------------------------------------------------------
#                                 Regional compilation
# ----------------------------------------------------------------------------------------

def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and ModuleList of the model's repeated blocks (`blocks` in DiT, `layers` in Large-DiT)."""
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList) and len(child) == model.depth:
            return name, child
    raise ValueError(f"{type(model).__name__} has no ModuleList of its {model.depth} blocks to compile")


def _with_compiled_children(module: nn.Module, compile_mode: str, backend: str) -> nn.Module:
    """A shallow twin of `module` (same parameters) whose parametrised children are torch.compile'd."""
    twin = copy.copy(module)
    twin._modules = dict(module._modules)
    options = {"backend": backend, **({} if compile_mode == "default" else {"mode": compile_mode})}
    for name, child in module._modules.items():
        if child is not None and not isinstance(child, nn.ModuleList) and any(True for _ in child.parameters()):
            twin._modules[name] = torch.compile(child, **options)
    return twin


def compiled_model(model: nn.Module, compile_mode: str = "default", backend: str = "inductor") -> nn.Module:
    """The model with its blocks' sub-modules and its embedders / final layer compiled (regional compilation).

    The original model is untouched (a twin shares its parameters), so eager cells of the same run keep
    using it; the method's hooks run between the compiled regions, so no policy is traced.

    Args:
        model: a harness model (DiT or Large-DiT).
        compile_mode: torch.compile's mode (COMPILE_MODES).
        backend: torch.compile's backend ("inductor"; "eager" / "aot_eager" trace without code generation).
    """
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"unknown torch.compile mode {compile_mode!r}; accepted: {', '.join(COMPILE_MODES)}")
    name, blocks = block_list(model)
    twin = _with_compiled_children(model, compile_mode, backend)  # embedders, final layer
    twin._modules[name] = nn.ModuleList([_with_compiled_children(b, compile_mode, backend) for b in blocks])
    return twin


# ----------------------------------------------------------------------------------------
#                                  Precision and threads
# ----------------------------------------------------------------------------------------

def torch_dtype(precision: str) -> torch.dtype:
    """The autocast dtype of a precision name ("tf32" runs float32 tensors with TF32 matmuls)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown dtype {precision!r}; accepted: {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def resolve_threads(threads: int | str | None) -> int | None:
    """A thread count: an int >= 1, "all" (every CPU this process may use), or None (leave torch's setting)."""
    if threads is None:
        return None
    if threads == ALL_THREADS:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads={threads!r}; accepted: a positive integer or {ALL_THREADS!r}")
    return threads


@contextlib.contextmanager
def cell_settings(precision: str, threads: int | str | None = None, device: str = "cpu") -> Iterator[dict[str, Any]]:
    """TF32 (only for "tf32") and the thread count for the code inside, restored on exit; yields what was set.

    On the CPU the allocator is also pinned (`pin_cpu_allocator`, process-wide, kept): freed activations stay
    in the process, so repeated sampling calls do not fault their pages in again (what a skipped branch
    otherwise still pays, and DDIM with it: measured 0.80 -> 0.91 of LazyDiT's MACs-implied speedup).
    """
    from harness.cost.latency import pin_cpu_allocator

    pinned = pin_cpu_allocator() if str(device).startswith("cpu") else None
    tf32 = precision == "tf32"
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_num_threads())
    count = resolve_threads(threads)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        if count is not None:
            torch.set_num_threads(count)
        yield {"dtype": precision, "tf32": tf32, "threads": torch.get_num_threads(),
               "threads_requested": threads, "cpu_allocator_pinned": pinned}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_num_threads(saved[2])
