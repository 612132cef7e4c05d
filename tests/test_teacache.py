"""TeaCache's edge cases (no official DiT code to compare with), its calibration file and its costs."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.teacache import IDENTITY, TeaCachePolicy, load_calibration
from baselines.teacache_calibration import TeaCacheRecorder, calibrate_to_file, fit_polynomial
from harness import load_model, sample
from harness.methods import create_policy

LABELS, SEEDS, STEPS = [1, 3, 5, 7, 2, 4, 6, 8], [11, 12, 13, 14, 15, 16, 17, 18], 10


def run(model, method, n: int = 8, steps: int = STEPS, **kwargs):
    return sample(model, LABELS[:n], SEEDS[:n], steps=steps, cfg_scale=1.5, method=method, decode=False, **kwargs)


def computed_steps(out) -> list[int]:
    """Step indices (sampling order) at which every block ran; the others must have run none."""
    ran = out.decisions.block.amin(dim=2)  # (S, depth)
    assert torch.equal(ran.amax(dim=1), ran.amin(dim=1)), "TeaCache skips all blocks of a step or none"
    return [i for i in reversed(range(ran.shape[0])) if ran[i, 0] == 1]


def test_threshold_zero_equals_ddim_exactly(tiny_latent_dit, one_thread):
    out = run(tiny_latent_dit, create_policy("teacache", {"threshold": 0.0}))
    assert torch.equal(out.latents, run(tiny_latent_dit, "ddim").latents)
    assert out.decisions.branch.eq(1).all()


def test_infinite_threshold_skips_all_but_the_first_and_last_step(tiny_latent_dit, one_thread):
    policy = create_policy("teacache", {"threshold": float("inf")})
    out = run(tiny_latent_dit, policy)
    assert computed_steps(out) == [STEPS - 1, 0]
    assert out.decisions.forward.eq(1).all()  # embedders and final layer run every step
    assert policy.host_syncs == STEPS - 2  # one read per deciding step, none at the first and last


def test_accumulation_resets_on_computed_steps(tiny_latent_dit, one_thread):
    """A step j (not the first or last) computes where the sum of poly(delta) since the last computed step
    first reaches the threshold (identity polynomial: the deltas themselves)."""
    threshold, seen = 0.3, []
    policy = create_policy("teacache", {"threshold": threshold})
    policy.rescale = lambda delta: seen.append(delta) or delta
    out = run(tiny_latent_dit, policy)
    expected, acc = [0], 0.0
    for j, delta in enumerate(seen, start=1):
        acc += delta
        if not acc < threshold:
            expected.append(j)
            acc = 0.0
    expected.append(STEPS - 1)
    assert len(seen) == STEPS - 2
    assert [STEPS - 1 - i for i in computed_steps(out)] == expected
    assert len(expected) < STEPS  # the setting does skip


def test_skipped_steps_add_the_last_residual(tiny_latent_dit, one_thread):
    """A skipped step's block-stack output is its input plus the last computed step's h_out - h_in."""

    class Spy(TeaCachePolicy):
        def run_blocks(self, model, x, c):
            before = None if self.residual is None else self.residual.clone()
            h = super().run_blocks(model, x, c)
            if self.log.block[self.step, 0, 0] == 0:
                assert torch.equal(h, x + before)
            return h

    run(tiny_latent_dit, Spy(TeaCachePolicy.Config(threshold=float("inf"))))


def test_overhead_counts_block0_modulation_and_the_reductions(tiny_latent_dit, one_thread):
    out = run(tiny_latent_dit, create_policy("teacache", {"threshold": float("inf")}))
    d, t = 64, tiny_latent_dit.num_tokens
    m = d * 6 * d + t * d  # block 0's adaLN linear and its attention input's modulation
    expected = torch.full((STEPS,), float(m + 2 * t * d), dtype=torch.float64)
    expected[STEPS - 1] = m  # the first step only computes m
    expected[0] = 0.0  # the last step does not need it
    assert torch.equal(out.decisions.overhead_macs[:, 0], expected)


class AllRows(TeaCacheRecorder):
    """The recorder pooling every model row, padding included (what the method must not do)."""

    def start(self, run):
        super().start(dataclasses.replace(run, real=None))


def test_decisions_never_see_padding_rows(tiny_latent_dit, one_thread):
    """Three images padded to 16 rows decide as three images unpadded; with padding pooled, delta differs."""
    padded = run(tiny_latent_dit, create_policy("teacache", {"threshold": 0.3}), n=3)
    unpadded = run(tiny_latent_dit, create_policy("teacache", {"threshold": 0.3}), n=3, batch_invariant=False)
    assert torch.equal(padded.decisions.branch, unpadded.decisions.branch)
    real, exact, with_padding = TeaCacheRecorder(), TeaCacheRecorder(), AllRows()
    run(tiny_latent_dit, real, n=3)
    run(tiny_latent_dit, exact, n=3, batch_invariant=False)
    run(tiny_latent_dit, with_padding, n=3)
    deltas = lambda recorder: np.array([x for _, x, _ in recorder.pairs])  # noqa: E731
    np.testing.assert_allclose(deltas(real), deltas(exact), rtol=1e-5)
    assert np.abs(deltas(with_padding) - deltas(exact)).max() > 1e-3


def test_rescale_is_numpy_poly1d():
    coefficients = [-1876.5, 1840.1, -149.7, 4.46, -0.0155]
    policy = create_policy("teacache", {"coefficients": coefficients})
    for delta in (0.0, 0.013, 0.07, 0.5):
        assert policy.rescale(delta) == float(np.poly1d(coefficients)(delta))


def test_fit_recovers_a_known_polynomial():
    truth = [3.0, -2.0, 0.5, 1.5, 0.01]
    x = np.linspace(0.0, 1.0, 40)
    coefficients, residual = fit_polynomial(x, np.poly1d(truth)(x))
    np.testing.assert_allclose(coefficients, truth, atol=1e-8)
    assert residual < 1e-10
    with pytest.raises(ValueError, match="at least 5"):
        fit_polynomial(x[:4], x[:4])


def test_calibration_round_trip_and_identity_check(tmp_path, one_thread):
    path = tmp_path / "teacache.json"
    summary = calibrate_to_file("embedded/digits-8", str(path), steps=6, images=3, cfg_scale=1.5, batch_size=2)
    data = json.loads(path.read_text())
    assert data["model"] == "embedded/digits-8" and data["steps"] == 6 and data["image_size"] == 8
    assert len(data["pairs"]["x"]) == 2 * (6 - 1) == summary["pairs"]  # two batches, one pair per step after the first
    assert data["coefficients"] == summary["coefficients"] == load_calibration(path)["coefficients"]
    np.testing.assert_allclose(fit_polynomial(np.array(data["pairs"]["x"]), np.array(data["pairs"]["y"]))[0],
                               data["coefficients"])
    model = load_model("embedded/digits-8")
    policy = create_policy("teacache", {"calibration": str(path), "threshold": 0.2})
    assert policy.coefficients == tuple(data["coefficients"])
    sample(model, [0, 1], [0, 1], steps=6, cfg_scale=1.5, method=policy, decode=False)
    with pytest.raises(ValueError, match=r"fitted for embedded/digits-8 at 8 px, 6 steps; this run is embedded/digits-8 at 8 px, 8 steps"):
        sample(model, [0, 1], [0, 1], steps=8, cfg_scale=1.5, method=policy, decode=False)


def test_bad_arguments_fail_with_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match="both coefficients"):
        create_policy("teacache", {"coefficients": [0, 0, 1, 0, 0], "calibration": str(tmp_path / "c.json")})
    with pytest.raises(ValueError, match="accepted: 5 numbers"):
        create_policy("teacache", {"coefficients": [1, 0]})
    with pytest.raises(ValueError, match="accepted: a number >= 0"):
        create_policy("teacache", {"threshold": -0.1})
    with pytest.raises(FileNotFoundError, match="harness calibrate teacache"):
        create_policy("teacache", {"calibration": str(tmp_path / "missing.json")})
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a TeaCache calibration"):
        create_policy("teacache", {"calibration": str(tmp_path / "other.json")})
    assert create_policy("teacache", {"coefficients": list(IDENTITY)}).coefficients == IDENTITY


def test_shipped_calibrations_load_and_match_the_manifest():
    zoo = Path(__file__).resolve().parent.parent / "baselines" / "zoo"
    entries = json.loads((zoo / "manifest.json").read_text())["teacache_calibrations"]
    assert {(e["model"], e["steps"]) for e in entries.values()} >= {
        (f"embedded/digits-{m}", s) for m in (8, 16) for s in (25, 50)}
    for name, entry in entries.items():
        data = load_calibration(zoo / name)
        assert hashlib.sha256((zoo / name).read_bytes()).hexdigest() == entry["sha256"]
        assert (data["model"], data["steps"], data["coefficients"]) == (entry["model"], entry["steps"], entry["coefficients"])
