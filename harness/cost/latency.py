"""The latency protocol: warm-up, >= 10 timed repeats, one timer, median / p10 / p90.

One timer abstraction serves every measurement: CUDA events on a GPU (no host sync inside
the timed region; one sync when the value is read), `time.perf_counter` on the CPU (with
the thread count recorded). Sampler-only (decode=False) and end-to-end (decode included)
are separate scopes; eager and `torch.compile` are separate modes; speedups are ratios of
medians measured in the same run, with the candidates' repeats interleaved so that drift
(thermal, other tenants) hits all of them alike.
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

MIN_REPEATS = 10
SCOPES = ("sampler", "end_to_end")  # decode excluded / included
MODES = ("eager", "compile", "cuda-graph")  # "compile:MODE" names torch.compile's mode (harness.execution)

# Record keys.
LATENCY_MEDIAN = "median_s"
LATENCY_P10 = "p10_s"
LATENCY_P90 = "p90_s"
SPEEDUP = "speedup"


# ----------------------------------------------------------------------------------------
#                                       Allocator
# ----------------------------------------------------------------------------------------

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def pin_cpu_allocator(mmap_threshold: int = 1 << 26, trim_threshold: int = 1 << 27) -> bool:
    """Keeps freed CPU memory in the process (glibc): no trim, no mmap below 64 MiB.

    By default glibc returns large freed blocks to the kernel, so the next activation of
    that size faults its pages in again; on a virtual machine those faults can cost more
    than the kernels themselves and vary from run to run. Pinned, repeated sampling calls
    reuse warm memory (what jemalloc / tcmalloc setups do). Returns False where the C
    library is not glibc (nothing changes then).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))
    except (OSError, AttributeError):
        return False


# ----------------------------------------------------------------------------------------
#                                         Timer
# ----------------------------------------------------------------------------------------

class Timer:
    """Times a region: CUDA events on a CUDA device, perf_counter elsewhere.

    Usage: `with timer: work()` then `timer.elapsed_s()` (synchronises once, on read).
    """

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._start: Any = None
        self._end: Any = None

    def __enter__(self) -> "Timer":
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self._end.record()
        else:
            self._end = time.perf_counter()

    def elapsed_s(self) -> float:
        if self.cuda:
            self._end.synchronize()
            return self._start.elapsed_time(self._end) / 1000.0
        return self._end - self._start

    @property
    def clock(self) -> str:
        return "cuda_events" if self.cuda else "perf_counter"


# ----------------------------------------------------------------------------------------
#                                      Measurements
# ----------------------------------------------------------------------------------------

@dataclass
class Latency:
    """Raw timed repeats (seconds) and the statistics derived from them."""

    values_s: list[float]
    warmup: int = 0
    clock: str = "perf_counter"
    device: str = "cpu"
    threads: int = field(default_factory=torch.get_num_threads)
    scope: str = "sampler"  # "sampler" (decode excluded) or "end_to_end" (decode included)
    mode: str = "eager"  # "eager" or "compile"

    @classmethod
    def from_values(cls, values_s: Sequence[float], **meta: Any) -> "Latency":
        if len(values_s) == 0:
            raise ValueError("a latency needs at least one timed repeat; got none")
        return cls(values_s=[float(v) for v in values_s], **meta)

    @property
    def median_s(self) -> float:
        return float(np.median(self.values_s))

    @property
    def p10_s(self) -> float:
        return float(np.percentile(self.values_s, 10))

    @property
    def p90_s(self) -> float:
        return float(np.percentile(self.values_s, 90))

    @property
    def mean_s(self) -> float:
        return float(np.mean(self.values_s))

    @property
    def std_s(self) -> float:
        return float(np.std(self.values_s, ddof=1)) if len(self.values_s) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {LATENCY_MEDIAN: self.median_s, LATENCY_P10: self.p10_s, LATENCY_P90: self.p90_s,
                "mean_s": self.mean_s, "std_s": self.std_s, "repeats": len(self.values_s), "warmup": self.warmup,
                "values_s": list(self.values_s), "clock": self.clock, "device": self.device,
                "threads": self.threads, "scope": self.scope, "mode": self.mode}


def check_protocol(warmup: int, repeats: int) -> None:
    """Raises ValueError naming the value unless warmup >= 1 and repeats >= MIN_REPEATS."""
    if repeats < MIN_REPEATS:
        raise ValueError(f"repeats={repeats} is below the protocol's minimum; accepted: repeats >= {MIN_REPEATS}")
    if warmup < 1:
        raise ValueError(f"warmup={warmup}; accepted: warmup >= 1 (the first call pays allocation, compilation, caches)")


