"""The CLI's input pipelines against NumPy references of the official recipe."""

import hashlib
import os

import numpy as np
import pytest

from keras_ssam.experiments import data

FILL = (101.0, 102.0, 103.0)


def small(x, y, batch_size=100, seed=0, augment=True, cutout=True, mean=FILL):
    info = data.DatasetInfo("t", 10, x.shape[1:], len(y), len(y), mean, (1.0, 1.0, 1.0))
    train, _, info = data.small_pipelines(
        x, y, x, y, info, batch_size, seed, augment, cutout, drop_remainder=True
    )
    return train, info


def coordinate_images(n):
    """Pixel (r, c) of image k holds (r + 1, c + 1, k % 250 + 1): the source of
    every output pixel can be read off its value; 0 is padding."""
    r, c = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    x = np.zeros((n, 32, 32, 3), "uint8")
    x[..., 0], x[..., 1] = r + 1, c + 1
    x[..., 2] = (np.arange(n) % 250 + 1)[:, None, None]
    return x


def reference_crop_flip(image, top, left, flip):
    """torchvision RandomCrop(32, padding=4) at (top, left), then the flip."""
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    out = padded[top : top + 32, left : left + 32]
    return out[:, ::-1] if flip else out


def test_crop_and_flip_match_torchvision_exactly_and_uniformly():
    n = 2000
    x = coordinate_images(n)
    y = np.arange(n) % 10
    train, _ = small(x, y, cutout=False)
    tops, lefts, flips = [], [], []
    for images, _ in train:
        for image in images.numpy():
            k = int(image[..., 2].max()) - 1
            inside = image[..., 0] > 0
            i, j = np.argwhere(inside)[0]
            top = int(image[i, j, 0]) - 1 - i + 4
            # A flipped image's columns decrease left to right.
            row = image[i][inside[i]]
            flip = len(row) > 1 and row[1, 1] < row[0, 1]
            col = int(image[i, j, 1]) - 1
            left = (31 - j if flip else j) - col
            left = 4 - left
            matches = [
                kk for kk in range(k, n, 250)
                if np.array_equal(image, reference_crop_flip(x[kk], top, left, flip))
            ]  # fmt: skip
            assert matches, (top, left, flip)
            tops.append(top)
            lefts.append(left)
            flips.append(flip)
    assert len(tops) == n
    # Offsets 0..8 uniformly (each 1/9): 2000 draws, 4.5 standard deviations.
    for offsets in (tops, lefts):
        counts = np.bincount(offsets, minlength=9)
        assert len(counts) == 9
        assert np.all(np.abs(counts - n / 9) < 4.5 * np.sqrt(n * (1 / 9) * (8 / 9))), counts
    assert abs(np.mean(flips) - 0.5) < 4.5 * np.sqrt(0.25 / n)


def holes(images, fill=FILL):
    return np.all(images == np.asarray(fill, "float32"), axis=-1)


def test_cutout_is_the_official_16x16_with_p_half():
    n = 2000
    x = np.full((n, 32, 32, 3), 200, "uint8")
    train, _ = small(x, np.zeros(n, "int64"), augment=True)
    cut, full, sizes = 0, 0, []
    for images, _ in train:
        for hole in holes(images.numpy()):
            if not hole.any():
                continue
            cut += 1
            rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
            # One axis-aligned rectangle, contiguous, filled completely.
            assert hole.sum() == len(rows) * len(cols)
            assert rows[-1] - rows[0] + 1 == len(rows) and cols[-1] - cols[0] + 1 == len(cols)
            touches = rows[0] == 0 or cols[0] == 0 or rows[-1] == 31 or cols[-1] == 31
            if not touches:
                assert (len(rows), len(cols)) == (16, 16)
            # Clipped at the border: the centre is inside, so >= 8 rows remain.
            assert 8 <= len(rows) <= 16 and 8 <= len(cols) <= 16
            full += (len(rows), len(cols)) == (16, 16)
            sizes.append((len(rows), len(cols)))
    assert abs(cut / n - 0.5) < 4.5 * np.sqrt(0.25 / n), cut / n
    # A centre row c keeps all 16 rows iff 8 <= c <= 24: (17/32)^2 of the cut images.
    p_full = (17 / 32) ** 2
    assert abs(full / cut - p_full) < 4.5 * np.sqrt(p_full * (1 - p_full) / cut), full / cut


