"""Fidelity to full compute: PSNR / SSIM / latent MSE against plain DDIM with the same seeds, cached once."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness import build_model, sample
from harness.metrics.fidelity import (IDENTICAL_IMAGES, LATENT_MSE, PSNR, SSIM, compute_fidelity_metrics,
                                      full_compute_reference, gaussian_window, psnr, ssim)
from harness.methods import ATTN, Policy

LABELS, SEEDS, STEPS = [1, 7], [10, 11], 6


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model("embedded/digits-8", image_size=8)
    with torch.no_grad():  # adaLN-Zero would make every block the identity
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net.eval()


class ReuseEveryOtherAttention(Policy):
    """Reuses every block's attention output at even step indices: a crude cache that changes images."""

    def start(self, run):
        super().start(run)
        self.cache = {}

    def branch(self, block, kind, fn, make_h):
        if kind == ATTN and self.step % 2 == 0 and block in self.cache:
            self.log.branch[self.step, block, kind] = 0
            return self.cache[block]
        out = fn(make_h())
        if kind == ATTN:
            self.cache[block] = out
        return out


# ---- the measures ----------------------------------------------------------------------------

def test_psnr_of_a_one_level_offset_is_20_log10_255():
    a = np.full((2, 8, 8, 3), 100, dtype=np.uint8)
    assert psnr(a + 1, a).tolist() == pytest.approx([20 * math.log10(255)] * 2)


def test_psnr_of_identical_images_is_infinite():
    a = np.random.default_rng(0).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    assert math.isinf(psnr(a, a)[0])


def test_ssim_of_identical_images_is_one_and_of_different_images_below():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    assert ssim(a, a).tolist() == pytest.approx([1.0, 1.0])
    assert (ssim(a, b) < 0.5).all()


def test_ssim_equals_wang_et_al_formula_on_a_single_window():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (1, 11, 11, 1), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    w = gaussian_window(11, 1.5).numpy()
    x, y = a[0, ..., 0].astype(float), b[0, ..., 0].astype(float)
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy, cxy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum(), (w * (x - mx) * (y - my)).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim(b, a)[0].item() == pytest.approx(expected, rel=1e-10)


# ---- the full-compute reference ------------------------------------------------------------------

def test_full_compute_reference_is_plain_ddim_with_the_same_seeds(model):
    ref = full_compute_reference(model, LABELS, SEEDS, STEPS, 1.5)
    direct = sample(model, LABELS, SEEDS, steps=STEPS, cfg_scale=1.5, method="ddim")
    assert torch.equal(ref.latents, direct.latents)
    assert np.array_equal(ref.images, direct.images)


def test_full_compute_reference_is_sampled_once_and_cached(model, monkeypatch, tmp_path):
    first = full_compute_reference(model, LABELS, SEEDS, STEPS, 1.5)
    assert (tmp_path / "cache" / "full-compute" / f"{first.key}.npz").is_file()
    monkeypatch.setattr("harness.sampling.sample", lambda *a, **k: pytest.fail("sampled the reference twice"))
    again = full_compute_reference(model, LABELS, SEEDS, STEPS, 1.5)
    assert again.key == first.key and torch.equal(again.latents, first.latents)


@pytest.mark.parametrize("change", [dict(steps=5), dict(seeds=[10, 12]), dict(cfg_scale=4.0), dict(labels=[1, 8])])
def test_full_compute_reference_key_follows_steps_seeds_cfg_and_labels(model, change):
    base = dict(labels=LABELS, seeds=SEEDS, steps=STEPS, cfg_scale=1.5)
    first = full_compute_reference(model, base["labels"], base["seeds"], base["steps"], base["cfg_scale"])
    other = {**base, **change}
    second = full_compute_reference(model, other["labels"], other["seeds"], other["steps"], other["cfg_scale"])
    assert first.key != second.key


def test_full_compute_reference_key_follows_the_weights(model):
    first = full_compute_reference(model, LABELS, SEEDS, STEPS, 1.5)
    assert full_compute_reference(model, LABELS, SEEDS, STEPS, 1.5, model_key="another checkpoint").key != first.key


# ---- the entry point --------------------------------------------------------------------------

def test_plain_ddim_against_its_reference_has_zero_latent_mse_and_identical_images(model):
    ref = full_compute_reference(model, LABELS, SEEDS, STEPS, 1.5)
    out = sample(model, LABELS, SEEDS, steps=STEPS, cfg_scale=1.5, method="ddim")
    result = compute_fidelity_metrics(out.images, out.latents, ref)
    assert result[LATENT_MSE] == 0.0 and result[SSIM] == 1.0
    assert math.isinf(result[PSNR]) and result[IDENTICAL_IMAGES] == 2


def test_a_skipping_method_loses_fidelity(model):
    ref = full_compute_reference(model, LABELS, SEEDS, STEPS, 1.5)
    out = sample(model, LABELS, SEEDS, steps=STEPS, cfg_scale=1.5, method=ReuseEveryOtherAttention())
    result = compute_fidelity_metrics(out.images, out.latents, ref)
    assert result[LATENT_MSE] > 0
    assert math.isfinite(result[PSNR]) and result[SSIM] < 1.0


def test_undecoded_runs_get_latent_mse_only(model):
    ref = full_compute_reference(model, LABELS, SEEDS, STEPS, 1.5, decode=False)
    out = sample(model, LABELS, SEEDS, steps=STEPS, cfg_scale=1.5, method="ddim", decode=False)
    result = compute_fidelity_metrics(None, out.latents, ref)
    assert result[LATENT_MSE] == 0.0 and PSNR not in result


def test_mismatched_seeds_are_rejected(model):
    ref = full_compute_reference(model, LABELS, SEEDS, STEPS, 1.5)
    out = sample(model, [1], [10], steps=STEPS, cfg_scale=1.5, method="ddim")
    with pytest.raises(ValueError, match="same seeds"):
        compute_fidelity_metrics(out.images, out.latents, ref)
