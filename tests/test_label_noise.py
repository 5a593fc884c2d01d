"""`--label-noise` and validation splits of the in-memory datasets (issue 29)."""

import numpy as np
import pytest

from keras_ssam.experiments import data


def test_noisy_labels_flip_a_seeded_fraction_to_a_uniform_other_class():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 10, 20_000)
    noisy = data.noisy_labels(labels, 0.4, 10, seed=3)
    flipped = noisy != labels
    # Binomial(20000, 0.4): sd 69; 5 sd either side.
    assert abs(flipped.sum() - 8000) < 350
    # A flipped label is never its own class, and every other class is equally likely.
    shift = (noisy[flipped] - labels[flipped]) % 10
    counts = np.bincount(shift, minlength=10)
    assert counts[0] == 0
    assert np.all(np.abs(counts[1:] / flipped.sum() - 1 / 9) < 0.015)
    np.testing.assert_array_equal(noisy, data.noisy_labels(labels, 0.4, 10, seed=3))
    assert np.any(noisy != data.noisy_labels(labels, 0.4, 10, seed=4))
    np.testing.assert_array_equal(data.noisy_labels(labels, 0.0, 10, seed=3), labels)


def pairs(batches):
    """(image bytes, label) of every example of a pass, sorted: a multiset of examples."""
    return sorted(
        (x.tobytes(), int(label))
        for images, labels in batches.as_numpy_iterator()
        for x, label in zip(images, labels)
    )


def test_load_puts_noise_on_the_training_labels_once_and_keeps_the_test_labels_clean():
    options = dict(batch_size=64, seed=2, drop_remainder=False)
    clean_train, clean_test, _ = data.load("digits", **options)
    train, test, info = data.load("digits", label_noise=0.4, **options)
    assert pairs(test) == pairs(clean_test)
    first, second = pairs(train), pairs(train)  # two epochs, two orders
    assert first == second  # the noise is drawn once, not per epoch
    clean = pairs(clean_train)
    assert [x for x, _ in first] == [x for x, _ in clean]
    wrong = np.mean([a != b for (_, a), (_, b) in zip(first, clean)])
    assert 0.33 < wrong < 0.47 and info.num_train == len(clean)


def test_validation_split_is_carved_from_the_training_examples():
    options = dict(batch_size=64, seed=2, drop_remainder=False)
    clean_train, clean_test, _ = data.load("digits", **options)
    train, validation, info = data.load("digits", validation_split=0.25, **options)
    held, kept = pairs(validation), pairs(train)
    assert (info.num_train, info.num_test) == (len(kept), len(held)) == (1078, 359)
    assert sorted(held + kept) == pairs(clean_train)
    test_images = {x for x, _ in pairs(clean_test)}
    assert not test_images & {x for x, _ in held}


@pytest.mark.parametrize(
    "kwargs,message",
    [(dict(label_noise=1.0), "label_noise=1.0"), (dict(validation_split=0.0), "validation_split")],
)
def test_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.load("digits", **kwargs)
