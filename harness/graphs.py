"""The "cuda-graph" execution mode: one batch's whole sampling loop captured once, then replayed.

A static schedule (`Policy.static_schedule`) makes every step a fixed sequence of kernels
with no host read, so the loop over all steps (model, CFG, DDIM update, the method's cache
writes) can be captured as one CUDA graph and replayed with a single launch: the figure of
a method at its best when per-kernel launch cost dominates (small batches). The replayed
latents equal an eager run's with the same inputs (same kernels); the decision log is the
eager run's (the schedule does not depend on the data).

Not capturable, refused with one line: a CPU device, a data-dependent method, and
stochastic samplers (DDPM, DDIM with eta > 0: their per-image noise is drawn on the host
at every step).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from harness.diffusion import Diffusion, default_guide_channels
from harness.methods import Policy, create_policy
from harness.sampling import SamplingLoop, initial_noise, run_info


def graph_refusal(policy: Policy, device: str | torch.device, sampler: str = "ddim", eta: float = 0.0) -> str | None:
    """None when this sampling call can be captured, else one line naming why not."""
    if torch.device(device).type != "cuda":
        return f"mode cuda-graph refused on {device}: CUDA graphs need a CUDA device"
    if not policy.static_schedule:
        return f"mode cuda-graph refused for {policy.name}: its decisions are read on the host during sampling"
    if sampler != "ddim" or eta != 0.0:
        return f"mode cuda-graph refused for sampler {sampler} (eta={eta:g}): its step noise is drawn on the host"
    return None


def graphed_sampling(model: nn.Module, method: str | Policy, method_args: Mapping[str, Any] | None,
                     class_labels: list[int], seeds: list[int], steps: int | str, cfg_scale: float,
                     device: str | torch.device, dtype: torch.dtype, sampler: str = "ddim", eta: float = 0.0,
                     **_: Any) -> Callable[[], torch.Tensor]:
    """Captures the sampling loop of one batch (the given labels and seeds) and returns `replay() -> latents`.

    Args:
        model, method, method_args, class_labels, seeds, steps, cfg_scale, device, dtype, sampler, eta:
            as for `harness.sample` (one batch: no batch_size, no decode; other `sample` arguments are ignored).
    Returns:
        replay(): launches the captured graph and returns the (device) latents tensor it writes.
    """
    policy = method if isinstance(method, Policy) else create_policy(method, dict(method_args or {}))
    refusal = graph_refusal(policy, device, sampler, eta)
    if refusal:
        raise ValueError(refusal)
    device = torch.device(device)
    model = model.to(device).eval()
    diffusion = Diffusion(steps)
    loop = SamplingLoop(model, diffusion, policy, cfg_scale, sampler, eta, device, dtype,
                        default_guide_channels(model.spec.in_channels), batch_invariant=False)
    x = initial_noise(seeds, model.spec.latent_shape).to(device)
    y = torch.as_tensor(list(class_labels), dtype=torch.long, device=device)
    if loop.use_cfg:
        x, y = torch.cat([x, x]), torch.cat([y, torch.full_like(y, model.spec.num_classes)])
    start = x.clone()
    info = run_info(model, diffusion, len(x), loop.use_cfg, device)

    @torch.no_grad()
    def denoise() -> torch.Tensor:
        z = start.clone()
        for index in reversed(range(diffusion.num_timesteps)):
            t = torch.full((len(z),), diffusion.timestep_map[index], device=device)
            policy.begin_step(index)
            out = loop.model_output(z, t, y)
            policy.end_step()
            z = loop.step(out, z, index, [], len(z))
        return z

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up off the capture: allocator, cuBLAS workspaces, lazy inits
        policy.start(info)
        denoise()
    torch.cuda.current_stream(device).wait_stream(side)
    policy.start(info)  # method state (host-to-device copies) set up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        latents = denoise()

    def replay() -> torch.Tensor:
        graph.replay()
        return latents

    return replay
