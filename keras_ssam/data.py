"""Input pipelines for the CLI: digits, image folders and TensorFlow Datasets.

Small images (CIFAR-sized, up to 64 pixels) are decoded once into uint8
arrays and augmented on the fly with the paper's recipe: random crop with 4
pixels of zero padding, horizontal flip and Cutout (DeVries & Taylor 2017,
one 16x16 square filled with the dataset mean, i.e. zero after
normalization). Larger images (ImageNet) are streamed from disk with random
resized crops to 224 for training and resize-256/center-224 for testing.
All randomness is stateless and seeded per example, so a seed fixes the
whole input stream. Pipelines yield raw pixel values in [0, 255]; the
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
STATS = {
    "cifar10": ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)),
    "cifar100": ((129.3, 124.1, 112.4), (68.2, 65.4, 70.4)),
    "imagenet": ((123.7, 116.3, 103.5), (58.4, 57.1, 57.4)),
}


class DatasetError(ValueError):
    """A dataset that cannot be found, read or downloaded."""


@dataclasses.dataclass
class DatasetInfo:
    name: str
    num_classes: int
    input_shape: tuple
    num_train: int
    num_test: int
    mean: tuple | None = None
    std: tuple | None = None
    large: bool = False
    epoch: object = dataclasses.field(default_factory=lambda: tf.Variable(0, dtype="int64"))


def preprocessing_layers(info):
    """`Normalization` from raw pixels, as the model's first layer (or None)."""
    if info.mean is None:
        return None
    import keras

    mean = np.asarray(info.mean, "float32")
    var = np.square(np.asarray(info.std, "float32"))
    return keras.layers.Normalization(mean=mean, variance=var, name="normalize")


def load(
    name,
    data_dir=None,
    batch_size=128,
    seed=0,
    augment=True,
    cutout=True,
    train_limit=None,
    test_limit=None,
):
    """Returns `(train, test, info)`: batched `tf.data` pipelines and facts."""
    if name == "digits":
        (x, y), (xt, yt) = _digits(seed)
        info = DatasetInfo("digits", 10, x.shape[1:], len(y), len(yt))
        augment = False
    elif name.startswith("folder:"):
        return _folder(
            name[len("folder:") :], batch_size, seed, augment, cutout, train_limit, test_limit
        )
    else:
        return _tfds(name, data_dir, batch_size, seed, augment, cutout, train_limit, test_limit)
    x, y = _limit(x, y, train_limit, seed)
    xt, yt = _limit(xt, yt, test_limit, seed + 1)
    info.num_train, info.num_test = len(y), len(yt)
    return (
        _small_pipeline(x, y, info, batch_size, seed, augment, cutout, True),
        _small_pipeline(xt, yt, info, batch_size, seed, False, False, False),
        info,
    )


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


# ------------------------------------------------------------ small images
def _small_pipeline(x, y, info, batch_size, seed, augment, cutout, train):
    if not train:
        data = tf.data.Dataset.from_tensor_slices((x, y))
        data = data.map(lambda a, b: (tf.cast(a, "float32"), b))
        return data.batch(batch_size).prefetch(AUTOTUNE)
    fill = np.asarray(info.mean if info.mean is not None else 0.0, "float32")
    x, y = tf.constant(x), tf.constant(y)

    def example(index, example_seed):
        image = x[index]
        if augment:
            image = _augment_small(image, example_seed, fill, cutout)
        return tf.cast(image, "float32"), y[index]

    return _epoch_stream(len(y), info, seed, example).batch(batch_size).prefetch(AUTOTUNE)


