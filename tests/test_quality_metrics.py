"""Quality metrics through the real torch-fidelity and clean-fid code, with a stand-in Inception weights file.

The stand-in has torch-fidelity's exact layout (the state dict of its own
`FeatureExtractorInceptionV3`) and random He-initialised values, so every code path runs
offline and features still differ between images; numbers are meaningless, relations hold.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from harness.metrics import quality
from harness.metrics.quality import (FID, INCEPTION_ENV, INCEPTION_WEIGHTS_FILE, IS_MEAN, KID_MEAN, NUM_REFERENCE,
                                     NUM_SAMPLES, POOL, PRECISION, RECALL, SFID, SKIPPED, compute_quality_metrics,
                                     create_inception, reference_statistics)
from harness.metrics.sfid import SPATIAL_DIM, SPATIAL_MODULE, spatial_features

N = 8  # images per set: enough for every metric, few enough for 2 CPU cores


def write_standin_inception_weights(folder) -> str:
    """torch-fidelity's Inception state dict with random values, saved under the official file name."""

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # the constructor insists on loading a file: give it an empty one and skip it

    empty = folder / "empty.pth"
    torch.save({}, empty)
    torch.manual_seed(0)
    net = Unloaded("inception-v3-compat", [POOL], feature_extractor_weights_path=str(empty))
    for module in net.modules():  # He init keeps activations alive through 40+ layers
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.nn.init.normal_(net.fc.weight, std=2048**-0.5)
    path = folder / INCEPTION_WEIGHTS_FILE
    torch.save(net.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quality")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE_DIR", str(folder / "cache"))
        mp.delenv(INCEPTION_ENV, raising=False)
        yield folder


@pytest.fixture(scope="module")
def weights(workdir):
    return write_standin_inception_weights(workdir)