def test_cutout_hole_is_exactly_zero_after_the_models_normalization():
    mean, std = data.STATS["cifar10"]
    info = data.DatasetInfo("cifar10", 10, (32, 32, 3), 200, 0, mean, std)
    x = np.random.default_rng(0).integers(0, 255, size=(200, 32, 32, 3)).astype("uint8")
    train, _, info = data.small_pipelines(x, np.zeros(200, "int64"), x, np.zeros(200, "int64"),
                                           info, 200, 0, True, True, True)  # fmt: skip
    images = next(iter(train))[0].numpy()
    hole = holes(images, mean)
    assert 0.3 < hole.any(axis=(1, 2)).mean() < 0.7
    normalized = data.preprocessing_layers(info)(images).numpy()
    assert np.all(normalized[hole] == 0.0)
    assert np.all(np.abs(normalized[~hole]).max(-1) > 0)


def test_training_batches_are_full_and_the_remainder_is_dropped():
    train, _, info = data.load("digits", batch_size=64)
    assert info.num_train == 1437 and info.steps_per_epoch == 1437 // 64 == 22
    sizes = [len(b[1]) for b in train]
    assert sizes == [64] * 22 and int(train.cardinality()) == 22
    _, test, _ = data.load("digits", batch_size=64)
    assert sum(len(b[1]) for b in test) == 360  # evaluation keeps every example
    info = data.DatasetInfo("c", 10, (32, 32, 3), 50_000, 0)
    assert data.steps_per_epoch(info, 128, True) == 390  # the official loader's 390 steps


def test_too_few_examples_for_one_batch_fail_clearly():
    with pytest.raises(ValueError, match="batch_size=4096"):
        data.load("digits", batch_size=4096)
    with pytest.raises(ValueError, match="received batch_size=0"):
        data.load("digits", batch_size=0)


class Recorder:
    """A model whose eager train step records the labels of every batch."""

    def __init__(self):
        import keras

        self.seen = []
        recorder = self

        class Model(keras.Model):
            def train_step(self, batch):
                recorder.seen.append(np.asarray(batch[1]))
                return {"seen": float(len(recorder.seen))}

        inputs = keras.Input((8, 8, 1))
        self.model = Model(inputs, keras.layers.Flatten()(inputs))
        self.model.compile(run_eagerly=True)


def test_fit_epochs_differ_without_the_epoch_callback():
    train, _, info = data.load("digits", batch_size=64)
    rec = Recorder()
    rec.model.fit(train, epochs=2, verbose=0)
    epoch0, epoch1 = np.concatenate(rec.seen[:22]), np.concatenate(rec.seen[22:])
    assert len(rec.seen) == 44
    assert not np.array_equal(epoch0, epoch1)
    assert int(info.epoch.numpy()) == 2  # each pass took the next epoch number


def test_epoch_callback_keys_the_stream_by_fits_epoch():
    train, _, info = data.load("digits", batch_size=64)
    rec = Recorder()
    rec.model.fit(train, epochs=2, verbose=0, callbacks=[data.epoch_callback(info)])
    # A reader between epochs (FisherMask) does not consume an epoch.
    list(train.take(1))
    # A "resumed" run: a fresh stream, started at epoch 1, repeats epoch 1.
    train2, _, info2 = data.load("digits", batch_size=64)
    rec2 = Recorder()
    rec2.model.fit(train2, epochs=2, initial_epoch=1, verbose=0,
                   callbacks=[data.epoch_callback(info2)])  # fmt: skip
    np.testing.assert_array_equal(np.concatenate(rec.seen[22:]), np.concatenate(rec2.seen))
    assert not np.array_equal(np.concatenate(rec.seen[:22]), np.concatenate(rec.seen[22:]))


