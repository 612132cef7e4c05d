"""The sampling API: per-image seeds, batch-size invariance, noise override, hooks, errors."""
from __future__ import annotations

import pytest
import torch

from harness import sample
from harness.diffusion import Diffusion, model_output_with_cfg
from harness.methods import ATTN, Policy
from harness.models.dit import plain_forward

LABELS, SEEDS = [1, 2, 3, 4, 5], [10, 11, 12, 13, 14]


def test_same_seeds_give_bit_identical_latents_whatever_the_batch_size(tiny_latent_dit):
    whole = sample(tiny_latent_dit, LABELS, SEEDS, steps=8, decode=False).latents
    for batch_size in (1, 2, 3):
        parts = sample(tiny_latent_dit, LABELS, SEEDS, steps=8, decode=False, batch_size=batch_size).latents
        assert torch.equal(parts, whole), f"batch_size={batch_size}"


def test_ddpm_step_noise_is_per_image_and_batch_invariant(tiny_latent_dit):
    whole = sample(tiny_latent_dit, LABELS, SEEDS, steps=6, sampler="ddpm", decode=False).latents
    parts = sample(tiny_latent_dit, LABELS, SEEDS, steps=6, sampler="ddpm", decode=False, batch_size=2).latents
    assert torch.equal(parts, whole)


def test_image_depends_only_on_its_own_seed(tiny_latent_dit):
    alone = sample(tiny_latent_dit, [3], [12], steps=5, decode=False).latents
    among = sample(tiny_latent_dit, LABELS, SEEDS, steps=5, decode=False).latents
    assert torch.equal(alone[0], among[2])


def test_noise_argument_overrides_the_seeds(tiny_latent_dit):
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    a = sample(tiny_latent_dit, [1, 2], [0, 1], steps=5, noise=z, decode=False).latents
    b = sample(tiny_latent_dit, [1, 2], [99, 98], steps=5, noise=z, decode=False).latents
    assert torch.equal(a, b)


def test_ddim_through_the_hooks_equals_a_hook_free_loop(tiny_latent_dit):
    model, steps, scale = tiny_latent_dit, 10, 4.0
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([1, 2, 3, 10, 10, 10])
    diffusion = Diffusion(steps)
    x = torch.cat([z, z])
    with torch.no_grad():
        for index in reversed(range(steps)):
            t = torch.full((6,), diffusion.timestep_map[index])
            plain = lambda x_, t_, y_, policy: plain_forward(model, x_, t_, y_)  # noqa: E731
            out = model_output_with_cfg(plain, x, t, y, scale, 3, Policy())
            x = diffusion.ddim_step(out, x, index)
    hooked = sample(model, [1, 2, 3], [0, 0, 0], steps=steps, cfg_scale=scale, noise=z, decode=False, batch_invariant=False)
    assert torch.equal(hooked.latents, x[:3])


def test_default_method_logs_every_branch_as_computed(tiny_latent_dit):
    out = sample(tiny_latent_dit, [1, 2], [0, 1], steps=4, cfg_scale=1.5, decode=False)
    assert out.decisions.branch.shape == (4, 3, 2, 4)  # steps, depth, branches, 2 images x CFG halves
    assert bool((out.decisions.branch == 1).all())
    assert out.decisions.lazy_ratio()["all"] == 0.0


class SkipAttentionAtEvenSteps(Policy):
    """Reuses every block's attention output at even step indices (a test method)."""

    def start(self, run):
        super().start(run)
        self.cache = {}

    def branch(self, block, kind, fn, make_h):
        if kind == ATTN and self.step % 2 == 0 and block in self.cache:
            self.log.branch[self.step, block, ATTN] = 0
            return self.cache[block]
        out = fn(make_h())
        if kind == ATTN:
            self.cache[block] = out
        return out


def test_a_policy_that_skips_changes_the_output_and_logs_its_skips(tiny_latent_dit):
    full = sample(tiny_latent_dit, [1, 2], [0, 1], steps=6, decode=False)
    lazy = sample(tiny_latent_dit, [1, 2], [0, 1], steps=6, decode=False, method=SkipAttentionAtEvenSteps())
    assert not torch.equal(full.latents, lazy.latents)
    skipped_steps = (lazy.decisions.branch[:, :, ATTN] == 0).all(dim=(1, 2)).nonzero().flatten().tolist()
    assert skipped_steps == [0, 2, 4]
    assert lazy.decisions.lazy_ratio()["attn"] == pytest.approx(0.5)


def test_policy_state_is_reset_between_sampling_calls(tiny_latent_dit):
    policy = SkipAttentionAtEvenSteps()
    first = sample(tiny_latent_dit, [1], [0], steps=6, decode=False, method=policy).latents
    second = sample(tiny_latent_dit, [1], [0], steps=6, decode=False, method=policy).latents
    assert torch.equal(first, second)


def test_pixel_space_models_decode_by_identity(tiny_latent_dit):
    out = sample(tiny_latent_dit, [1], [0], steps=2, decode=False)
    assert out.images is None


def test_latent_models_without_a_local_vae_fail_naming_what_to_fetch(tiny_latent_dit, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HARNESS_VAE_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"stabilityai/sd-vae-ft-mse.*--vae-path"):
        sample(tiny_latent_dit, [1], [0], steps=2)


def test_labels_and_seeds_must_pair_up(tiny_latent_dit):
    with pytest.raises(ValueError, match="2 class labels for 3 seeds"):
        sample(tiny_latent_dit, [1, 2], [0, 1, 2], steps=2, decode=False)


def test_out_of_range_labels_are_rejected(tiny_latent_dit):
    with pytest.raises(ValueError, match=r"0\.\.9"):
        sample(tiny_latent_dit, [10], [0], steps=2, decode=False)


def test_unknown_method_lists_the_accepted_ones(tiny_latent_dit):
    with pytest.raises(LookupError, match="unknown method 'ddin'.*ddim.*Did you mean 'ddim'"):
        sample(tiny_latent_dit, [1], [0], steps=2, decode=False, method="ddin")


def test_unknown_method_argument_is_rejected_by_name(tiny_latent_dit):
    with pytest.raises(ValueError, match="unknown argument.*'threshold'.*'ddim'"):
        sample(tiny_latent_dit, [1], [0], steps=2, decode=False, method_args={"threshold": 0.5})


def test_wrong_noise_shape_is_rejected(tiny_latent_dit):
    with pytest.raises(ValueError, match=r"expected \(1, 4, 8, 8\)"):
        sample(tiny_latent_dit, [1], [0], steps=2, noise=torch.zeros(1, 4, 4, 4), decode=False)


def test_bfloat16_autocast_runs_and_stays_close(tiny_latent_dit):
    full = sample(tiny_latent_dit, [1], [0], steps=4, decode=False).latents
    half = sample(tiny_latent_dit, [1], [0], steps=4, decode=False, dtype=torch.bfloat16).latents
    assert half.dtype == torch.float32
    assert ((half - full).norm() / full.norm()).item() < 0.02
