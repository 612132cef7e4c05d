"""The diffusion engine as specified: respacing, schedule identities, DDIM / DDPM steps, DiT's CFG rule.

Expected values are computed here independently, in float64, from the published
equations (Ho et al. 2020 eq. 7; Song et al. 2021 eq. 12) and DiT's `create_diffusion`.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness import sample
from harness.diffusion import Diffusion, default_guide_channels, model_output_with_cfg
from harness.methods import COMPUTE_ALL

T = 1000
ABAR = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T, dtype=np.float64))  # Ho et al.'s linear schedule, 1000 steps
BUDGETS = [10, 20, 25, 50, 100, 250, "ddim20", "ddim50", "10,15,20"]


def respaced(steps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(alpha_bar, alpha_bar_prev, beta) of the respaced chain, from the 1000-step schedule."""
    abar = ABAR[Diffusion(steps).timestep_map]
    abar_prev = np.append(1.0, abar[:-1])
    return abar, abar_prev, 1.0 - abar / abar_prev


def oracle_latents(index: int, steps, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0, eps, x_t) in float64 with x_t = sqrt(abar) x0 + sqrt(1 - abar) eps at step `index`."""
    gen = torch.Generator().manual_seed(seed)
    x0, eps = (torch.randn(3, 4, 8, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    abar = respaced(steps)[0][index]
    return x0, eps, np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps


# ---- respacing -----------------------------------------------------------------------

def test_50_steps_keep_timesteps_0_20_41_61_and_end_at_999():
    kept = Diffusion(50).timestep_map
    assert kept[:4] == [0, 20, 41, 61] and kept[-1] == 999 and len(kept) == 50


def test_ddim50_keeps_every_20th_timestep_from_0():
    assert Diffusion("ddim50").timestep_map == list(range(0, 1000, 20))


def test_ddim20_keeps_every_50th_timestep_and_ddim25_every_40th():
    assert Diffusion("ddim20").timestep_map == list(range(0, 1000, 50))
    assert Diffusion("ddim25").timestep_map == list(range(0, 1000, 40))


def test_n_steps_keep_exactly_n_ascending_timesteps_from_0_to_999():
    for steps in range(1, 1001):
        kept = Diffusion(steps).timestep_map
        assert len(kept) == steps and kept[0] == 0 and all(a < b for a, b in zip(kept, kept[1:])), steps
        assert kept[-1] == (999 if steps > 1 else 0), steps


def test_strides_are_rounded_from_a_running_sum_as_in_dit():
    # 21 steps: stride 49.95; ten additions give 499.49999999999994 -> 499, whereas round(10 * 49.95) = 500.
    assert Diffusion(21).timestep_map[10] == 499


def test_section_counts_space_each_equal_section_separately():
    kept = Diffusion("10,15,20").timestep_map
    assert len(kept) == 45
    assert kept[:2] == [0, 37] and kept[9] == 333 and kept[10] == 334 and kept[-1] == 999


def test_an_int_and_its_decimal_string_are_the_same_budget():
    assert Diffusion(25).timestep_map == Diffusion("25").timestep_map


@pytest.mark.parametrize("steps, message", [
    (0, "out of range"), (1001, "out of range"), (-5, "out of range"),
    ("ddim999", "integer stride"), ("ddim0", "integer stride"), ("ddim", "not a step budget"),
    ("fifty", "not a step budget"), ("50 ", "not a step budget"), ("10,,20", "not a step budget"),
    ("0,5", "cannot divide"), (2.5, "must be an int"), (True, "must be an int"), (None, "must be an int"),
])
def test_invalid_step_budgets_raise_one_clear_error(steps, message):
    with pytest.raises(ValueError, match=message):
        Diffusion(steps)


# ---- schedule identities ---------------------------------------------------------------

def test_full_schedule_is_linear_from_1e_4_to_0_02():
    betas = Diffusion(1000).betas
    np.testing.assert_allclose(betas[[0, -1]], [1e-4, 0.02], rtol=1e-12)
    np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-9)


@pytest.mark.parametrize("steps", BUDGETS)
def test_respaced_alpha_bar_equals_the_1000_step_alpha_bar_at_the_kept_timesteps(steps):
    diffusion = Diffusion(steps)
    np.testing.assert_allclose(diffusion.alphas_cumprod, ABAR[diffusion.timestep_map], rtol=1e-12)


@pytest.mark.parametrize("steps", BUDGETS)
def test_posterior_mean_and_variance_follow_ddpm_eq_7(steps):
    diffusion = Diffusion(steps)
    abar, abar_prev, beta = respaced(steps)
    np.testing.assert_allclose(diffusion.betas, beta, rtol=1e-10)
    np.testing.assert_allclose(diffusion.posterior_mean_coef1, np.sqrt(abar_prev) * beta / (1 - abar), rtol=1e-10)
    coef2 = np.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar)
    np.testing.assert_allclose(diffusion.posterior_mean_coef2, coef2, rtol=1e-10)
    variance = (1 - abar_prev) / (1 - abar) * beta
    np.testing.assert_allclose(diffusion.posterior_variance, variance, rtol=1e-10, atol=1e-300)
    # the variance is 0 at the last step; its log takes the next step's value there
    clipped = np.log(np.append(variance[1], variance[1:]))
    np.testing.assert_allclose(diffusion.posterior_log_variance_clipped, clipped, rtol=1e-10)


def test_q_sample_is_sqrt_abar_x0_plus_sqrt_one_minus_abar_eps():
    diffusion, (x0, eps, _) = Diffusion(50), oracle_latents(0, 50)
    x0, eps = x0.float(), eps.float()
    index = torch.tensor([0, 25, 49])
    abar = torch.tensor(ABAR[np.array(diffusion.timestep_map)[index.numpy()]]).view(3, 1, 1, 1)
    expected = abar.sqrt() * x0.double() + (1 - abar).sqrt() * eps.double()
    torch.testing.assert_close(diffusion.q_sample(x0, index, eps).double(), expected, rtol=1e-6, atol=1e-6)


# ---- DDIM ------------------------------------------------------------------------------

@pytest.mark.parametrize("index", [0, 1, 17, 49])
def test_the_x0_prediction_of_the_true_eps_is_x0(index):
    x0, eps, x_t = oracle_latents(index, 50)
    predicted, _ = Diffusion(50).predict_xstart(torch.cat([eps, eps], 1), x_t, index)
    torch.testing.assert_close(predicted, x0, rtol=0, atol=1e-10)


def test_ddim_eta0_with_the_true_eps_recovers_x0_in_one_step():
    x0, eps, x_t = oracle_latents(0, 50)
    torch.testing.assert_close(Diffusion(50).ddim_step(torch.cat([eps, eps], 1), x_t, 0), x0, rtol=0, atol=1e-10)


@pytest.mark.parametrize("index", [1, 17, 49])
def test_ddim_eta0_with_the_true_eps_lands_on_the_same_trajectory_one_step_earlier(index):
    x0, eps, x_t = oracle_latents(index, 50)
    abar_prev = respaced(50)[0][index - 1]
    expected = np.sqrt(abar_prev) * x0 + np.sqrt(1 - abar_prev) * eps
    torch.testing.assert_close(Diffusion(50).ddim_step(eps, x_t, index), expected, rtol=0, atol=1e-10)


def test_ddim_eta0_with_an_oracle_model_denoises_pure_noise_to_x0():
    diffusion = Diffusion("ddim20")
    abar = respaced("ddim20")[0]
    x0, _, x = oracle_latents(19, "ddim20")
    for index in reversed(range(20)):
        eps = (x - np.sqrt(abar[index]) * x0) / np.sqrt(1 - abar[index])  # what a perfect model predicts
        x = diffusion.ddim_step(eps, x, index)
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-9)


def test_ddim_eta1_adds_the_ddpm_posterior_standard_deviation_of_noise():
    x0, eps, x_t = oracle_latents(10, 50)
    z = torch.ones_like(x_t)
    diffusion = Diffusion(50)
    added = diffusion.ddim_step(eps, x_t, 10, eta=1.0, noise=z) - diffusion.ddim_step(eps, x_t, 10, 1.0, noise=0 * z)
    torch.testing.assert_close(added, torch.full_like(z, np.sqrt(diffusion.posterior_variance[10])), rtol=1e-10, atol=0)


# ---- DDPM ------------------------------------------------------------------------------

@pytest.mark.parametrize("index", [1, 20, 49])
def test_ddpm_step_mean_is_the_posterior_mean_of_the_predicted_x0(index):
    x0, eps, x_t = oracle_latents(index, 50)
    abar, abar_prev, beta = (a[index] for a in respaced(50))
    mean = (np.sqrt(abar_prev) * beta * x0 + np.sqrt(1 - beta) * (1 - abar_prev) * x_t) / (1 - abar)
    out = torch.cat([eps, torch.zeros_like(eps)], 1)  # learned-range value 0: the log-variance midpoint
    stepped = Diffusion(50).ddpm_step(out, x_t, index, noise=torch.zeros_like(x_t))
    torch.testing.assert_close(stepped, mean, rtol=0, atol=1e-10)


@pytest.mark.parametrize("value, variance", [(1.0, "beta"), (-1.0, "posterior")])
def test_learned_range_variance_spans_posterior_variance_to_beta(value, variance):
    index, diffusion = 20, Diffusion(50)
    _, eps, x_t = oracle_latents(index, 50)
    out = torch.cat([eps, torch.full_like(eps, value)], 1)
    z = torch.ones_like(x_t)
    added = diffusion.ddpm_step(out, x_t, index, noise=z) - diffusion.ddpm_step(out, x_t, index, noise=0 * z)
    expected = respaced(50)[2][index] if variance == "beta" else diffusion.posterior_variance[index]
    torch.testing.assert_close(added, torch.full_like(z, np.sqrt(expected)), rtol=1e-10, atol=0)


def test_without_learned_sigma_ddpm_uses_the_posterior_variance():
    index, diffusion = 20, Diffusion(50)
    _, eps, x_t = oracle_latents(index, 50)
    z = torch.ones_like(x_t)
    added = diffusion.ddpm_step(eps, x_t, index, noise=z) - diffusion.ddpm_step(eps, x_t, index, noise=0 * z)
    torch.testing.assert_close(added, torch.full_like(z, np.sqrt(diffusion.posterior_variance[index])), rtol=1e-10, atol=0)


def test_the_last_ddpm_step_adds_no_noise():
    x0, eps, x_t = oracle_latents(0, 50)
    out = torch.cat([eps, torch.ones_like(eps)], 1)
    torch.testing.assert_close(Diffusion(50).ddpm_step(out, x_t, 0, noise=torch.ones_like(x_t)), x0, rtol=0, atol=1e-10)


def test_a_single_step_budget_denoises_at_timestep_0(tiny_latent_dit):
    assert Diffusion(1).timestep_map == [0]
    latents = sample(tiny_latent_dit, [1, 2], [0, 1], steps=1, cfg_scale=1.5, decode=False).latents
    assert latents.shape == (2, 4, 8, 8) and torch.isfinite(latents).all()


# ---- classifier-free guidance --------------------------------------------------------

def fake_model(channels: int, learn_sigma: bool = True):
    """Outputs cond value 2 + c and uncond value 1 + c per channel c (the null label is > 0 in y)."""
    out_channels = 2 * channels if learn_sigma else channels

    def forward(x, t, y, policy):
        uncond = (y == 10).view(-1, 1, 1, 1).to(x.dtype)
        base = torch.arange(out_channels, dtype=x.dtype).view(1, -1, 1, 1) + 2 - uncond
        return base.expand(len(x), out_channels, *x.shape[2:])

    return forward


def guided(channels: int, guide_channels: int, learn_sigma: bool = True, scale: float = 4.0) -> torch.Tensor:
    """Per-channel output of DiT's forward_with_cfg for one image, both halves: (2, out_channels)."""
    x = torch.zeros(2, channels, 2, 2)
    y = torch.tensor([3, 10])
    model = fake_model(channels, learn_sigma)
    out = model_output_with_cfg(model, x, torch.zeros(2), y, scale, guide_channels, COMPUTE_ALL)
    return out[:, :, 0, 0]


