"""LazyDiT's score in one pass on the CPU: LayerNorm, modulation and the lazy linear map fused.

The official score of a branch is sigmoid(sum_{t,d} w_d h_td) with h = modulate(LayerNorm(x)).
Per token, sum_d w_d h_td = r_t sum_d (x_td - mu_t) v_d + sum_d shift_d w_d, where
v = (1 + scale) w and r_t = 1 / sqrt(var_t + eps): one read of x and no h materialised.
In eager PyTorch the same logit costs a LayerNorm, a modulation, a matvec and a sum
(~115 us for 32 x 16 x 128 on one core, more than the 0.9-of-MACs budget of a skipped
branch of the embedded models); this kernel takes ~10 us. It equals the eager logit up to
float rounding (tested), so a decision can differ only for a score within rounding of the
threshold. Built on first use by torch's C++ extension loader (a C++ compiler and ninja);
where it cannot be built, `layernorm_score_logits` returns None and callers use eager ops.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import platform
import warnings
from typing import Iterator

import torch
import torch.nn as nn

from harness.methods import BranchInput

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

// logits[n] = sum_t sum_d w_d * (LayerNorm(x[n, t])_d * (1 + scale[n, d]) + shift[n, d])
torch::Tensor layernorm_score_logits(const torch::Tensor& x, const torch::Tensor& shift,
                                     const torch::Tensor& scale, const torch::Tensor& w, double eps) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous() && x.scalar_type() == torch::kFloat, "x: contiguous float32 (N, T, D)");
  TORCH_CHECK(shift.stride(1) == 1 && scale.stride(1) == 1 && w.is_contiguous(), "shift, scale, w: unit inner stride");
  const int64_t N = x.size(0), T = x.size(1), D = x.size(2);
  auto out = torch::empty({N}, x.options());
  const float* X = x.data_ptr<float>();
  const float* W = w.data_ptr<float>();
  float* O = out.data_ptr<float>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> v(D);
    for (int64_t n = begin; n < end; ++n) {
      const float* sh = shift.data_ptr<float>() + n * shift.stride(0);
      const float* sc = scale.data_ptr<float>() + n * scale.stride(0);
      float offset = 0.f;  // sum_d shift_d w_d, the same for every token
      for (int64_t d = 0; d < D; ++d) { v[d] = (1.f + sc[d]) * W[d]; offset += sh[d] * W[d]; }
      float total = 0.f;
      for (int64_t t = 0; t < T; ++t) {
        const float* row = X + (n * T + t) * D;
        float mean = 0.f;
        for (int64_t d = 0; d < D; ++d) mean += row[d];
        mean /= D;
        float var = 0.f, dot = 0.f;
        for (int64_t d = 0; d < D; ++d) { const float z = row[d] - mean; var += z * z; dot += z * v[d]; }
        total += dot / std::sqrt(var / D + static_cast<float>(eps)) + offset;
      }
      O[n] = total;
    }
  });
  return out;
}
"""

# Reassociation lets the compiler vectorise the reductions; the build is for this CPU only.
FLAGS = ["-O3", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math"]


def _cpu_tag() -> tuple[str, list[str]]:
    """A name suffix and flags for this CPU: `-march=native` builds are cached per instruction set."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return "generic", []
    return hashlib.sha256(flags.encode()).hexdigest()[:10], ["-march=native"]


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Raises a logger to ERROR inside the block."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@functools.lru_cache(maxsize=1)
def _extension():
    tag, arch = _cpu_tag() if platform.machine() in ("x86_64", "AMD64") else ("generic", [])
    try:
        with _quiet("torch.utils.cpp_extension"):  # its import warns about CUDA_HOME on every CPU-only machine
            from torch.utils.cpp_extension import load_inline

        return load_inline(name=f"lazydit_score_{tag}", cpp_sources=SOURCE, functions=["layernorm_score_logits"],
                           extra_cflags=FLAGS + arch, verbose=False)
    except Exception as err:  # noqa: BLE001  no compiler, headers or ninja: the eager ops still work
        warnings.warn(f"LazyDiT's fused CPU score could not be built ({type(err).__name__}: {err}); using eager ops")
        return None


def applies(inp: object, w: torch.Tensor) -> bool:
    """Whether the fused kernel computes this branch's score: a float32 CPU LayerNorm input without affine."""
    return (isinstance(inp, BranchInput) and isinstance(inp.norm, nn.LayerNorm) and inp.norm.weight is None
            and inp.x.device.type == "cpu" and inp.x.dim() == 3 and inp.x.is_contiguous()
            and inp.x.dtype == inp.shift.dtype == inp.scale.dtype == w.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu"))


def layernorm_score_logits(inp: object, w: torch.Tensor) -> torch.Tensor | None:
    """(N,) logits sum_{t,d} w_d h_td of the branch input, or None where the fused kernel does not apply.

    Args:
        inp: the branch input the model passed to the policy (a `BranchInput`).
        w: (D,) the lazy layer's weight for this step, block and branch.
    """
    if not applies(inp, w):
        return None
    ext = _extension()
    if ext is None:
        return None
    return ext.layernorm_score_logits(inp.x, inp.shift, inp.scale, w, float(inp.norm.eps))
