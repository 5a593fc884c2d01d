"""The paper's architectures, built from code (no weight downloads).

CIFAR variants follow the official SSAM code (github Mi-Peng/
Sparse-Sharpness-Aware-Minimization, `models/*.py`): a 3x3 stride-1 first conv
and no initial pooling (ResNet-18), pre-activation wide blocks (WRN-28-10), and
VGG-11 with BatchNorm and the classifier `512 -> 4096 -> 4096 -> classes` with
ReLU and Dropout(0.5). Parameter counts for 10 classes equal the official
models': 11,173,962 / 36,479,194 / 28,149,514 (pinned in tests/test_models.py).
"""

import keras

layers = keras.layers

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def _conv(filters, kernel=3, strides=1, name=None):
    return layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


def _bn(name=None):
    # PyTorch's defaults (momentum 0.1 there is 0.9 here).
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def _basic_block(x, filters, strides, name):
    shortcut = x
    y = layers.ReLU()(_bn(f"{name}_bn1")(_conv(filters, 3, strides, f"{name}_conv1")(x)))
    y = _bn(f"{name}_bn2")(_conv(filters, 3, 1, f"{name}_conv2")(y))
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _bn(f"{name}_sc_bn")(_conv(filters, 1, strides, f"{name}_sc")(x))
    return layers.ReLU()(layers.Add()([y, shortcut]))


def _head(x, num_classes):
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dense(num_classes, name="logits")(x)


def _inputs(input_shape, preprocessing):
    inputs = keras.Input(input_shape)
    x = preprocessing(inputs) if preprocessing is not None else inputs
    return inputs, x


def resnet18(num_classes=10, input_shape=(32, 32, 3), preprocessing=None):
    """ResNet-18 for 32x32 inputs (about 11.2M parameters with 10 classes)."""
    inputs, x = _inputs(input_shape, preprocessing)
    x = layers.ReLU()(_bn("stem_bn")(_conv(64, 3, 1, "stem_conv")(x)))
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, filters, strides, f"s{stage}b{block}")
    return keras.Model(inputs, _head(x, num_classes), name="resnet18")


def _wide_block(x, filters, strides, name):
    o = layers.ReLU()(_bn(f"{name}_bn1")(x))
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, strides, f"{name}_sc")(o)
    y = _conv(filters, 3, strides, f"{name}_conv1")(o)
    y = _conv(filters, 3, 1, f"{name}_conv2")(layers.ReLU()(_bn(f"{name}_bn2")(y)))
    return layers.Add()([y, shortcut])


def wide_resnet(depth=28, width=10, num_classes=10, input_shape=(32, 32, 3), preprocessing=None):
    """Pre-activation WideResNet-depth-width (WRN-28-10: about 36.5M parameters)."""
    if (depth - 4) % 6:
        raise ValueError(f"`depth` must be 6n + 4; received depth={depth!r}.")
    blocks = (depth - 4) // 6
    inputs, x = _inputs(input_shape, preprocessing)
    x = _conv(16, 3, 1, "stem_conv")(x)
    for stage, filters in enumerate((16 * width, 32 * width, 64 * width)):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _wide_block(x, filters, strides, f"s{stage}b{block}")
    x = layers.ReLU()(_bn("final_bn")(x))
    return keras.Model(inputs, _head(x, num_classes), name=f"wrn{depth}_{width}")


def wrn28_10(num_classes=10, input_shape=(32, 32, 3), preprocessing=None):
    return wide_resnet(28, 10, num_classes, input_shape, preprocessing)