def test_augmented_stream_is_bitwise_repeatable_per_epoch():
    x = np.random.default_rng(1).integers(0, 255, size=(300, 32, 32, 3)).astype("uint8")
    y = np.arange(300) % 10
    train, info = small(x, y)
    first = np.concatenate([b[0].numpy() for b in train])
    second = np.concatenate([b[0].numpy() for b in train])
    assert not np.array_equal(first, second)
    again, info2 = small(x, y)
    np.testing.assert_array_equal(first, np.concatenate([b[0].numpy() for b in again]))
    info2.follow.assign(1)
    info2.epoch.assign(1)
    np.testing.assert_array_equal(second, np.concatenate([b[0].numpy() for b in again]))


def test_imagenet_size_folder_stream_advances_each_epoch(tmp_path):
    # The stream of examples/imagenet_resnet50.py: each pass a new order and crops.
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            os.makedirs(tmp_path / split / cls)
            for i in range(4):
                image = rng.integers(0, 255, size=(90, 120, 3)).astype("uint8")
                tf.io.write_file(str(tmp_path / split / cls / f"{i}.png"), tf.io.encode_png(image))
    train, _, info = data.load(f"folder:{tmp_path}", batch_size=4)
    assert info.large and info.steps_per_epoch == 2
    first = np.concatenate([b[0].numpy() for b in train])
    second = np.concatenate([b[0].numpy() for b in train])
    assert first.shape == (8, 224, 224, 3) and not np.array_equal(first, second)
    # New crops, not only a new order: no image of epoch 1 is an image of epoch 0 (or its flip).
    for image in second:
        assert not any(np.array_equal(image, f) or np.array_equal(image, f[:, ::-1]) for f in first)
    info.follow.assign(1)
    info.epoch.assign(1)
    np.testing.assert_array_equal(second, np.concatenate([b[0].numpy() for b in train]))


def _read(stream):
    batches = [(x.numpy(), y.numpy()) for x, y in stream]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def _by_content(images, labels):
    """`(label, digest of the pixels)` of every image, sorted."""
    return sorted((int(y), hashlib.sha1(x.tobytes()).hexdigest()) for x, y in zip(images, labels))


def test_large_tfds_training_stream_honours_augment_false():
    # The stream `keras-ssam analyze --dataset imagenet2012 --split train` reads.
    tfds = pytest.importorskip("tensorflow_datasets")
    n = 6

    def load(augment):
        return data.load("imagenet2012", batch_size=4, train_limit=n, test_limit=n,
                         augment=augment, drop_remainder=False)[0]  # fmt: skip

    with tfds.testing.mock_data(num_examples=n):
        raw = tfds.load("imagenet2012", split="train", as_supervised=True)
        # The deterministic evaluation preprocessing (resize 256, center crop 224).
        reference = _by_content(*_read(data.large_test_pipeline(raw, 4)))
        assert len(reference) == n and len({b for _, b in reference}) == n
        train = load(augment=False)
        first, second = _read(train), _read(train)  # two epochs
        assert first[0].shape == (n, 224, 224, 3)
        # Every training image once, as the evaluation sees it ...
        assert _by_content(*first) == reference
        # ... and the same on every pass, in the same order (each pass of an
        # analysis, e.g. every Hessian-vector product, sees the same examples).
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(first[1], second[1])

        train = load(augment=True)
        first, second = _read(train), _read(train)
        assert _by_content(*first) != _by_content(*second)  # new crops each epoch
        plain = {digest for _, digest in reference}
        shown = _by_content(*first) + _by_content(*second)
        assert not any(digest in plain for _, digest in shown)
