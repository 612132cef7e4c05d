"""Model registry and checkpoints: the official state-dict layouts, strict loading, and the errors."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from conftest import randomize
from harness import build_model, load_model
from harness.models import MODELS

MANIFESTS = json.loads((Path(__file__).parent / "fixtures" / "dit_state_dict_manifests.json").read_text())
TINY_DIT = dict(depth=1, hidden_size=32, num_heads=2, num_classes=10)
TINY_LARGE_DIT = dict(depth=1, hidden_size=32, num_heads=2, multiple_of=16, num_classes=10)


def shapes(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in state.items()}


def save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


@pytest.fixture(autouse=True)
def no_checkpoint_caches(tmp_path, monkeypatch):
    """Checkpoint look-ups see only the test's own files, never a user's torch hub cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("HARNESS_CHECKPOINT_DIR", raising=False)


# ---- official layouts --------------------------------------------------------------

@pytest.mark.parametrize("entry", sorted(MANIFESTS))
def test_built_model_has_exactly_the_official_keys_and_shapes(entry):
    name, size = entry.split("@")
    with torch.device("meta"):
        model = build_model(name, image_size=int(size))
    assert shapes(model.state_dict()) == MANIFESTS[entry]


def test_the_manifest_fixture_covers_both_families():
    families = set()
    for entry in MANIFESTS:
        name, size = entry.split("@")
        with torch.device("meta"):
            families.add(build_model(name, image_size=int(size)).spec.family)
    assert families == {"dit", "large-dit"}


@pytest.mark.parametrize("name", ["Large-DiT-600M", "Large-DiT-3B", "Large-DiT-7B",
                                  "DiT_Llama_600M_patch2", "DiT_Llama_3B_patch2", "DiT_Llama_7B_patch2"])
def test_large_dit_names_are_registered_case_insensitively(name):
    assert name in MODELS and name.lower() in MODELS and name.upper() in MODELS


# ---- loading -----------------------------------------------------------------------

@pytest.mark.parametrize("name, arch", [("DiT-S/2", TINY_DIT), ("Large-DiT-600M", TINY_LARGE_DIT)])
def test_load_model_reads_a_raw_state_dict_strictly(name, arch, tmp_path):
    original = randomize(build_model(name, image_size=64, **arch))
    path = save(original.state_dict(), tmp_path / "weights.pt")
    loaded = load_model(name, path, image_size=64, **arch)
    assert not loaded.training
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("name, arch", [("DiT-S/2", TINY_DIT), ("Large-DiT-600M", TINY_LARGE_DIT)])
def test_load_model_takes_the_ema_weights_of_a_training_checkpoint(name, arch, tmp_path):
    ema = randomize(build_model(name, image_size=64, **arch), seed=1).state_dict()
    raw = randomize(build_model(name, image_size=64, **arch), seed=2).state_dict()
    # DiT's train.py also pickles its argparse Namespace, which weights_only=True refuses.
    path = save({"model": raw, "ema": ema, "opt": {}, "args": argparse.Namespace(model=name)}, tmp_path / "0400000.pt")
    loaded = load_model(name, path, image_size=64, **arch).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ema.items())


def test_an_alpha_vllm_release_folder_loads_its_ema_file(tmp_path):
    folder = tmp_path / "240218_3b_bs256_step1350k"
    folder.mkdir()
    ema = randomize(build_model("Large-DiT-3B", image_size=64, **TINY_LARGE_DIT), seed=1).state_dict()
    save(randomize(build_model("Large-DiT-3B", image_size=64, **TINY_LARGE_DIT), seed=2).state_dict(),
         folder / "consolidated.00-of-01.pth")
    save(ema, folder / "consolidated_ema.00-of-01.pth")
    loaded = load_model("Large-DiT-3B", folder, **TINY_LARGE_DIT)
    assert loaded.checkpoint_path == str(folder / "consolidated_ema.00-of-01.pth")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ema.items())


def test_load_model_infers_the_image_size_from_the_positional_grid(tmp_path):
    path = save(build_model("DiT-S/2", image_size=128, **TINY_DIT).state_dict(), tmp_path / "dit.pt")
    model = load_model("DiT-S/2", path, **TINY_DIT)
    assert (model.spec.image_size, model.spec.latent_size, model.num_tokens) == (128, 16, 64)


def test_large_dit_weights_fit_any_image_size_and_default_to_256(tmp_path):
    # RoPE carries no learned positions, so the file does not fix the size; 256 is the released one.
    path = save(build_model("Large-DiT-600M", image_size=64, **TINY_LARGE_DIT).state_dict(), tmp_path / "ldit.pth")
    assert load_model("Large-DiT-600M", path, **TINY_LARGE_DIT).spec.image_size == 256
    assert load_model("Large-DiT-600M", path, image_size=512, **TINY_LARGE_DIT).num_tokens == 1024


def test_load_model_remembers_where_the_weights_came_from(tmp_path):
    path = save(build_model("DiT-S/2", image_size=64, **TINY_DIT).state_dict(), tmp_path / "dit.pt")
    assert load_model("DiT-S/2", path, **TINY_DIT).checkpoint_path == str(path)