def vgg11_bn(num_classes=10, input_shape=(32, 32, 3), preprocessing=None, dropout=0.5):
    """VGG-11 with BatchNorm, the paper's CIFAR model (28,149,514 parameters
    with 10 classes).

    As the official code: eight 3x3 convolutions (with bias) each followed by
    BatchNorm and ReLU, five 2x2 max-pools, then a classifier
    `Linear(512, 4096) - ReLU - Dropout - Linear(4096, 4096) - ReLU - Dropout -
    Linear(4096, classes)`. On 32x32 inputs the last pool leaves a 1x1x512 map,
    which is flattened.

    Args:
        num_classes: Number of output logits. Defaults to `10`.
        input_shape: Shape of one input image. Defaults to `(32, 32, 3)`.
        preprocessing: Optional layer applied to the inputs first (e.g. a
            `keras.layers.Normalization`). Defaults to `None`.
        dropout: Dropout rate of the two hidden classifier layers (PyTorch's
            `nn.Dropout()` default). Defaults to `0.5`.

    Returns:
        A `keras.Model` producing logits.
    """
    inputs, x = _inputs(input_shape, preprocessing)
    for i, item in enumerate(VGG11):
        if item == "M":
            x = layers.MaxPooling2D(2)(x)
        else:
            conv = layers.Conv2D(item, 3, padding="same", name=f"conv{i}")
            x = layers.ReLU()(_bn(f"bn{i}")(conv(x)))
    if x.shape[1] != 1 or x.shape[2] != 1:
        raise ValueError(
            "vgg11_bn expects inputs that five 2x2 pools reduce to 1x1 (32x32, as CIFAR); "
            f"received input_shape={tuple(input_shape)!r}."
        )
    x = layers.Flatten()(x)
    for i in range(2):
        x = layers.Dense(4096, activation="relu", name=f"fc{i}")(x)
        x = layers.Dropout(dropout, name=f"dropout{i}")(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x), name="vgg11_bn")


def resnet50(num_classes=1000, input_shape=(224, 224, 3), preprocessing=None):
    """Keras' ResNet-50 built from code (about 25.6M parameters, 1000 classes)."""
    inputs, x = _inputs(input_shape, preprocessing)
    base = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=x.shape[1:], pooling="avg"
    )
    outputs = layers.Dense(num_classes, name="logits")(base(x))
    return keras.Model(inputs, outputs, name="resnet50")


def small_cnn(num_classes=10, input_shape=(32, 32, 3), preprocessing=None):
    """A small BatchNorm CNN for quick runs and the offline digits default."""
    inputs, x = _inputs(input_shape, preprocessing)
    for i, filters in enumerate((32, 64)):
        x = layers.ReLU()(_bn(f"bn{i}")(_conv(filters, 3, 1 + i, f"conv{i}")(x)))
    return keras.Model(inputs, _head(x, num_classes), name="small_cnn")


def proxy_cnn(num_classes=10, input_shape=(32, 32, 3), preprocessing=None):
    """A 6-conv BatchNorm CNN (~290k parameters): the CPU proxy for CIFAR runs.

    Three stages of two Conv3x3-BN-ReLU and a max-pool, widths 32/64/128,
    global average pooling and a linear classifier.
    """
    inputs, x = _inputs(input_shape, preprocessing)
    for stage, filters in enumerate((32, 64, 128)):
        for i in range(2):
            x = layers.ReLU()(_bn(f"bn{stage}{i}")(_conv(filters, 3, 1, f"conv{stage}{i}")(x)))
        x = layers.MaxPooling2D(2)(x)
    return keras.Model(inputs, _head(x, num_classes), name="proxy_cnn")


MODELS = {
    "resnet18": resnet18,
    "wrn28_10": wrn28_10,
    "vgg11_bn": vgg11_bn,
    "resnet50": resnet50,
    "small_cnn": small_cnn,
    "proxy_cnn": proxy_cnn,
}


def build_model(name, num_classes, input_shape, preprocessing=None):
    """Builds one of `MODELS` by name."""
    if name not in MODELS:
        raise ValueError(f"`model` must be one of {sorted(MODELS)}; received model={name!r}.")
    return MODELS[name](
        num_classes=num_classes, input_shape=input_shape, preprocessing=preprocessing
    )
