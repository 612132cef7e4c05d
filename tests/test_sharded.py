"""torchrun sharding: the union over ranks equals the single-process run, image for image."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from harness.sharded import parse_seed_range

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from harness import build_model
    from harness.sharded import sample_to_npz
    torch.set_num_threads(1)
    model = build_model("DiT-S/2", image_size=16, vae=None, in_channels=3, depth=2, hidden_size=32,
                        num_heads=2, num_classes=4)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    seeds = list(range(100, 107))
    sample_to_npz(model, [s % 4 for s in seeds], seeds, sys.argv[1], png_dir=sys.argv[2], steps=5, cfg_scale=2.0)
    """
)


def run_script(tmp_path, name, launcher):
    script = tmp_path / "draw.py"
    script.write_text(SCRIPT)
    out, pngs = tmp_path / f"{name}.npz", tmp_path / f"{name}_png"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*launcher, str(script), str(out), str(pngs)], check=True, env=env, timeout=240,
                   capture_output=True)
    return np.load(out)["arr_0"], sorted(p.name for p in pngs.iterdir())


@pytest.mark.slow
def test_torchrun_world_size_two_equals_single_process(tmp_path):
    single, single_pngs = run_script(tmp_path, "single", [sys.executable])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    sharded, sharded_pngs = run_script(tmp_path, "sharded", torchrun)
    assert single.dtype == np.uint8 and single.shape == (7, 16, 16, 3)
    assert np.array_equal(sharded, single)
    assert sharded_pngs == single_pngs == [f"{i:06d}.png" for i in range(7)]


def test_seed_ranges_are_inclusive():
    assert parse_seed_range("0-3") == [0, 1, 2, 3]
    assert parse_seed_range("5,7") == [5, 7]


def test_malformed_seed_range_is_rejected():
    with pytest.raises(ValueError, match="'a-b'"):
        parse_seed_range("a-b")
