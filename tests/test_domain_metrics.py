"""Domain metrics: the digit classifier is a torch-fidelity feature extractor; reference statistics are cached."""
import numpy as np
import pytest
import torch_fidelity

from harness.cache import CACHE_ENV
from harness.data import load_digits_split
from harness.metrics.quality import ImageArrayDataset
from harness.models.vae import to_uint8
from harness.metrics import domain


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


def real_images(split: str, resolution: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    data = load_digits_split(split, resolution)
    return to_uint8(data.images)[:n], data.labels[:n].numpy()


def test_classifier_reaches_097_on_the_heldout_split():
    assert domain.heldout_accuracy(domain.load_classifier()) >= 0.97


def test_extractor_registers_once_with_torch_fidelity():
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    assert domain.register_domain_extractor() == domain.register_domain_extractor() == domain.DOMAIN_EXTRACTOR
    assert domain.DOMAIN_EXTRACTOR in FEATURE_EXTRACTORS_REGISTRY


def test_torch_fidelity_computes_fid_with_the_domain_features():
    images, _ = real_images("train", 8, 100)
    reference, _ = real_images("heldout", 8, 100)
    result = torch_fidelity.calculate_metrics(
        input1=ImageArrayDataset(images), input2=ImageArrayDataset(reference), fid=True, cuda=False,
        feature_extractor=domain.register_domain_extractor(), feature_layer_fid="fc", save_cpu_ram=True, verbose=False,
    )
    assert 0 < result["frechet_inception_distance"] < 500


def test_domain_metrics_returns_every_documented_key():
    images, labels = real_images("train", 8, 60)
    assert set(domain.domain_metrics(images, "embedded/digits-8", labels=labels)) == set(domain.DOMAIN_KEYS)


def test_real_digits_score_far_better_than_noise():
    images, labels = real_images("train", 16, 200)
    noise = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    real = domain.domain_metrics(images, 16, labels=labels)
    fake = domain.domain_metrics(noise, 16, labels=labels)
    assert real[domain.DOMAIN_FID] * 5 < fake[domain.DOMAIN_FID]
    assert real[domain.DOMAIN_ACCURACY] >= 0.97 > 0.5 > fake[domain.DOMAIN_ACCURACY]
    assert real[domain.DOMAIN_PRECISION] > fake[domain.DOMAIN_PRECISION]


def test_reference_statistics_are_cached_under_their_content_hash():
    images, _ = real_images("train", 8, 60)
    domain.domain_metrics(images, 8)
    _, name = domain.reference_images(8)
    cached = sorted(p.name for p in domain.cache_dir().iterdir())
    assert name.split("-")[3] == load_digits_split("heldout", 8).data_hash[:16]
    assert any(p.startswith(name) and "stat-fid" in p for p in cached)


def test_wrong_resolution_is_refused_by_name():
    images, _ = real_images("train", 8, 20)
    with pytest.raises(ValueError, match="16x16"):
        domain.domain_metrics(images, "embedded/digits-16")


def test_unknown_feature_layer_lists_the_accepted_ones():
    images, _ = real_images("train", 8, 20)
    with pytest.raises(ValueError, match="conv, fc, logits"):
        domain.domain_metrics(images, 8, feature_layer="pool")
