"""The shared resampling plan and the intervals built on it."""
import numpy as np
import pytest

from harness import bootstrap


def test_the_plan_depends_only_on_the_image_count():
    assert np.array_equal(bootstrap.resample_counts(50), bootstrap.resample_counts(50))
    assert bootstrap.resample_counts(50).sum(axis=1).tolist() == [50] * bootstrap.REPLICATES


def test_replicates_survive_encoding_to_float16_offsets():
    reps = 90 + np.random.default_rng(0).normal(0, 2, 400)
    assert bootstrap.decode(90.0, bootstrap.encode(90.0, reps)) == pytest.approx(reps, abs=5e-3)


def test_a_paired_difference_resolves_what_unpaired_spreads_hide():
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 5, 200)  # image-to-image variation common to both cells
    a, b = shared, shared + 0.5 + rng.normal(0, 0.2, 200)
    counts = bootstrap.resample_counts(200)
    diff = bootstrap.interval(float((b - a).mean()), counts @ (b - a) / 200)
    alone = bootstrap.interval(float(a.mean()), counts @ a / 200)
    assert diff.significant and diff.low > 0.4
    assert alone.high - alone.low > 5 * (diff.high - diff.low)


def test_an_interval_around_zero_is_not_significant():
    reps = np.random.default_rng(1).normal(0, 1, 400)
    assert not bootstrap.interval(0.1, reps).significant


def test_seed_sets_add_their_spread_to_the_interval():
    tight = [np.random.default_rng(s).normal(0, 0.1, 400) for s in range(3)]
    single = bootstrap.interval(*bootstrap.over_seed_sets([0.0], tight[:1]))
    spread = bootstrap.interval(*bootstrap.over_seed_sets([-3.0, 0.0, 3.0], [t + p for t, p in zip(tight, (-3, 0, 3))]))
    assert spread.high - spread.low > 5 * (single.high - single.low)
