"""The embedded zoo: shipped digits DiTs load offline, their sha256 is checked, the manifest says how they were made."""
import json
import shutil

import numpy as np
import pytest
import torch

from harness import build_model, load_model, sample
from harness.models import zoo
from harness.provenance import sha256_file
from harness.training import TrainConfig, train_embedded

SHIPPED = sorted(zoo.EMBEDDED_ARCHS)
MANIFEST_FIELDS = ("name", "architecture", "resolution", "data_hash", "training_command", "steps", "final_loss",
                   "device", "wall_time_s", "sha256", "file")


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """A zoo folder holding a 2-step digits-8 run, installed the way the shipped ones are."""
    root = tmp_path_factory.mktemp("zoo")
    train_embedded(TrainConfig(name="embedded/digits-8", steps=2, batch_size=4, log_every=1), root / "run", progress=False)
    zoo.install_run(root / "run", command="test", zoo_dir=root / "zoo")
    return root / "zoo"


def test_build_model_gives_the_embedded_architecture_in_pixel_space():
    model = build_model("embedded/digits-8")
    assert model.spec.vae is None and model.spec.family == "dit"
    assert model.spec.latent_shape == (1, 8, 8) and model.num_tokens == 16


def test_build_model_rejects_another_image_size_by_name():
    with pytest.raises(ValueError, match="accepted: 16"):
        build_model("embedded/digits-16", image_size=32)


def test_unknown_embedded_name_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="embedded/digits-16"):
        zoo.load_embedded("embedded/digits-99")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_without_a_path_and_checks_its_hash(name):
    model = load_model(name)
    entry = zoo.shipped_models()[name]
    assert model.checkpoint_sha256 == entry["sha256"] == sha256_file(model.checkpoint_path)
    assert not model.training and model.spec.name == name and model.spec.vae is None


@pytest.mark.parametrize("name", SHIPPED)
def test_manifest_records_how_each_model_was_made(name):
    entry = zoo.shipped_models()[name]
    assert all(entry.get(field) not in (None, "") for field in MANIFEST_FIELDS)
    assert entry["resolution"] == zoo.EMBEDDED_ARCHS[name]["input_size"]
    assert "python -m harness train embedded" in entry["training_command"]


def test_zoo_fits_in_15_megabytes():
    size = sum(p.stat().st_size for p in zoo.ZOO_DIR.iterdir() if p.is_file())
    assert size <= 15 * 2**20


def test_installed_run_loads_from_its_zoo(tiny_zoo):
    model = zoo.load_embedded("digits-8", zoo_dir=tiny_zoo)
    entry = json.loads((tiny_zoo / "manifest.json").read_text())["embedded/digits-8"]
    assert entry["steps"] == 2 and model.checkpoint_sha256 == entry["sha256"]


def test_corrupt_checkpoint_is_refused(tiny_zoo, tmp_path):
    broken = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, broken)
    path = broken / "digits-8.pt"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        zoo.load_embedded("embedded/digits-8", zoo_dir=broken)


def test_missing_model_names_the_training_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="train embedded --name digits-16"):
        zoo.load_embedded("embedded/digits-16", zoo_dir=tmp_path)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_samples_uint8_digits(name):
    model = load_model(name)
    out = sample(model, class_labels=[3, 7], seeds=[0, 1], steps=3, cfg_scale=1.5)
    size = model.spec.image_size
    assert out.images.shape == (2, size, size, 1) and out.images.dtype == np.uint8
    assert torch.isfinite(out.latents).all()


@pytest.mark.parametrize("name", SHIPPED)
def test_manifest_data_hash_is_the_current_train_split(name):
    from harness.data import load_digits_split

    entry = zoo.shipped_models()[name]
    assert entry["data_hash"] == load_digits_split("train", entry["resolution"]).data_hash
