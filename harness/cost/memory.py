"""Peak memory of a measured region: CUDA allocator peak and process RSS peak (psutil).

RSS is sampled by a background thread (every `interval_s`) because the OS keeps no
resettable per-region peak; the CUDA peak comes from the caching allocator's statistics,
reset at the start of the region.
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any, Iterator
from contextlib import contextmanager

import psutil
import torch

# Record keys.
PEAK_CUDA_ALLOCATED = "peak_cuda_allocated_bytes"
PEAK_CUDA_RESERVED = "peak_cuda_reserved_bytes"
PEAK_RSS = "peak_rss_bytes"


@dataclass
class PeakMemory:
    """Peaks over a region; CUDA fields are None when the region did not run on a CUDA device."""

    peak_rss_bytes: int = 0
    rss_before_bytes: int = 0
    peak_cuda_allocated_bytes: int | None = None
    peak_cuda_reserved_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _RssSampler(threading.Thread):
    def __init__(self, interval_s: float):
        super().__init__(daemon=True)
        self.process = psutil.Process()
        self.interval_s = interval_s
        self.peak = self.process.memory_info().rss
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        self.peak = max(self.peak, self.process.memory_info().rss)


@contextmanager
def track_peak_memory(device: str | torch.device = "cpu", interval_s: float = 0.005) -> Iterator[PeakMemory]:
    """Context manager filling a `PeakMemory` for the code inside it.

    Args:
        device: the device the region runs on; CUDA peaks are read for CUDA devices.
        interval_s: RSS sampling period.
    """
    device = torch.device(device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    result = PeakMemory()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    sampler = _RssSampler(interval_s)
    result.rss_before_bytes = sampler.peak
    sampler.start()
    try:
        yield result
    finally:
        if cuda:
            torch.cuda.synchronize(device)
            result.peak_cuda_allocated_bytes = int(torch.cuda.max_memory_allocated(device))
            result.peak_cuda_reserved_bytes = int(torch.cuda.max_memory_reserved(device))
        sampler.stopped.set()
        sampler.join()
        sampler.sample()
        result.peak_rss_bytes = int(sampler.peak)
