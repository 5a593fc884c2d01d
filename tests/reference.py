"""The toy problem the step tests share, and its independent references.

`make_data`, `make_params`, `make_mlp` and `random_masks` build a small MLP
problem; the references write the SSAM step on it out with NumPy and a bare
tape. `PassCounter` counts forward passes in training mode, and
`momentum_reference` writes momentum SGD with SAM on some steps only.
"""

import keras
import numpy as np
import tensorflow as tf

D, H, C, N = 5, 7, 3, 24


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)).astype("float32")
    y = rng.integers(0, C, size=N).astype("int32")
    return x, y


def make_params(seed=1):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(scale=0.5, size=(D, H)).astype("float32"),
        rng.normal(scale=0.1, size=(H,)).astype("float32"),
        rng.normal(scale=0.5, size=(H, C)).astype("float32"),
        rng.normal(scale=0.1, size=(C,)).astype("float32"),
    ]


def make_mlp(params, l2=0.0):
    """The Keras model of `mlp_loss`: Dense(H, relu), Dense(C), weights `params`."""
    reg = keras.regularizers.L2(l2) if l2 else None
    model = keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(H, activation="relu", kernel_regularizer=reg),
            keras.layers.Dense(C, kernel_regularizer=reg),
        ]
    )
    model.set_weights(params)
    return model


def random_masks(params, density=0.5, seed=2):
    rng = np.random.default_rng(seed)
    return [(rng.random(p.shape) < density).astype("float32") for p in params]


def numpy_perturbation(
    grads, masks, rho, weights=None, norm_scope="all", adaptive=False, eta=0.01, epsilon=1e-7
):
    """Eq. (2) of Mi et al. (and ASAM's T^2 g / ||T g||) in float64 NumPy."""
    grads = [np.asarray(g, np.float64) for g in grads]
    masks = [np.asarray(m, np.float64) for m in masks]
    if adaptive:
        t = [np.abs(np.asarray(w, np.float64)) + eta for w in weights]
    else:
        t = [np.ones_like(g) for g in grads]
    tg = [ti * g for ti, g in zip(t, grads)]
    if norm_scope == "masked":
        norm = np.sqrt(sum(np.sum((m * v) ** 2) for m, v in zip(masks, tg)))
    else:
        norm = np.sqrt(sum(np.sum(v**2) for v in tg))
    return [rho * ti * v / (norm + epsilon) * m for ti, v, m in zip(t, tg, masks)]


def mlp_loss(params, x, y, l2=0.0):
    """Mean softmax cross-entropy of relu(x W1 + b1) W2 + b2, plus l2 on kernels."""
    w1, b1, w2, b2 = params
    logits = tf.nn.relu(x @ w1 + b1) @ w2 + b2
    ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
    return ce + l2 * (tf.reduce_sum(w1**2) + tf.reduce_sum(w2**2))


def mlp_grad(params, x, y, l2=0.0):
    params = [tf.constant(p, tf.float32) for p in params]
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = mlp_loss(params, tf.constant(x), tf.constant(y), l2)
    return float(loss), [g.numpy() for g in tape.gradient(loss, params)]


def reference_sgd_step(params, x, y, masks, rho, lr, l2=0.0, **kwargs):
    """One SSAM step with plain SGD; returns new params, e, L(w), L(w+e)."""
    loss, g = mlp_grad(params, x, y, l2)
    e = numpy_perturbation(g, masks, rho, weights=params, **kwargs)
    perturbed = [p + ei.astype(np.float32) for p, ei in zip(params, e)]
    loss2, g2 = mlp_grad(perturbed, x, y, l2)
    new = [p - lr * gi for p, gi in zip(params, g2)]
    return new, e, loss, loss2


@keras.saving.register_keras_serializable(package="tests")
class PassCounter(keras.layers.Layer):
    """Identity that counts its training-mode runs.

    The counter is a plain `tf.Variable`: Keras' `StatelessScope` (pass 2)
    only intercepts Keras variables, so the count survives that pass.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.runs = tf.Variable(0, dtype=tf.int64, trainable=False)

    def call(self, x, training=None):
        if training:
            self.runs.assign_add(1)
        return x


def counted_mlp(params):
    """The reference MLP (Dense relu, Dense) with a pass counter on top."""
    counter = PassCounter()
    inputs = keras.Input((D,))
    h = keras.layers.Dense(H, activation="relu")(inputs)
    out = counter(keras.layers.Dense(params[3].shape[0])(h))
    model = keras.Model(inputs, out)
    model.set_weights(params)
    return model, counter


def momentum_reference(params, batches, rho, lr, momentum, sam_steps, between="sgd", alpha=0.0):
    """Keras-convention momentum SGD where only `sam_steps` are SAM steps (NumPy, float64).

    `between="looksam"` adds `alpha * ||g|| * g_v_hat` on the other steps, with
    `g_v_hat` from the last SAM step (MSAM's global-norm LookSAM).
    """
    params = [p.astype(np.float64) for p in params]
    velocity = [np.zeros_like(p) for p in params]
    direction = [np.zeros_like(p) for p in params]
    for step, (x, y) in enumerate(batches):
        _, g = mlp_grad([p.astype(np.float32) for p in params], x, y)
        g = [a.astype(np.float64) for a in g]
        if step in sam_steps:
            ones = [np.ones_like(p) for p in params]
            e = numpy_perturbation(g, ones, rho)
            moved = [(p + ei).astype(np.float32) for p, ei in zip(params, e)]
            _, gs = mlp_grad(moved, x, y)
            gs = [a.astype(np.float64) for a in gs]
            dot = sum(np.sum(a * b) for a, b in zip(g, gs))
            norm_sq = sum(np.sum(a**2) for a in g)
            gv = [b - dot / (norm_sq + 1e-12) * a for a, b in zip(g, gs)]
            norm_v = np.sqrt(sum(np.sum(v**2) for v in gv))
            direction = [v / norm_v for v in gv]
            update = gs
        elif between == "looksam":
            norm = np.sqrt(sum(np.sum(a**2) for a in g))
            update = [a + alpha * norm * d for a, d in zip(g, direction)]
        else:
            update = g
        velocity = [momentum * v - lr * u for v, u in zip(velocity, update)]
        params = [p + v for p, v in zip(params, velocity)]
    return params


def batches_of(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]