def measure_latency(fn: Callable[[], Any], device: str | torch.device = "cpu", warmup: int = 2,
                    repeats: int = MIN_REPEATS, scope: str = "sampler", mode: str = "eager") -> Latency:
    """Times `fn()`: `warmup` untimed calls, then `repeats` timed ones.

    Args:
        fn: the work to time (e.g. one sampling call).
        device: where it runs; picks the clock (CUDA events or perf_counter).
        warmup, repeats: untimed and timed calls (repeats >= 10).
        scope, mode: recorded labels: "sampler" / "end_to_end", "eager" / "compile".
    """
    return compare_latency({"fn": fn}, device, warmup, repeats, scope, mode)["fn"]


def compare_latency(fns: Mapping[str, Callable[[], Any]], device: str | torch.device = "cpu", warmup: int = 2,
                    repeats: int = MIN_REPEATS, scope: str = "sampler", mode: str = "eager") -> dict[str, Latency]:
    """Times several candidates in one run, their repeats interleaved round-robin.

    Args:
        fns: name -> work; all are warmed up first, then repeat r times every candidate once.
        device, warmup, repeats, scope, mode: as for `measure_latency`.
    """
    check_protocol(warmup, repeats)
    if scope not in SCOPES or mode.split(":")[0] not in MODES:
        raise ValueError(f"scope={scope!r}, mode={mode!r}; accepted scopes: {', '.join(SCOPES)}; modes: {', '.join(MODES)}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    timers: dict[str, list[Timer]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            timer = Timer(device)
            with timer:
                fn()
            timers[name].append(timer)
    clock = Timer(device).clock
    return {name: Latency.from_values([t.elapsed_s() for t in ts], warmup=warmup, clock=clock,
                                      device=str(device), scope=scope, mode=mode) for name, ts in timers.items()}


def speedups(latencies: Mapping[str, Latency], baseline: str) -> dict[str, float]:
    """Ratio of the baseline's median to each candidate's median (same run)."""
    if baseline not in latencies:
        raise ValueError(f"baseline {baseline!r} was not timed; timed: {', '.join(latencies)}")
    base = latencies[baseline].median_s
    return {name: base / lat.median_s for name, lat in latencies.items()}


# ----------------------------------------------------------------------------------------
#                                  Timing sampling calls
# ----------------------------------------------------------------------------------------

def compiled(model: nn.Module, backend: str = "inductor", mode: str | None = None) -> nn.Module:
    """`torch.compile(model)` keeping the harness attributes (`spec`, `depth`, ...) reachable."""
    return torch.compile(model, backend=backend, mode=mode)


def sampling_latency(model: nn.Module, sample_kwargs: Mapping[str, Any], methods: Mapping[str, Mapping[str, Any]],
                     baseline: str | None = None, device: str | torch.device = "cpu", warmup: int = 2,
                     repeats: int = MIN_REPEATS, scopes: Sequence[str] = ("sampler",),
                     modes: Sequence[str] = ("eager",), compile_backend: str = "inductor") -> dict[str, Any]:
    """The protocol for sampling: every (mode, scope) timed separately, methods interleaved.

    Args:
        model: the harness model.
        sample_kwargs: arguments of `harness.sample` shared by all methods (labels, seeds, steps, cfg...).
        methods: label -> {"method": name, "method_args": {...}, plus any `sample` argument to override,
            e.g. {"method": "ddim", "steps": 25} for a step budget}.
        baseline: the label speedups are relative to (default: the first).
        device, warmup, repeats: as for `measure_latency`.
        scopes: "sampler" (decode=False) and/or "end_to_end" (decode=True).
        modes: "eager" and/or "compile" (torch.compile with `compile_backend`).
    Returns:
        {mode: {scope: {label: Latency.to_dict() + speedup}}} and the protocol's settings.
    """
    from harness.sampling import sample

    baseline = baseline or next(iter(methods))
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "device": str(device), "warmup": warmup,
                           "repeats": repeats, "baseline": baseline, "compile_backend": compile_backend}
    for mode in modes:
        net = compiled(model, compile_backend) if mode == "compile" else model
        out[mode] = {}
        for scope in scopes:
            decode = scope == "end_to_end"
            fns = {label: _sampling_call(sample, net, sample_kwargs, spec, device, decode) for label, spec in methods.items()}
            lats = compare_latency(fns, device, warmup, repeats, scope, mode)
            ratios = speedups(lats, baseline)
            out[mode][scope] = {label: {**lat.to_dict(), SPEEDUP: ratios[label]} for label, lat in lats.items()}
    return out


def _sampling_call(sample: Callable, model: nn.Module, kwargs: Mapping[str, Any], spec: Mapping[str, Any],
                   device: str | torch.device, decode: bool) -> Callable[[], Any]:
    overrides = {k: v for k, v in spec.items() if k not in ("method", "method_args")}  # e.g. a step budget
    args = {**kwargs, **overrides, "method": spec.get("method", "ddim"), "method_args": spec.get("method_args"),
            "device": device, "decode": decode}

    def call() -> Any:  # sample() returns CPU latents, so the call ends with the device's work done
        return sample(model, **args)

    return call