@pytest.fixture(scope="module")
def generated():
    return np.random.default_rng(0).integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference_images():
    base = np.random.default_rng(1).integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)
    return (base // 2 + 64).astype(np.uint8)  # a different distribution: lower contrast


@pytest.fixture(scope="module")
def reference_npz(workdir, reference_images):
    path = workdir / "reference_images.npz"
    np.savez(path, arr_0=reference_images)
    return path


@pytest.fixture(scope="module")
def reference_folder(workdir, reference_images):
    folder = workdir / "reference_folder"
    folder.mkdir()
    for i, image in enumerate(reference_images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def all_metrics(generated, reference_npz, weights):
    return compute_quality_metrics(generated, reference_npz, inception_weights=weights)


# ---- missing weights -----------------------------------------------------------------------

def test_missing_weights_give_one_line_naming_the_file_and_where_it_goes_and_the_run_continues(
        generated, reference_npz, workdir, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(workdir / "empty_hub"))
    monkeypatch.setattr(quality, "_warned", set())
    result = compute_quality_metrics(generated, reference_npz, inception_weights=workdir / "absent.pth")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and INCEPTION_WEIGHTS_FILE in err[0]
    assert str(workdir / "empty_hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE) in err[0]
    assert set(result[SKIPPED]) == {"fid", "sfid", "is", "kid", "prc"} and FID not in result
    assert result[NUM_SAMPLES] == N


def test_weights_are_found_through_the_environment_variable(weights, monkeypatch):
    monkeypatch.setenv(INCEPTION_ENV, weights)
    assert str(quality.find_inception_weights()) == weights


# ---- torch-fidelity backend -----------------------------------------------------------------

def test_standin_weights_load_strictly_through_torch_fidelitys_own_extractor(weights):
    extractor = create_inception(weights)
    assert isinstance(extractor, FeatureExtractorInceptionV3)
    assert extractor.features_list == [POOL, "logits_unbiased"]


def test_every_metric_of_the_fid_family_is_computed_against_an_image_reference(all_metrics):
    assert all_metrics[SKIPPED] == {}
    assert all_metrics[NUM_SAMPLES] == all_metrics[NUM_REFERENCE] == N
    assert all_metrics[FID] > 0 and all_metrics[SFID] > 0
    assert all_metrics[IS_MEAN] >= 1.0
    assert 0.0 <= all_metrics[PRECISION] <= 1.0 and 0.0 <= all_metrics[RECALL] <= 1.0
    assert math.isfinite(all_metrics[KID_MEAN]) and all_metrics["kid_subset_size"] == N  # capped to the samples


def test_adm_reference_batch_mu_sigma_are_used_for_fid(all_metrics, reference_images, reference_npz, weights, workdir):
    ref = reference_statistics(reference_npz, None, quality.sha256_file(weights))  # cached by `all_metrics`
    shift = np.zeros_like(ref.mu)
    shift[:4] = 0.5  # |shift|^2 = 1
    adm = workdir / "VIRTUAL_test.npz"  # ADM layout: mu, sigma, mu_s, sigma_s (no images here)
    np.savez(adm, mu=ref.mu + shift, sigma=ref.sigma, mu_s=ref.mu_s, sigma_s=ref.sigma_s)
    # The reference's own images against its statistics moved by `shift`: FID = |shift|^2.
    result = compute_quality_metrics(reference_images, adm, inception_weights=weights, metrics=("fid", "kid"))
    assert result[FID] == pytest.approx(1.0, abs=1e-3)
    assert "arr_0" in result[SKIPPED]["kid"]  # KID needs the batch's images


def test_adm_reference_batch_spatial_features_have_adm_dimensions(all_metrics, reference_npz, weights):
    ref = reference_statistics(reference_npz, None, quality.sha256_file(weights))
    assert ref.mu_s.shape == (SPATIAL_DIM,) and ref.sigma_s.shape == (SPATIAL_DIM, SPATIAL_DIM)


def test_adm_reference_batch_is_read_without_pickle(workdir):
    path = workdir / "pickled.npz"
    np.savez(path, mu=np.zeros(3), sigma=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        reference_statistics(path, extractor=None, weights_sha256="none")


def test_reference_statistics_are_cached_by_content_hash(all_metrics, reference_npz, weights, workdir, monkeypatch):
    monkeypatch.setattr(quality, "inception_features", lambda *a, **k: pytest.fail("recomputed a cached reference"))
    sha = quality.sha256_file(weights)
    cached = reference_statistics(reference_npz, None, sha)
    assert cached.key == all_metrics["reference_key"] == quality.reference_key(reference_npz, sha)
    assert (workdir / "cache" / "reference" / f"{cached.key}.npz").is_file()
    assert quality.reference_key(reference_npz, "other weights") != cached.key
    changed = workdir / "changed.npz"
    np.savez(changed, arr_0=np.zeros((N, 32, 32, 3), dtype=np.uint8))
    assert quality.reference_key(changed, sha) != cached.key


def test_unknown_metric_is_rejected_with_the_accepted_ones(generated):
    with pytest.raises(ValueError, match="accepted metrics: fid, sfid, is, kid, prc"):
        compute_quality_metrics(generated, None, metrics=("fid", "lpips"))


# ---- sFID ------------------------------------------------------------------------------------

def test_sfid_features_are_the_first_7_channels_flattened_in_tensorflows_nhwc_order():
    activation = torch.arange(2 * 192 * 17 * 17, dtype=torch.float32).reshape(2, 192, 17, 17)
    flat = spatial_features(activation)
    assert flat.shape == (2, SPATIAL_DIM)
    n, c, h, w = 1, 5, 3, 11
    assert flat[n, (h * 17 + w) * 7 + c] == activation[n, c, h, w]


def test_sfid_hook_sits_on_mixed_6d_branch1x1_the_graphs_mixed_6_conv(weights):
    extractor = create_inception(weights)
    module = extractor.get_submodule(SPATIAL_MODULE)
    assert module is extractor.Mixed_6d.branch1x1 and module.conv.out_channels == 192


# ---- clean-fid backend -----------------------------------------------------------------------

@pytest.mark.slow  # clean-fid's scipy sqrtm of a 2048 x 2048 product takes ~10 s on 2 cores
def test_cleanfid_legacy_tensorflow_backend_agrees_with_torch_fidelity_on_the_same_network(
        all_metrics, generated, reference_folder, weights):
    result = compute_quality_metrics(generated, reference_folder, inception_weights=weights, backends=("clean-fid",))
    assert result["cleanfid_mode"] == "legacy_tensorflow" and result["cleanfid_network"] == "torch-fidelity-port"
    assert result["cleanfid_fid"] == pytest.approx(all_metrics[FID], rel=1e-3)
    assert math.isfinite(result["cleanfid_kid"])
