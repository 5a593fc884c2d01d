"""Input pipelines for the CLI: digits, image folders and TensorFlow Datasets.

Small images (CIFAR-sized, up to 64 pixels) are decoded once into uint8
arrays and augmented on the fly with the official SSAM recipe: random crop
with 4 pixels of zero padding, horizontal flip, and Cutout (DeVries & Taylor
2017; `Cutout(size=16, p=0.5)` of the official code: a 16x16 square, clipped
at the border, in about half of the images). Larger images (ImageNet) are
streamed from disk with random resized crops to 224 and a flip for training
and resize-256/center-224 for testing (and for training with `augment=False`).

Crop and flip are Keras' own layers (`RandomTranslation`, `RandomFlip`) run
inside `tf.data`; folders are listed by `keras.utils.image_dataset_from_directory`
and decoded with `tf.io`. The training stream is keyed by `(seed, epoch)`:
the order, the Keras layers' seed state and the Cutout draws are set from it
when an epoch's iterator starts, so a resumed run sees exactly the batches of
an uninterrupted one. Pipelines yield raw pixel values in [0, 255]; the
normalization is a layer of the model (see `preprocessing_layers`), so an
exported model takes raw images.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SMALL_IMAGE_LIMIT = 64
# The official code normalizes CIFAR-100 with the CIFAR-10 statistics too.
_CIFAR = ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7))
STATS = {
    "cifar10": _CIFAR,
    "cifar100": _CIFAR,
    "imagenet": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
}
CUTOUT_SIZE = 16
CUTOUT_PROBABILITY = 0.5
CROP_PADDING = 4


class DatasetError(ValueError):
    """A dataset that cannot be found, read or downloaded."""


@dataclasses.dataclass
class DatasetInfo:
    """Facts about a loaded dataset, and the epoch that keys its training stream.

    `epoch` is read when an epoch's training iterator starts. Without
    `epoch_callback`, every new iterator takes the next epoch number by
    itself (so consecutive `fit()` epochs differ); with it, the callback sets
    the epoch explicitly (so a resumed run repeats the uninterrupted run's
    batches, and a second reader of the stream, e.g. `FisherMask`, sees the
    same epoch instead of consuming one).
    """

    name: str
    num_classes: int
    input_shape: tuple
    num_train: int
    num_test: int
    mean: tuple | None = None
    std: tuple | None = None
    large: bool = False
    steps_per_epoch: int | None = None
    epoch: object = dataclasses.field(default_factory=lambda: tf.Variable(0, dtype="int64"))
    follow: object = dataclasses.field(default_factory=lambda: tf.Variable(0, dtype="int64"))


def preprocessing_layers(info):
    """`Normalization` from raw pixels, as the model's first layer (or None)."""
    if info.mean is None:
        return None
    import keras

    mean = np.asarray(info.mean, "float32")
    var = np.square(np.asarray(info.std, "float32"))
    return keras.layers.Normalization(mean=mean, variance=var, name="normalize")


def describe(name, data_dir=None):
    """What kind of dataset `name` is, without loading it.

    Returns:
        `"digits"`, `"small"` (CIFAR-sized images) or `"large"` (ImageNet-size
        images, or a tfds dataset whose images have no fixed size).
    """
    if name == "digits":
        return "digits"
    if name.startswith("folder:"):
        root = name[len("folder:") :]
        _check_folder(root)
        paths, _, _ = _list_split(root, "train")
        shape = _decode(paths[0]).shape
        return "small" if max(shape[:2]) <= SMALL_IMAGE_LIMIT else "large"
    builder = _tfds_builder(name, data_dir)
    shape = builder.info.features["image"].shape
    return "small" if shape[0] is not None and max(shape[:2]) <= SMALL_IMAGE_LIMIT else "large"


