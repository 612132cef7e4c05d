"""Cost of the method hooks: DDIM through the policy path vs a hook-free forward.

Both run the same weights, the same respaced DDIM loop and CFG; only the model forward
differs. Repeats alternate A/B (and which goes first) so that load hits both alike; the ratio
(hook-free time / hooked time, >= 0.97 means the hooks cost at most ~3%) is the median
of per-pair ratios.

    python benchmarks/hook_overhead.py --batch 16 --steps 20 --repeats 15
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from harness import build_model
from harness.diffusion import Diffusion, model_output_with_cfg
from harness.methods import Policy
from harness.models.dit import plain_forward


@torch.no_grad()
def ddim_loop(forward, model, z, labels, steps, cfg_scale):
    diffusion, policy = Diffusion(steps), Policy()
    x = torch.cat([z, z])
    y = torch.cat([labels, torch.full_like(labels, model.spec.num_classes)])
    for index in reversed(range(steps)):
        t = torch.full((len(x),), diffusion.timestep_map[index])
        out = model_output_with_cfg(forward, x, t, y, cfg_scale, z.shape[1], policy)
        x = diffusion.ddim_step(out, x, index)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    # The embedded models' size: depth 6, hidden 128, 16 tokens, pixel space.
    model = build_model("DiT-S/2", image_size=8, vae=None, in_channels=1, depth=6, hidden_size=128, num_heads=4,
                        num_classes=10).eval()
    z = torch.randn(args.batch, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(args.batch) % 10
    hooked = lambda: ddim_loop(model, model, z, labels, args.steps, 1.5)  # noqa: E731
    hook_free = lambda x, t, y, policy: plain_forward(model, x, t, y)  # noqa: E731
    plain = lambda: ddim_loop(hook_free, model, z, labels, args.steps, 1.5)  # noqa: E731
    assert torch.equal(hooked(), plain()), "the hook path must compute exactly the plain forward"
    ratios, times = [], {"hooked": [], "hook_free": []}
    pair = [("hooked", hooked), ("hook_free", plain)]
    for repeat in range(args.repeats):
        for name, fn in pair if repeat % 2 == 0 else pair[::-1]:  # alternate who goes first
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        ratios.append(times["hook_free"][-1] / times["hooked"][-1])
    print(json.dumps({
        "batch": args.batch, "cfg": True, "steps": args.steps, "threads": torch.get_num_threads(),
        "hooked_median_s": statistics.median(times["hooked"]), "hook_free_median_s": statistics.median(times["hook_free"]),
        "ratio_hook_free_over_hooked": statistics.median(ratios),
    }, indent=1))


if __name__ == "__main__":
    main()
