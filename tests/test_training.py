"""Training the embedded DiTs: guided-diffusion's learned-sigma loss, and a short run that lowers it."""
import csv
import math

import torch

from harness.diffusion import Diffusion
from harness.training import CHECKPOINT, LOSS_COLUMNS, LOSS_CSV, TrainConfig, train_embedded, training_losses, vb_terms_bpd


def exact_model(noise: torch.Tensor):
    """A model that predicts the true eps and the posterior log variance (learned-range value -1)."""
    return lambda x_t, t, y: torch.cat([noise, -torch.ones_like(noise)], dim=1)


def test_loss_vanishes_for_the_true_noise_and_posterior_variance():
    diffusion = Diffusion(1000)
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([1, 10, 100, 400, 700, 999])
    losses = training_losses(exact_model(noise), diffusion, x0, t, torch.zeros(6, dtype=torch.long), noise)
    assert losses["mse"].abs().max() < 1e-10 and losses["vb"].abs().max() < 1e-4


def test_loss_is_mse_plus_the_variational_bound():
    diffusion = Diffusion(1000)
    x0, noise = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 1, 8, 8)
    model = lambda x_t, t, y: torch.cat([0.5 * noise, torch.zeros_like(noise)], dim=1)  # noqa: E731
    losses = training_losses(model, diffusion, x0, torch.tensor([0, 5, 50, 500]), torch.zeros(4, dtype=torch.long), noise)
    assert torch.allclose(losses["mse"], 0.25 * noise.pow(2).mean(dim=(1, 2, 3)))
    assert torch.allclose(losses["loss"], losses["mse"] + losses["vb"])
    assert (losses["vb"] > 0).all()


def test_vb_at_t0_is_the_decoder_nll_in_bits():
    diffusion = Diffusion(1000)
    x0 = torch.zeros(1, 1, 2, 2)  # mid-grey: one 2/255-wide bin around the predicted mean
    out = torch.cat([torch.zeros_like(x0), -torch.ones_like(x0)], dim=1)
    nll = vb_terms_bpd(diffusion, out, x0, x0 * diffusion.sqrt_alphas_cumprod[0], torch.tensor([0]))
    sigma = math.exp(0.5 * diffusion.posterior_log_variance_clipped[0])
    expected = -math.log2(math.erf(1 / 255 / sigma / math.sqrt(2)))  # P(|N(0, sigma^2)| < 1/255)
    assert abs(nll.item() - expected) < 1e-3 * expected


def read_losses(folder) -> list[dict]:
    with open(folder / LOSS_CSV) as handle:
        return list(csv.DictReader(handle))


def test_short_training_run_lowers_the_loss(tmp_path):
    config = TrainConfig(name="embedded/digits-8", steps=40, batch_size=16, lr=1e-3, log_every=10)
    summary = train_embedded(config, tmp_path, progress=False)
    rows = read_losses(tmp_path)
    assert tuple(rows[0]) == LOSS_COLUMNS and [int(r["step"]) for r in rows] == [10, 20, 30, 40]
    assert float(rows[-1]["loss"]) < 0.6 * float(rows[0]["loss"])
    assert summary["steps"] == 40 and summary["final_loss"] == float(rows[-1]["loss"])


def test_same_seed_gives_the_same_run(tmp_path):
    config = TrainConfig(name="embedded/digits-8", steps=4, batch_size=8, log_every=2)
    train_embedded(config, tmp_path / "a", progress=False)
    train_embedded(config, tmp_path / "b", progress=False)
    assert [r["loss"] for r in read_losses(tmp_path / "a")] == [r["loss"] for r in read_losses(tmp_path / "b")]
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)["ema"]
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)["ema"]
    assert all(torch.equal(a[k], b[k]) for k in a)
