"""The BatchNorm CNN the two-pass tests share, and its raw-TF reference step.

`cnn()` is conv-BN-relu | conv-BN-relu -> pool -> dense (a cut after stage
1); `reference_step` writes one masked SSAM step on it out in raw TF ops.
"""

import keras
import numpy as np
import tensorflow as tf
from reference import numpy_perturbation

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
B, S, C = 8, 6, 3
BN_MOMENTUM, BN_EPS = 0.8, 1e-3


def cnn(dropout=False, seed=0, structure=None):
    """conv-BN-relu | conv-BN-relu -> pool -> [dropout] -> dense: a cut after stage 1.

    `structure` "dict" or "list" wraps the single output in a dict or list of one.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((S, S, 2))
    x = inputs
    for i, filters in enumerate((4, 5)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPS, name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if dropout and i == 0:
            x = keras.layers.Dropout(0.3, seed=5, name="drop_low")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if dropout:
        x = keras.layers.Dropout(0.3, seed=6, name="drop_high")(x)
    out = keras.layers.Dense(C, name="head")(x)
    if structure == "dict":
        out = {"logits": out}
    elif structure == "list":
        out = [out]
    return keras.Model(inputs, out)


def data(n=B, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, S, S, 2)).astype("float32"), rng.integers(0, C, n).astype("int32")


def top_masks(model, rng_seed=1):
    """Zeros on stage 1; on stage 2 and the head a random half (a structured mask)."""
    rng = np.random.default_rng(rng_seed)
    masks = []
    for v in model.trainable_variables:
        if v.path.startswith(("conv0", "bn0")):
            masks.append(np.zeros(v.shape, "float32"))
        else:
            mask = (rng.random(v.shape) < 0.5).astype("float32")
            mask.flat[0] = 1.0  # every upper variable stays in the support
            masks.append(mask)
    return masks


# ------------------------------------------------------------- tape reference
def reference_step(params, x, y, masks, rho, lr):
    """One SGD step of SSAM (masked norm) on the CNN in raw TF ops, BN in train mode.

    Returns the new parameters and the new BN moving statistics (from pass 1).
    """
    names = ["conv0", "g0", "b0", "conv1", "g1", "b1", "wk", "wb"]

    def forward(p, stats=None):
        h = tf.constant(x)
        for i in range(2):
            h = tf.nn.conv2d(h, p[f"conv{i}"], 1, "SAME")
            mean, var = tf.nn.moments(h, axes=[0, 1, 2])
            if stats is not None:
                stats.append((mean.numpy(), var.numpy()))
            h = tf.nn.relu((h - mean) / tf.sqrt(var + BN_EPS) * p[f"g{i}"] + p[f"b{i}"])
        logits = tf.reduce_mean(h, axis=[1, 2]) @ p["wk"] + p["wb"]
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))

    def grad(values, stats=None):
        p = {k: tf.constant(v) for k, v in zip(names, values)}
        with tf.GradientTape() as tape:
            tape.watch(list(p.values()))
            loss = forward(p, stats)
        return [g.numpy() for g in tape.gradient(loss, [p[k] for k in names])]

    stats = []
    g = grad(params, stats)
    e = numpy_perturbation(g, masks, rho, norm_scope="masked")
    g2 = grad([p + ei.astype("float32") for p, ei in zip(params, e)])
    return [p - lr * gi for p, gi in zip(params, g2)], stats


def keras_params(model):
    v = {w.path: w.numpy() for w in model.weights}
    return [
        v["conv0/kernel"],
        v["bn0/gamma"],
        v["bn0/beta"],
        v["conv1/kernel"],
        v["bn1/gamma"],
        v["bn1/beta"],
        v["head/kernel"],
        v["head/bias"],
    ]