def test_checkpoint_is_found_by_file_name_in_the_checkpoint_folder(tmp_path, monkeypatch):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    save(build_model("DiT-S/2", image_size=64, **TINY_DIT).state_dict(), folder / "tiny.pt")
    monkeypatch.setenv("HARNESS_CHECKPOINT_DIR", str(folder))
    monkeypatch.chdir(tmp_path)
    assert load_model("DiT-S/2", "tiny.pt", **TINY_DIT).checkpoint_path == str(folder / "tiny.pt")


# ---- errors ------------------------------------------------------------------------

def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_unknown_model_name_lists_the_accepted_ones():
    with pytest.raises(LookupError) as error:
        build_model("Large-DiT-3b/2")
    message = one_line(error)
    assert "'Large-DiT-3b/2'" in message
    for accepted in ("dit-xl/2", "dit-s/8", "large-dit-600m", "large-dit-7b", "dit_llama_3b_patch2"):
        assert accepted in message
    assert "Did you mean 'large-dit-3b'" in message


def test_unknown_model_name_fails_before_any_file_is_read(tmp_path):
    with pytest.raises(LookupError, match="unknown model 'DiT-XXL/2'"):
        load_model("DiT-XXL/2", tmp_path / "does-not-exist.pt")


@pytest.mark.parametrize("name, size, accepted", [
    ("DiT-XL/2", 100, "multiples of 16"),
    ("DiT-S/8", 96, "multiples of 64"),
    ("DiT-B/4", 0, "multiples of 32"),
    ("Large-DiT-3B", 250, r"multiples of 16 up to 1024"),
    ("DiT_Llama_7B_patch2", 1040, r"multiples of 16 up to 1024"),
])
def test_image_size_that_does_not_fit_is_rejected(name, size, accepted):
    with pytest.raises(ValueError) as error, torch.device("meta"):
        build_model(name, image_size=size)
    message = one_line(error)
    assert f"image_size={size}" in message and name in message
    assert re.search(accepted, message)


def test_checkpoint_of_another_family_names_missing_and_unexpected_keys(tmp_path):
    path = save(build_model("DiT-S/2", image_size=64, **TINY_DIT).state_dict(), tmp_path / "dit.pt")
    with pytest.raises(ValueError) as error:
        load_model("Large-DiT-3B", path, image_size=256)
    message = one_line(error)
    assert "layout of Large-DiT-3B at image size 256" in message
    assert "missing 482 key(s): layers.0." in message
    assert "unexpected 13 key(s): blocks.0." in message
    assert "t_embedder.mlp.0.weight (32, 256) vs expected (1024, 256)" in message


def test_checkpoint_of_another_size_names_the_mismatched_shapes(tmp_path):
    path = save(build_model("DiT-S/2", image_size=64, **TINY_DIT).state_dict(), tmp_path / "dit.pt")
    with pytest.raises(ValueError) as error:
        load_model("DiT-S/2", path)  # the full DiT-S/2, not the tiny one
    message = one_line(error)
    assert "layout of DiT-S/2 at image size 64" in message
    assert "missing 110 key(s): blocks.1." in message  # 11 more blocks of 10 tensors
    assert "shape mismatch" in message and "blocks.0.attn.qkv.bias (96,) vs expected (1152,)" in message


def test_requested_image_size_that_contradicts_the_checkpoint_is_named(tmp_path):
    path = save(build_model("DiT-S/2", image_size=64, **TINY_DIT).state_dict(), tmp_path / "dit.pt")
    with pytest.raises(ValueError, match=r"DiT-S/2 at image size 128.*pos_embed \(1, 16, 32\) vs expected \(1, 64, 32\)"):
        load_model("DiT-S/2", path, image_size=128, **TINY_DIT)


@pytest.mark.parametrize("name, file, source", [
    ("DiT-XL/2", "DiT-XL-2-512x512.pt", "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-512x512.pt"),
    ("DiT_Llama_3B_patch2", "DiT_Llama_3B_patch2.pth", "huggingface.co/Alpha-VLLM/Large-DiT/tree/main/240218_3b"),
    ("Large-DiT-7B", "consolidated.00-of-01.pth", "huggingface.co/Alpha-VLLM/Large-DiT/tree/main/240218_7b"),
])
def test_missing_checkpoint_names_the_file_and_where_it_comes_from(name, file, source, tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_model(name, tmp_path / file, image_size=512 if name == "DiT-XL/2" else None)
    message = one_line(error)
    assert repr(file) in message and source in message
    assert "--checkpoint" in message and "HARNESS_CHECKPOINT_DIR" in message


def test_latent_models_need_a_checkpoint_path():
    with pytest.raises(ValueError, match="'DiT-XL/2' needs a checkpoint path"):
        load_model("DiT-XL/2")


def test_a_file_that_holds_no_state_dict_is_rejected(tmp_path):
    path = save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a dict"):
        load_model("DiT-S/2", path, **TINY_DIT)