def _epoch_stream(count, info, seed, example):
    """Examples in an order (and with augmentation seeds) that depend only on
    `(seed, epoch)`, the epoch being read from `info.epoch` when an epoch's
    iterator starts. A run resumed at epoch e therefore sees exactly the
    batches the uninterrupted run saw at epoch e; `EpochSeed` sets it."""

    def order(_):
        epoch = info.epoch.read_value()
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype="int64"), seed=tf.stack([tf.constant(seed, "int64"), epoch])
        )
        seeds = tf.stack(
            [tf.fill([count], epoch * 7919 + seed + 1), tf.range(count, dtype="int64")], axis=1
        )
        return tf.data.Dataset.from_tensor_slices((perm, seeds))

    stream = tf.data.Dataset.from_tensors(0).flat_map(order)
    # flat_map hides the length; Keras needs it to start a fresh pass per epoch.
    stream = stream.apply(tf.data.experimental.assert_cardinality(count))
    return stream.map(example, num_parallel_calls=AUTOTUNE, deterministic=True)


def epoch_callback(info):
    """A Keras callback that sets `info.epoch` at the start of each epoch.

    Put it first in the callback list, so that callbacks reading the
    training stream in `on_epoch_begin` (FisherMask) see the same epoch.
    """
    import keras

    return keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs=None: info.epoch.assign(epoch)
    )


def _augment_small(image, seed, fill, cutout, pad=4, size=16):
    crop_seed, flip_seed, cut_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    image = tf.cast(image, "float32")
    h, w, c = image.shape
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(padded, [h, w, c], seed=crop_seed)
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    if cutout:
        unit = tf.random.stateless_uniform([2], cut_seed)
        center = tf.cast(unit * tf.constant([h, w], "float32"), "int32")
        rows = tf.range(h)[:, None]
        cols = tf.range(w)[None, :]
        hole = (tf.abs(rows - center[0]) * 2 < size) & (tf.abs(cols - center[1]) * 2 < size)
        image = tf.where(hole[..., None], tf.broadcast_to(fill, image.shape), image)
    return image


# ------------------------------------------------------------ image folders
def _list_split(root, split, classes=None):
    folder = os.path.join(root, split)
    if classes is None:
        classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    paths, labels = [], []
    for label, cls in enumerate(classes):
        cls_dir = os.path.join(folder, cls)
        if not os.path.isdir(cls_dir):
            continue
        for file in sorted(os.listdir(cls_dir)):
            if file.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(cls_dir, file))
                labels.append(label)
    return np.asarray(paths), np.asarray(labels, "int64"), classes