def test_dit_guides_only_3_of_the_4_latent_eps_channels_by_default():
    assert default_guide_channels(4) == 3
    out = guided(4, default_guide_channels(4))
    # guided: uncond + 4 (cond - uncond) = (1 + c) + 4 = 5 + c on both halves
    assert out[:, :3].tolist() == [[5, 6, 7]] * 2
    assert out[:, 3].tolist() == [5, 4]  # eps channel 3: each half keeps its own prediction
    assert out[:, 4:].tolist() == [[6, 7, 8, 9], [5, 6, 7, 8]]  # learned variance: never guided


def test_guide_channels_4_guides_every_latent_eps_channel():
    out = guided(4, 4)
    assert out[:, :4].tolist() == [[5, 6, 7, 8]] * 2
    assert out[:, 4:].tolist() == [[6, 7, 8, 9], [5, 6, 7, 8]]


@pytest.mark.parametrize("channels, learn_sigma", [(3, True), (1, True), (8, True), (3, False)])
def test_other_channel_counts_guide_every_eps_channel_and_never_the_variance(channels, learn_sigma):
    assert default_guide_channels(channels) == channels
    out = guided(channels, default_guide_channels(channels), learn_sigma)
    assert out[:, :channels].tolist() == [[5 + c for c in range(channels)]] * 2
    if learn_sigma:
        variance = range(channels, 2 * channels)
        assert out[:, channels:].tolist() == [[2 + c for c in variance], [1 + c for c in variance]]


@pytest.mark.parametrize("guide_channels", [0, 5, 8])
def test_sample_refuses_to_guide_beyond_the_eps_channels(tiny_latent_dit, guide_channels):
    with pytest.raises(ValueError, match="guide_channels"):
        sample(tiny_latent_dit, [1], [0], steps=2, cfg_scale=4.0, guide_channels=guide_channels, decode=False)
