"""`add_loss` terms, activity and weight regularizers in both passes (issue 19, D1).

Keras drops `add_loss` terms inside a `StatelessScope` unless it collects
them, and the reused second pass runs only the layers above the cut: each
term must still be in `L(w + e)` and in its gradient. The references below
write the model and every loss term out in raw TF ops.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import numpy_perturbation

from keras_ssam import SSAMModel

D, H, C, B = 4, 6, 3, 8
ACT_LOW, ACT_MID = 0.1, 0.05  # activity L2 factors
ADD_LOW, ADD_MID = 0.3, 0.2  # factors of the custom add_loss layers
REG_LOW, REG_MID = 0.01, 0.02  # kernel L2 factors
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class MeanSquareLoss(keras.layers.Layer):
    """Identity that adds `factor * mean(x**2)` with `add_loss`."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        self.add_loss(self.factor * keras.ops.mean(keras.ops.square(x)))
        return x


def build(kind, seed=0):
    """Dense 'low' | Dense 'mid' | Dense 'head', with `kind` losses on low and mid.

    `kind` is "activity" (activity regularizers) or "add_loss" (custom
    layers); both have kernel regularizers on low and mid. A mask that leaves
    'low' out has its cut at low's output, so the loss terms lie on both
    sides of it.
    """
    keras.utils.set_random_seed(seed)
    act = kind == "activity"
    inputs = keras.Input((D,))
    h = keras.layers.Dense(
        H,
        activation="relu",
        name="low",
        kernel_regularizer=keras.regularizers.L2(REG_LOW),
        activity_regularizer=keras.regularizers.L2(ACT_LOW) if act else None,
    )(inputs)
    if not act:
        h = MeanSquareLoss(ADD_LOW, name="low_loss")(h)
    h = keras.layers.Dense(
        H,
        activation="relu",
        name="mid",
        kernel_regularizer=keras.regularizers.L2(REG_MID),
        activity_regularizer=keras.regularizers.L2(ACT_MID) if act else None,
    )(h)
    if not act:
        h = MeanSquareLoss(ADD_MID, name="mid_loss")(h)
    return keras.Model(inputs, keras.layers.Dense(C, name="head")(h))


def reference_loss(params, x, y, kind):
    """The model's total loss in raw TF ops (Keras divides activity terms by the batch)."""
    w1, b1, w2, b2, w3, b3 = params
    h1 = tf.nn.relu(x @ w1 + b1)
    h2 = tf.nn.relu(h1 @ w2 + b2)
    logits = h2 @ w3 + b3
    ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    if kind == "activity":
        n = tf.cast(tf.shape(x)[0], tf.float32)
        extra = (ACT_LOW * tf.reduce_sum(h1**2) + ACT_MID * tf.reduce_sum(h2**2)) / n
    else:
        extra = ADD_LOW * tf.reduce_mean(h1**2) + ADD_MID * tf.reduce_mean(h2**2)
    reg = REG_LOW * tf.reduce_sum(w1**2) + REG_MID * tf.reduce_sum(w2**2)
    return ce + extra + reg


def reference_grad(params, x, y, kind):
    params = [tf.constant(p) for p in params]
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = reference_loss(params, tf.constant(x), tf.constant(y), kind)
    return float(loss), [g.numpy() for g in tape.gradient(loss, params)]


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, D)).astype("float32")
    return x, rng.integers(0, C, B).astype("int32")


def upper_masks(model, seed=3):
    """Zeros on 'low'; a random half on 'mid' and 'head' (never an all-zero mask)."""
    rng = np.random.default_rng(seed)
    masks = []
    for v in model.trainable_variables:
        if v.path.startswith("low"):
            masks.append(np.zeros(v.shape, "float32"))
        else:
            m = (rng.random(v.shape) < 0.5).astype("float32")
            m.flat[0] = 1.0
            masks.append(m)
    return masks


def wrapped(kind, rho, reuse, masks=True):
    inner = build(kind)
    ssam = SSAMModel(inner, rho=rho, norm_scope="masked", reuse_activations=reuse)
    if masks:
        ssam.set_masks(upper_masks(inner))
    return inner, ssam


@pytest.mark.parametrize("kind", ["activity", "add_loss"])
@pytest.mark.parametrize("reuse", [True, False])
def test_rho_zero_equals_plain_fit(kind, reuse):
    x, y = data()
    inner, ssam = wrapped(kind, 0.0, reuse)
    ssam.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS)
    plan = ssam.step_plan()
    assert plan["reuse"] is reuse
    history = ssam.fit(x, y, batch_size=B, epochs=3, shuffle=False, verbose=0)

    plain = build(kind)
    plain.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS)
    want = plain.fit(x, y, batch_size=B, epochs=3, shuffle=False, verbose=0)
    for got, ref in zip(inner.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)
    # L(w + 0) - L(w): 0 only when pass 2 has the same loss terms as pass 1.
    np.testing.assert_allclose(history.history["sharpness"], 0.0, atol=1e-6)
    np.testing.assert_allclose(history.history["loss"], want.history["loss"], rtol=1e-5)


@pytest.mark.parametrize("kind", ["activity", "add_loss"])
@pytest.mark.parametrize("reuse", [True, False])
def test_masked_step_matches_reference(kind, reuse):
    """Three SGD steps of SSAM against the tape reference, regularizers on both sides."""
    x, y = data()
    inner, ssam = wrapped(kind, 0.4, reuse)
    masks = upper_masks(inner)
    params = [v.numpy() for v in inner.trainable_variables]
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    assert ssam.step_plan()["reuse"] is reuse
    history = ssam.fit(x, y, batch_size=B, epochs=3, shuffle=False, verbose=0)
    sharpness = []
    for _ in range(3):
        loss, g = reference_grad(params, x, y, kind)
        e = numpy_perturbation(g, masks, 0.4, norm_scope="masked")
        moved = [p + ei.astype("float32") for p, ei in zip(params, e)]
        loss2, g2 = reference_grad(moved, x, y, kind)
        params = [p - 0.1 * gi for p, gi in zip(params, g2)]
        sharpness.append(loss2 - loss)
    for got, want in zip(inner.trainable_variables, params):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(history.history["sharpness"], sharpness, atol=1e-5)


@pytest.mark.parametrize("kind", ["activity", "add_loss"])
def test_dense_sam_matches_reference(kind):
    """Every variable perturbed (no cut): the second pass sees every loss term."""
    x, y = data(1)
    inner, ssam = wrapped(kind, 0.3, True, masks=False)
    params = [v.numpy() for v in inner.trainable_variables]
    ssam.compile(optimizer=keras.optimizers.SGD(0.2), loss=LOSS)
    ssam.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    _, g = reference_grad(params, x, y, kind)
    e = numpy_perturbation(g, [np.ones_like(p) for p in params], 0.3)
    _, g2 = reference_grad([p + ei.astype("float32") for p, ei in zip(params, e)], x, y, kind)
    for got, p, gi in zip(inner.trainable_variables, params, g2):
        np.testing.assert_allclose(got.numpy(), p - 0.2 * gi, atol=1e-5, rtol=0)