def load(
    name,
    data_dir=None,
    batch_size=128,
    seed=0,
    augment=True,
    cutout=True,
    train_limit=None,
    test_limit=None,
    drop_remainder=True,
    label_noise=0.0,
    validation_split=None,
):
    """Returns `(train, test, info)`: batched `tf.data` pipelines and facts.

    Args:
        name: `"digits"`, `"folder:PATH"` or a tensorflow-datasets name.
        data_dir: tensorflow-datasets data directory. Defaults to `None`.
        batch_size: Batch size of both pipelines. Defaults to `128`.
        seed: Seed of the order and the augmentation. Defaults to `0`.
        augment: Crop and flip the training images. Without it, large
            training images get the test preprocessing (resize 256, center
            crop 224). Defaults to `True`.
        cutout: Also apply Cutout (small images only). Defaults to `True`.
        train_limit: Use a seeded subset of this many training examples.
            Defaults to `None` (all).
        test_limit: The same for the test split. Defaults to `None`.
        drop_remainder: Drop the last incomplete training batch, as the
            official code's `drop_last=True` (CIFAR-10 at batch 128: 390
            steps per epoch). Defaults to `True`.
        label_noise: Float in `[0, 1)`: symmetric noise on the training
            labels (`noisy_labels`, seeded by `seed`), applied once when the
            data is loaded; the test labels stay clean. In-memory datasets
            only (digits, small images). Defaults to `0.0`.
        validation_split: `None`, or a float in `(0, 1)`: a seeded fraction of
            the (noisy) training examples is held out and returned in place
            of the test pipeline (`info.num_test` counts it); the test set is
            not read. In-memory datasets only. Defaults to `None`.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be an integer >= 1; received batch_size={batch_size!r}."
        )
    if not 0 <= label_noise < 1:
        raise ValueError(f"`label_noise` must be in [0, 1); received label_noise={label_noise!r}.")
    if validation_split is not None and not 0 < validation_split < 1:
        raise ValueError(
            f"`validation_split` must be in (0, 1); received validation_split={validation_split!r}."
        )
    options = dict(
        batch_size=batch_size,
        seed=seed,
        augment=augment,
        cutout=cutout,
        drop_remainder=drop_remainder,
        label_noise=label_noise,
        validation_split=validation_split,
    )
    if name == "digits":
        (x, y), (xt, yt) = _digits(seed)
        info = DatasetInfo("digits", 10, x.shape[1:], len(y), len(yt))
        options["augment"] = False
    elif name.startswith("folder:"):
        return _folder(name[len("folder:") :], train_limit, test_limit, **options)
    else:
        return _tfds(name, data_dir, train_limit, test_limit, **options)
    x, y = _limit(x, y, train_limit, seed)
    xt, yt = _limit(xt, yt, test_limit, seed + 1)
    info.num_train, info.num_test = len(y), len(yt)
    return small_pipelines(x, y, xt, yt, info, **options)


def _digits(seed):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def _limit(x, y, limit, seed):
    """A seeded subset (sources are often grouped by class: shuffle first)."""
    if limit is None or limit >= len(y):
        return x, y
    take = np.sort(np.random.default_rng(seed).permutation(len(y))[:limit])
    return x[take], y[take]


def steps_per_epoch(info, batch_size, drop_remainder):
    """Training steps per epoch of `info` at `batch_size` (`drop_remainder`: full batches only)."""
    if drop_remainder:
        if info.num_train < batch_size:
            raise ValueError(
                f"{info.num_train} training examples cannot fill one batch of "
                f"batch_size={batch_size}: lower the batch size."
            )
        return info.num_train // batch_size
    return -(-info.num_train // batch_size)


# ------------------------------------------------------------ the epoch stream
def _epoch_stream(
    count, info, seed, example, batch_size, drop_remainder, augmenters=(), batch_fn=None
):
    """Batches of `example(index, example_seed)` in an order that depends only
    on `(seed, epoch)`.

    The epoch is taken when an epoch's iterator starts: `info.epoch` as set by
    `epoch_callback`, or, without it, the next epoch number (see
    `DatasetInfo`). At the same moment the seed state of every Keras layer in
    `augmenters` is set from `(seed, epoch)`; the layers then run on whole
    batches in order (a sequential map), so their draws depend on
    `(seed, epoch, batch)` alone. `batch_fn(images, batch_seed)` (Cutout) and
    the per-example seeds are keyed the same way.
    """
    generators = [layer.generator for layer in augmenters]

    def order(_):
        epoch = tf.cond(
            info.follow.read_value() > 0,
            info.epoch.read_value,
            lambda: info.epoch.assign_add(1, read_value=True) - 1,
        )
        resets = [
            g.state.assign(tf.cast(tf.stack([seed * 1_000_003 + 7 * i + 1, epoch]), g.state.dtype))
            for i, g in enumerate(generators)
        ]
        with tf.control_dependencies(resets):
            perm = tf.random.experimental.stateless_shuffle(
                tf.range(count, dtype="int64"), seed=tf.stack([tf.constant(seed, "int64"), epoch])
            )
        seeds = tf.stack(
            [tf.fill([count], epoch * 7919 + seed + 1), tf.range(count, dtype="int64")], axis=1
        )
        return tf.data.Dataset.from_tensor_slices((perm, seeds, tf.fill([count], epoch)))

    stream = tf.data.Dataset.from_tensors(0).flat_map(order)
    # flat_map hides the length; Keras needs it to start a fresh pass per epoch.
    stream = stream.apply(tf.data.experimental.assert_cardinality(count))
    stream = stream.map(
        lambda index, example_seed, epoch: (example(index, example_seed), epoch),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    stream = stream.batch(batch_size, drop_remainder=drop_remainder).enumerate()

    def finish(batch, item):
        (images, labels), epochs = item
        for layer in augmenters:
            images = layer(images, training=True)
        if batch_fn is not None:
            key = tf.stack([epochs[0] * 7919 + seed + 2, batch])
            images = batch_fn(images, key)
        return images, labels

    # Sequential on purpose: the Keras layers draw from a shared seed state.
    return stream.map(finish).prefetch(AUTOTUNE)


def epoch_callback(info):
    """A Keras callback that sets `info.epoch` at the start of each epoch.

    Put it first in the callback list, so that callbacks reading the
    training stream in `on_epoch_begin` (FisherMask) see the same epoch.
    With it, the stream is keyed by fit's epoch number, so a run resumed by
    `BackupAndRestore` repeats the uninterrupted run's batches bitwise.
    """
    import keras

    class EpochSeed(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            info.follow.assign(1)

        def on_epoch_begin(self, epoch, logs=None):
            info.follow.assign(1)
            info.epoch.assign(epoch)

    return EpochSeed()


# ------------------------------------------------------------ small images
def crop_and_flip_layers(image_shape, seed=0):
    """Keras' `RandomTranslation` + `RandomFlip` with the exact semantics of
    torchvision's `RandomCrop(size, padding=4)` + `RandomHorizontalFlip()`.

    A crop of the zero-padded image at offset `o` (uniform over `0..2p`) is a
    translation by `p - o` with zero fill. `RandomTranslation` draws a
    continuous shift, uniform in `[-f, f]` times the size, and "nearest"
    interpolation rounds it; with `f = (p + 0.5) / size` every integer shift
    `-p..p` gets an interval of width one, i.e. the same probability.
    """
    import keras

    h, w = image_shape[:2]
    translate = keras.layers.RandomTranslation(
        (-(CROP_PADDING + 0.5) / h, (CROP_PADDING + 0.5) / h),
        (-(CROP_PADDING + 0.5) / w, (CROP_PADDING + 0.5) / w),
        fill_mode="constant",
        interpolation="nearest",
        fill_value=0.0,
        seed=seed,
        dtype="float32",
    )
    flip = keras.layers.RandomFlip("horizontal", seed=seed + 1, dtype="float32")
    return [translate, flip]


def cutout(images, seed, fill, size=CUTOUT_SIZE, probability=CUTOUT_PROBABILITY):
    """The official code's `Cutout(size=16, p=0.5)` on a batch, in raw pixels.

    Hand-written because `keras.layers.RandomErasing` draws the erased area
    and aspect ratio from ranges and always keeps the box inside the image;
    Cutout is a fixed `size`x`size` square centred at a uniform pixel,
    rows/columns `[c - size//2, c + size//2)` clipped at the border, applied
    with probability `probability`. The official code cuts after
    normalization by multiplying with 0, i.e. the hole is the mean colour; our
    pipelines yield raw pixels and normalize inside the model, so the hole is
    filled with the mean in raw pixels (`fill`, the float32 values the
    model's `Normalization` subtracts), which that layer maps to exactly 0.

    Args:
        images: Float batch `(batch, height, width, channels)`.
        seed: Stateless seed, shape `(2,)`.
        fill: Per-channel fill value (the normalization mean).
        size: Side of the square. Defaults to `16`.
        probability: Fraction of images cut. Defaults to `0.5`.
    """
    h, w = images.shape[1], images.shape[2]
    batch = tf.shape(images)[0]
    keep_seed, row_seed, col_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    apply = tf.random.stateless_uniform([batch], keep_seed) < probability
    cy = tf.random.stateless_uniform([batch, 1], row_seed, minval=0, maxval=h, dtype="int32")
    cx = tf.random.stateless_uniform([batch, 1], col_seed, minval=0, maxval=w, dtype="int32")
    rows, cols = tf.range(h)[None, :], tf.range(w)[None, :]
    in_rows = (rows >= cy - size // 2) & (rows < cy + size // 2)
    in_cols = (cols >= cx - size // 2) & (cols < cx + size // 2)
    hole = in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]
    fill = tf.cast(tf.broadcast_to(fill, tf.shape(images)), images.dtype)
    return tf.where(hole[..., None], fill, images)


def noisy_labels(labels, rate, num_classes, seed):
    """Symmetric label noise: each label, with probability `rate`, becomes a
    uniformly drawn *other* class (a seeded draw; `benchmarks/evidence.py`'s
    convention). Returns a new int64 array."""
    labels = np.asarray(labels, "int64")
    if not rate:
        return labels
    rng = np.random.default_rng([seed, 29])
    flip = rng.random(len(labels)) < rate
    shift = rng.integers(1, num_classes, len(labels))  # a different class, uniformly
    return np.where(flip, (labels + shift) % num_classes, labels)


def split_validation(x, y, fraction, seed):
    """`(x, y)` as `(train, validation)`: a seeded `fraction` held out, order kept."""
    count = int(round(fraction * len(y)))
    if not 0 < count < len(y):
        raise ValueError(f"validation_split={fraction} of {len(y)} examples leaves an empty split.")
    held = np.zeros(len(y), bool)
    held[np.random.default_rng([seed, 31]).permutation(len(y))[:count]] = True
    return (x[~held], y[~held]), (x[held], y[held])


def _streamed(options):
    """`options` for a streamed (large-image) dataset, which takes no noise or split."""
    options = dict(options)
    if options.pop("label_noise") or options.pop("validation_split") is not None:
        raise DatasetError(
            "label noise and validation splits work on in-memory datasets only "
            "(digits, CIFAR-size images), not on ImageNet-size images."
        )
    return options


def small_pipelines(
    x, y, xt, yt, info, batch_size, seed, augment, cutout, drop_remainder,
    label_noise=0.0, validation_split=None,
):  # fmt: skip
    """Training and test streams of small-image arrays (CIFAR, digits), train keyed by epoch.

    `label_noise` and `validation_split` as `load`'s: noise first, on the
    training labels, then the validation examples are held out of them.
    """
    y = noisy_labels(y, label_noise, info.num_classes, seed)
    if validation_split is not None:
        (x, y), (xt, yt) = split_validation(x, y, validation_split, seed)
    info.num_train, info.num_test = len(y), len(yt)
    info.steps_per_epoch = steps_per_epoch(info, batch_size, drop_remainder)
    test = tf.data.Dataset.from_tensor_slices((xt, yt))
    test = test.map(lambda a, b: (tf.cast(a, "float32"), b)).batch(batch_size).prefetch(AUTOTUNE)
    return _small_train(x, y, info, batch_size, seed, augment, cutout, drop_remainder), test, info


def _small_train(x, y, info, batch_size, seed, augment, use_cutout, drop_remainder):
    fill = np.asarray(info.mean if info.mean is not None else 0.0, "float32")
    x, y = tf.constant(x), tf.constant(y)

    def example(index, example_seed):
        return tf.cast(x[index], "float32"), y[index]

    augmenters = crop_and_flip_layers(info.input_shape, seed) if augment else []
    batch_fn = (lambda images, key: cutout(images, key, fill)) if augment and use_cutout else None
    return _epoch_stream(
        len(y), info, seed, example, batch_size, drop_remainder, augmenters, batch_fn
    )


# ------------------------------------------------------------ image folders
def _list_split(root, split, class_names=None):
    """`(paths, labels, class_names)` of `root/split/<class>/*` in Keras' order.

    Listing (and the class order) is `keras.utils.image_dataset_from_directory`'s;
    its decoder resizes every image to one size, so images are decoded with
    `tf.io` instead (the ImageNet recipe crops the original image).
    """
    import keras

    folder = os.path.join(root, split)
    try:
        listed = keras.utils.image_dataset_from_directory(
            folder,
            labels="inferred",
            label_mode="int",
            class_names=class_names,
            batch_size=None,
            shuffle=False,
            verbose=False,
        )
    except ValueError as err:
        if "No images found" in str(err):
            raise DatasetError(
                f"--dataset folder:{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) "
                f"in {split}/<class>/."
            ) from err
        raise DatasetError(f"--dataset folder:{root}: cannot list {split}/ ({err}).") from err
    paths = np.asarray(listed.file_paths)
    names = list(listed.class_names)
    index = {name: i for i, name in enumerate(names)}
    labels = np.asarray([index[os.path.basename(os.path.dirname(p))] for p in paths], "int64")
    return paths, labels, names


def _check_folder(root):
    if not os.path.isdir(root):
        raise DatasetError(f"--dataset folder:{root}: no such folder.")
    if not os.path.isdir(os.path.join(root, "train")):
        raise DatasetError(
            f"--dataset folder:{root}: expected a train/ folder with one sub-folder per class."
        )
    test_split = next((s for s in ("test", "val") if os.path.isdir(os.path.join(root, s))), None)
    if test_split is None:
        raise DatasetError(f"--dataset folder:{root}: expected a test/ or val/ folder.")
    return test_split


def _folder(root, train_limit, test_limit, **options):
    test_split = _check_folder(root)
    paths, labels, classes = _list_split(root, "train")
    tpaths, tlabels, _ = _list_split(root, test_split, classes)
    seed = options["seed"]
    paths, labels = _limit(paths, labels, train_limit, seed)
    tpaths, tlabels = _limit(tpaths, tlabels, test_limit, seed + 1)
    first = _decode(paths[0]).numpy()
    name = f"folder:{root}"
    if max(first.shape[:2]) <= SMALL_IMAGE_LIMIT:
        x, xt = _decode_all(paths, first.shape), _decode_all(tpaths, first.shape)
        mean = tuple(float(v) for v in x.reshape(-1, x.shape[-1]).mean(0))
        std = tuple(float(v) for v in x.reshape(-1, x.shape[-1]).std(0))
        info = DatasetInfo(name, len(classes), first.shape, len(labels), len(tlabels), mean, std)
        return small_pipelines(x, labels, xt, tlabels, info, **options)
    options = _streamed(options)
    mean, std = STATS["imagenet"]
    info = DatasetInfo(
        name, len(classes), (224, 224, 3), len(labels), len(tlabels), mean, std, large=True
    )
    test = tf.data.Dataset.from_tensor_slices((tpaths, tlabels)).map(lambda p, y: (_decode(p), y))
    return (
        _large_train_from_paths(paths, labels, info, **options),
        large_test_pipeline(test, options["batch_size"]),
        info,
    )


def _decode(path):
    return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


_DECODED = {}  # (paths, shape) -> array: re-loading a folder in one process decodes once


def _decode_all(paths, shape):
    """Decodes every image once into a uint8 array (sizes unified to `shape`)."""
    key = (tuple(paths.tolist()), tuple(shape))
    if key not in _DECODED:
        if len(_DECODED) >= 4:
            _DECODED.pop(next(iter(_DECODED)))
        _DECODED[key] = _decode_uncached(paths, shape)
        _DECODED[key].setflags(write=False)
    return _DECODED[key]


def _decode_uncached(paths, shape):
    def decode(path):
        image = tf.image.resize(_decode(path), shape[:2])
        return tf.cast(tf.round(image), "uint8")

    data = tf.data.Dataset.from_tensor_slices(paths).map(
        decode, num_parallel_calls=AUTOTUNE, deterministic=True
    )
    return np.concatenate(list(data.batch(4096).as_numpy_iterator()))


# ------------------------------------------------------------ ImageNet-size
def _large_train_from_paths(paths, labels, info, batch_size, seed, augment, cutout, drop_remainder):
    info.steps_per_epoch = steps_per_epoch(info, batch_size, drop_remainder)
    paths_t, labels_t = tf.constant(paths), tf.constant(labels)

    def example(index, example_seed):
        image = _decode(paths_t[index])
        if augment:
            return _random_resized_crop(image, example_seed), labels_t[index]
        return _center_crop(image), labels_t[index]

    import keras

    flips = [keras.layers.RandomFlip("horizontal", seed=seed + 1, dtype="float32")]
    return _epoch_stream(
        len(paths), info, seed, example, batch_size, drop_remainder, flips if augment else []
    )


def large_test_pipeline(data, batch_size):
    """The ImageNet-size test stream: resize and center crop, no augmentation."""
    data = data.map(lambda x, y: (_center_crop(x), y), num_parallel_calls=AUTOTUNE)
    return data.batch(batch_size).prefetch(AUTOTUNE)


def _random_resized_crop(image, seed, size=224):
    # torchvision's RandomResizedCrop(224) (area 8-100 %, aspect 3/4-4/3) by
    # TensorFlow's own box sampler; Keras has no random-resized-crop layer.
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        tf.zeros([0, 0, 4]),
        seed=seed,
        area_range=(0.08, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3),
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, extent)
    return tf.ensure_shape(tf.image.resize(tf.cast(crop, "float32"), (size, size)), (size, size, 3))


def _center_crop(image, resize=256, size=224):
    shape = tf.cast(tf.shape(image)[:2], "float32")
    scale = resize / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * scale), "int32")
    image = tf.image.resize(tf.cast(image, "float32"), new)
    top = (new[0] - size) // 2
    left = (new[1] - size) // 2
    return tf.ensure_shape(image[top : top + size, left : left + size], (size, size, 3))


# ------------------------------------------------------------ tfds
def _tfds_builder(name, data_dir):
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DatasetError(
            f"--dataset {name} needs tensorflow-datasets: pip install 'keras-ssam[data]'."
        ) from err
    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # unknown names raise several tfds error types
        raise DatasetError(
            f"--dataset {name!r} is not 'digits', 'folder:PATH' or a tfds dataset name."
        ) from err


def _tfds(name, data_dir, train_limit, test_limit, **options):
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir)
    splits = builder.info.splits
    test_split = "test" if "test" in splits else "validation"
    try:
        train, test = tfds.load(
            name, split=["train", test_split], as_supervised=True, data_dir=data_dir
        )
    except Exception as err:
        raise DatasetError(
            f"--dataset {name}: could not load or download it with tensorflow-datasets "
            f"({err}). Without "
            "network access, prepare it elsewhere and pass --data-dir DIR, or pass "
            "--dataset folder:PATH with train/ and test/ class folders."
        ) from err
    num_classes = builder.info.features["label"].num_classes
    shape = builder.info.features["image"].shape
    seed = options["seed"]
    if shape[0] is not None and max(shape[:2]) <= SMALL_IMAGE_LIMIT:
        x, y = _to_arrays(train, shape)
        xt, yt = _to_arrays(test, shape)
        x, y = _limit(x, y, train_limit, seed)
        xt, yt = _limit(xt, yt, test_limit, seed + 1)
        mean, std = STATS.get(name, STATS["cifar10"])
        info = DatasetInfo(name, num_classes, shape, len(y), len(yt), mean, std)
        return small_pipelines(x, y, xt, yt, info, **options)
    options = _streamed(options)
    if train_limit:
        train = train.take(train_limit)
    if test_limit:
        test = test.take(test_limit)
    mean, std = STATS["imagenet"]
    count = train_limit or splits["train"].num_examples
    info = DatasetInfo(
        name,
        num_classes,
        (224, 224, 3),
        count,
        test_limit or splits[test_split].num_examples,
        mean,
        std,
        large=True,
    )
    info.steps_per_epoch = steps_per_epoch(info, options["batch_size"], options["drop_remainder"])
    train = _large_train_stream(train, min(count, 10_000), **options)
    return train, large_test_pipeline(test, options["batch_size"]), info


def _large_train_stream(examples, buffer_size, batch_size, seed, augment, cutout, drop_remainder):
    """The training stream of a tfds dataset too large to index.

    A shuffling buffer seeded by `seed` gives the order. With `augment`, it
    reshuffles on every pass and each image gets a random resized crop and a
    flip (not resumable bitwise). Without it, every pass reads the same
    examples in the same order (what an analysis needs: each of its passes,
    e.g. every Hessian-vector product, sees the same examples), and each
    image gets the test preprocessing (resize 256, center crop 224).
    """
    examples = examples.shuffle(buffer_size, seed=seed, reshuffle_each_iteration=augment)
    if not augment:
        examples = examples.map(
            lambda x, y: (_center_crop(x), y), num_parallel_calls=AUTOTUNE, deterministic=True
        )
        return examples.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)
    seeds = tf.data.Dataset.random(seed=seed + 17, rerandomize_each_iteration=True)
    examples = tf.data.Dataset.zip((examples, seeds.batch(2))).map(
        lambda xy, s: (_random_resized_crop(xy[0], s), xy[1]),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    import keras

    flip = keras.layers.RandomFlip("horizontal", seed=seed + 1, dtype="float32")
    examples = examples.batch(batch_size, drop_remainder=drop_remainder)
    return examples.map(lambda x, y: (flip(x, training=True), y)).prefetch(AUTOTUNE)


def _to_arrays(data, shape):
    xs, ys = [], []
    for x, y in data.batch(4096).as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs).astype("uint8"), np.concatenate(ys).astype("int64")
