"""Domain metrics: a classifier trained on digits no compared set contains; FID / unbiased KID / PR with replicates."""
import numpy as np
import pytest
import torch_fidelity

from harness import bootstrap
from harness.metrics import domain
from harness.metrics.domain_sets import role_images
from harness.metrics.feature_stats import ReferenceSet, frechet_distance, kernel_distance
from harness.metrics.quality import ImageArrayDataset


def real_images(role: str, resolution: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels, _ = domain.role_uint8(role, resolution)
    return images[:n], labels[:n]


def test_roles_are_disjoint_and_cover_every_digit():
    sets = [{tuple(img.flatten().tolist()) for img in role_images(role, 8)[0].numpy()} for role in
            ("classifier", "reference", "floor")]
    sizes = [len(role_images(role, 8)[1]) for role in ("classifier", "reference", "floor")]
    assert sum(sizes) == 1797
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_classifier_reaches_097_on_digits_it_never_saw():
    assert domain.unseen_accuracy(domain.load_classifier()) >= 0.97


def test_fid_matches_torch_fidelity_on_the_same_features():
    images, _ = real_images("floor", 8, 200)
    reference, _ = real_images("reference", 8, 300)
    ours = frechet_distance(domain.raw_features(images), ReferenceSet(domain.raw_features(reference)))[0]
    theirs = torch_fidelity.calculate_metrics(
        input1=ImageArrayDataset(images), input2=ImageArrayDataset(reference), fid=True, cuda=False,
        feature_extractor=domain.register_domain_extractor(), feature_layer_fid="fc", save_cpu_ram=True, verbose=False,
    )["frechet_inception_distance"]
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_kid_is_torch_fidelitys_unbiased_estimator_on_whole_sets():
    images, _ = real_images("floor", 8, 120)
    reference, _ = real_images("reference", 8, 120)
    ours = kernel_distance(domain.raw_features(images), ReferenceSet(domain.raw_features(reference)))[0]
    theirs = torch_fidelity.calculate_metrics(
        input1=ImageArrayDataset(images), input2=ImageArrayDataset(reference), kid=True, cuda=False,
        feature_extractor=domain.register_domain_extractor(), feature_layer_kid="fc", kid_subsets=1,
        kid_subset_size=120, save_cpu_ram=True, verbose=False,
    )["kernel_inception_distance_mean"]
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_evaluation_features_are_a_fixed_projection_fitted_on_the_classifier_role():
    images, _ = real_images("floor", 8, 10)
    mean, basis, _ = domain.feature_basis()
    assert basis.shape == (128, domain.FEATURE_COMPONENTS)
    assert np.allclose(domain.image_features(images), (domain.raw_features(images) - mean) @ basis)


def test_evaluation_axes_are_whitened_on_the_classifier_role():
    images, _, _ = domain.role_uint8("classifier", domain.CLASSIFIER_SIZE)
    features = domain.image_features(images)
    assert np.allclose(features.mean(axis=0), 0.0, atol=1e-9)
    assert np.allclose(features.std(axis=0), 1.0)  # every axis in units of the real digits' spread along it


def test_records_name_the_whitened_feature_space():
    assert domain.domain_provenance("embedded/digits-8")["domain_feature_space"] == "fc-pca32-whitened"


def test_unit_weights_reproduce_the_point_value():
    images, _ = real_images("floor", 8, 64)
    reference = domain.reference_set(8)
    features = domain.image_features(images)
    ones = np.ones((2, 64))
    # replicates are float32 (their offsets matter, stored as float16): agree with the float64 point to 1e-4
    assert frechet_distance(features, reference, ones) == pytest.approx(frechet_distance(features, reference)[0], rel=1e-4)
    assert kernel_distance(features, reference, ones) == pytest.approx(kernel_distance(features, reference)[0])


def test_domain_metrics_returns_every_documented_key_and_replicates():
    images, labels = real_images("floor", 8, 60)
    out = domain.domain_metrics(images, "embedded/digits-8", labels=labels, replicates=50)
    assert set(out) == set(domain.DOMAIN_KEYS)
    assert set(domain.BOOTSTRAPPED) <= set(out[domain.BOOTSTRAP_KEY])
    assert len(bootstrap.decode(out[domain.DOMAIN_FID], out[domain.BOOTSTRAP_KEY][domain.DOMAIN_FID])) == 50


def test_real_digits_score_far_better_than_noise():
    images, labels = real_images("floor", 16, 200)
    noise = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    real = domain.domain_metrics(images, 16, labels=labels, replicates=0)
    fake = domain.domain_metrics(noise, 16, labels=labels, replicates=0)
    assert real[domain.DOMAIN_FID] * 5 < fake[domain.DOMAIN_FID]
    assert real[domain.DOMAIN_ACCURACY] >= 0.97 > 0.5 > fake[domain.DOMAIN_ACCURACY]
    assert real[domain.DOMAIN_PRECISION] > fake[domain.DOMAIN_PRECISION]


def test_floor_sets_of_two_seed_sets_are_disjoint():
    first, _ = domain.floor_images(8, 100, 0)
    second, _ = domain.floor_images(8, 100, 1)
    assert not {img.tobytes() for img in first} & {img.tobytes() for img in second}


def test_floor_larger_than_the_floor_role_is_refused_with_the_limit():
    with pytest.raises(ValueError, match="at most 360 images per seed set"):
        domain.floor_images(8, 400, 1)


def test_floor_has_the_class_balance_of_a_cells_labels():
    _, labels = domain.floor_images(8, 100, 0)
    assert labels.tolist() == [i % 10 for i in range(100)]


def test_wrong_resolution_is_refused_by_name():
    images, _ = real_images("floor", 8, 20)
    with pytest.raises(ValueError, match="16x16"):
        domain.domain_metrics(images, "embedded/digits-16")


def test_unknown_feature_layer_lists_the_accepted_ones():
    images, _ = real_images("floor", 8, 20)
    with pytest.raises(ValueError, match="conv, fc, logits"):
        domain.domain_metrics(images, 8, feature_layer="pool")


@pytest.mark.parametrize("name", ["smoke", "methods"])
def test_every_seed_set_of_the_embedded_suites_has_a_disjoint_floor_of_its_size(name):
    from harness.suite import load_suite

    suite = load_suite(name)
    for model in suite.models:
        assert all(domain.floor_available(model.name, suite.num_samples, i) for i in range(len(suite.seeds)))
