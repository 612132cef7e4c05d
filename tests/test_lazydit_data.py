"""Lazy-learning data as a DiT-XL/2 user has it: precomputed latents files and ImageNet-style folders."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lazydit.data import training_batches


@pytest.fixture
def latents_file(tmp_path):
    """Six (4, 8, 8) latents, the shape of the tiny latent DiT, labelled 0..5."""
    latents = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.save({"latents": latents, "labels": torch.arange(6)}, tmp_path / "latents.pt")
    return tmp_path / "latents.pt", latents


def test_a_latents_file_yields_every_row_once_per_epoch_with_its_label(tiny_latent_dit, latents_file):
    path, latents = latents_file
    batches = training_batches(tiny_latent_dit, f"latents:{path}", batch_size=3, seed=0)
    epoch = [next(batches) for _ in range(2)]
    labels = torch.cat([y for _, y in epoch])
    assert sorted(labels.tolist()) == list(range(6))
    for x, y in epoch:
        assert torch.equal(x, latents[y])


def test_a_latents_file_is_shuffled_by_the_seed(tiny_latent_dit, latents_file):
    path, _ = latents_file

    def order(seed: int) -> torch.Tensor:  # the labels of one whole-epoch batch
        return next(training_batches(tiny_latent_dit, f"latents:{path}", batch_size=6, seed=seed))[1]

    assert torch.equal(order(1), order(1))
    assert not all(torch.equal(order(1), order(s)) for s in range(2, 6))


def test_an_npz_latents_file_loads_as_a_pt_one(tiny_latent_dit, latents_file, tmp_path):
    path, latents = latents_file
    np.savez(tmp_path / "latents.npz", latents=latents.numpy(), labels=np.arange(6))
    from_pt = next(training_batches(tiny_latent_dit, f"latents:{path}", batch_size=6, seed=0))
    from_npz = next(training_batches(tiny_latent_dit, f"latents:{tmp_path / 'latents.npz'}", batch_size=6, seed=0))
    assert torch.equal(from_pt[0], from_npz[0]) and torch.equal(from_pt[1], from_npz[1])


def test_latents_of_another_shape_are_refused_naming_both_shapes(tiny_latent_dit, tmp_path):
    torch.save({"latents": torch.zeros(4, 4, 16, 16), "labels": torch.zeros(4)}, tmp_path / "big.pt")
    with pytest.raises(ValueError, match=r"\(4, 16, 16\).*\(4, 8, 8\)"):
        training_batches(tiny_latent_dit, f"latents:{tmp_path / 'big.pt'}", batch_size=2)


def test_a_latents_file_without_labels_is_refused_naming_the_keys(tiny_latent_dit, tmp_path):
    torch.save({"latents": torch.zeros(4, 4, 8, 8)}, tmp_path / "nolabels.pt")
    with pytest.raises(ValueError, match="labels"):
        training_batches(tiny_latent_dit, f"latents:{tmp_path / 'nolabels.pt'}", batch_size=2)


def test_an_unknown_source_names_the_accepted_ones(tiny_latent_dit):
    with pytest.raises(ValueError, match="imagefolder:PATH"):
        training_batches(tiny_latent_dit, "imagenet", batch_size=2)


# ---- ImageNet-style folders, VAE-encoded on the fly ---------------------------------------------

@pytest.fixture
def tiny_vae(tmp_path):
    """A random AutoencoderKL with sd-vae's layout at toy width (8x down, 4 latent channels), saved locally."""
    from diffusers.models import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4)
    vae.save_pretrained(tmp_path / "vae")
    return tmp_path / "vae"


@pytest.fixture
def image_folder(tmp_path):
    """Two classes of two non-square RGB images each, as ImageNet's train folder is laid out."""
    rng = np.random.default_rng(0)
    for cls in ("n01440764", "n01443537"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(tmp_path / "train" / cls / f"{i}.png")
    return tmp_path / "train"


def test_an_image_folder_is_centre_cropped_and_encoded_to_the_models_latent_shape(tiny_latent_dit, tiny_vae, image_folder):
    x, y = next(training_batches(tiny_latent_dit, f"imagefolder:{image_folder}", batch_size=2, seed=0, vae_path=str(tiny_vae)))
    assert tuple(x.shape) == (2, 4, 8, 8) and set(y.tolist()) <= {0, 1}
    assert torch.isfinite(x).all()


def test_image_folder_batches_repeat_for_the_same_seed(tiny_latent_dit, tiny_vae, image_folder):
    first = [next(training_batches(tiny_latent_dit, f"imagefolder:{image_folder}", batch_size=4, seed=3,
                                   vae_path=str(tiny_vae))) for _ in range(2)]
    assert torch.equal(first[0][0], first[1][0]) and torch.equal(first[0][1], first[1][1])


def test_a_pixel_space_model_refuses_image_folders(image_folder):
    from harness import load_model

    with pytest.raises(ValueError, match="pixel-space"):
        next(training_batches(load_model("embedded/digits-8"), f"imagefolder:{image_folder}", batch_size=2))