def _folder(root, batch_size, seed, augment, cutout, train_limit, test_limit):
    if not os.path.isdir(root):
        raise DatasetError(f"--dataset folder:{root}: no such folder.")
    if not os.path.isdir(os.path.join(root, "train")):
        raise DatasetError(
            f"--dataset folder:{root}: expected a train/ folder with one sub-folder per class."
        )
    test_split = next((s for s in ("test", "val") if os.path.isdir(os.path.join(root, s))), None)
    if test_split is None:
        raise DatasetError(f"--dataset folder:{root}: expected a test/ or val/ folder.")
    paths, labels, classes = _list_split(root, "train")
    tpaths, tlabels, _ = _list_split(root, test_split, classes)
    for split, found in (("train", paths), (test_split, tpaths)):
        if len(found) == 0:
            raise DatasetError(
                f"--dataset folder:{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) "
                f"in {split}/<class>/."
            )
    paths, labels = _limit(paths, labels, train_limit, seed)
    tpaths, tlabels = _limit(tpaths, tlabels, test_limit, seed + 1)
    first = _decode(paths[0]).numpy()
    name = f"folder:{root}"
    if max(first.shape[:2]) <= SMALL_IMAGE_LIMIT:
        x, xt = _decode_all(paths, first.shape), _decode_all(tpaths, first.shape)
        mean = tuple(float(v) for v in x.reshape(-1, x.shape[-1]).mean(0))
        std = tuple(float(v) for v in x.reshape(-1, x.shape[-1]).std(0))
        info = DatasetInfo(name, len(classes), first.shape, len(labels), len(tlabels), mean, std)
        return (
            _small_pipeline(x, labels, info, batch_size, seed, augment, cutout, True),
            _small_pipeline(xt, tlabels, info, batch_size, seed, False, False, False),
            info,
        )
    mean, std = STATS["imagenet"]
    info = DatasetInfo(
        name, len(classes), (224, 224, 3), len(labels), len(tlabels), mean, std, large=True
    )
    train = tf.data.Dataset.from_tensor_slices((paths, labels)).map(lambda p, y: (_decode(p), y))
    test = tf.data.Dataset.from_tensor_slices((tpaths, tlabels)).map(lambda p, y: (_decode(p), y))
    return (
        _large_pipeline(train, len(labels), batch_size, seed, True, info, (paths, labels)),
        _large_pipeline(test, len(tlabels), batch_size, seed, False),
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
def _large_pipeline(data, count, batch_size, seed, train, info=None, paths=None):
    if train and paths is not None:
        paths_t, labels_t = tf.constant(paths[0]), tf.constant(paths[1])

        def example(index, example_seed):
            image = _decode(paths_t[index])
            return _random_resized_crop(image, example_seed), labels_t[index]

        stream = _epoch_stream(count, info, seed, example)
        return stream.batch(batch_size).prefetch(AUTOTUNE)
    if train:
        data = data.shuffle(min(count, 10_000), seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=seed + 17, rerandomize_each_iteration=True)
        data = tf.data.Dataset.zip((data, seeds.batch(2))).map(
            lambda xy, s: (_random_resized_crop(xy[0], s), xy[1]),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
    else:
        data = data.map(lambda x, y: (_center_crop(x), y), num_parallel_calls=AUTOTUNE)
    return data.batch(batch_size).prefetch(AUTOTUNE)


def _random_resized_crop(image, seed, size=224):
    box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        tf.zeros([0, 0, 4]),
        seed=box_seed,
        area_range=(0.08, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3),
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, extent)
    crop = tf.image.resize(tf.cast(crop, "float32"), (size, size))
    return tf.image.stateless_random_flip_left_right(crop, seed=flip_seed)


def _center_crop(image, resize=256, size=224):
    shape = tf.cast(tf.shape(image)[:2], "float32")
    scale = resize / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * scale), "int32")
    image = tf.image.resize(tf.cast(image, "float32"), new)
    top = (new[0] - size) // 2
    left = (new[1] - size) // 2
    return tf.ensure_shape(image[top : top + size, left : left + size], (size, size, 3))


# ------------------------------------------------------------ tfds
def _tfds(name, data_dir, batch_size, seed, augment, cutout, train_limit, test_limit):
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DatasetError(
            f"--dataset {name} needs tensorflow-datasets: pip install 'keras-ssam[data]'."
        ) from err
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # unknown names raise several tfds error types
        raise DatasetError(
            f"--dataset {name!r} is not 'digits', 'folder:PATH' or a tfds dataset name."
        ) from err
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
    if shape[0] is not None and max(shape[:2]) <= SMALL_IMAGE_LIMIT:
        x, y = _to_arrays(train, shape)
        xt, yt = _to_arrays(test, shape)
        x, y = _limit(x, y, train_limit, seed)
        xt, yt = _limit(xt, yt, test_limit, seed + 1)
        mean, std = STATS.get(name, STATS["cifar10"])
        info = DatasetInfo(name, num_classes, shape, len(y), len(yt), mean, std)
        return (
            _small_pipeline(x, y, info, batch_size, seed, augment, cutout, True),
            _small_pipeline(xt, yt, info, batch_size, seed, False, False, False),
            info,
        )
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
    return (
        _large_pipeline(train, count, batch_size, seed, True),
        _large_pipeline(test, info.num_test, batch_size, seed, False),
        info,
    )


def _to_arrays(data, shape):
    xs, ys = [], []
    for x, y in data.batch(4096).as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs).astype("uint8"), np.concatenate(ys).astype("int64")
