"""Training semantics that once went silently wrong, each against an independent reference."""

import inspect
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import (
    C,
    D,
    N,
    make_data,
    make_mlp,
    make_params,
    mlp_grad,
    numpy_perturbation,
    random_masks,
    reference_sgd_step,
)

from keras_ssam import GradientNormTrigger, SSAMModel, sparse_perturbation

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# ------------------------------------------------------------------ random layers
def _random_model(kind):
    """A small model with a random layer whose seed state is fixed by `seed=`."""
    keras.utils.set_random_seed(0)
    if kind == "flip":
        layers = [
            keras.Input((4, 4, 1)),
            keras.layers.RandomFlip("horizontal_and_vertical", seed=3),
            keras.layers.Flatten(),
            keras.layers.Dense(6, activation="relu"),
        ]
    else:
        layers = [
            keras.Input((16,)),
            keras.layers.Dense(6, activation="relu"),
            keras.layers.Dropout(0.5, seed=4),
        ]
    return keras.Sequential(layers + [keras.layers.Dense(C)])


@pytest.mark.parametrize("kind", ["flip", "dropout"])
def test_rho_zero_with_random_layers_equals_plain_fit(kind):
    """Both passes draw the same flips/dropout masks, so rho=0 is plain training."""
    rng = np.random.default_rng(0)
    shape = (N, 4, 4, 1) if kind == "flip" else (N, 16)
    x = rng.normal(size=shape).astype("float32")
    y = rng.integers(0, C, N).astype("int32")
    plain, inner = _random_model(kind), _random_model(kind)
    inner.set_weights(plain.get_weights())
    ssam = SSAMModel(inner, rho=0.0)
    for model in (plain, ssam):
        model.compile(optimizer=keras.optimizers.SGD(0.2, momentum=0.9), loss=LOSS)
        model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    start = _random_model(kind).get_weights()
    moved = max(np.abs(a - b).max() for a, b in zip(plain.get_weights(), start))
    assert moved > 1e-2  # training happened
    for a, b in zip(plain.get_weights(), inner.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


# --------------------------------------------------------- non-finite second pass
class SqrtScale(keras.layers.Layer):
    """y = x * sqrt(w): w + e < 0 leaves the loss's domain."""

    def build(self, input_shape):
        self.w = self.add_weight(
            shape=(input_shape[-1],), initializer=keras.initializers.Constant(1e-3)
        )

    def call(self, x):
        return x * keras.ops.sqrt(self.w)


def test_non_finite_second_pass_skips_step_and_warns():
    x = np.ones((8, 2), "float32")
    y = np.full((8, 2), 10.0, "float32")  # the loss falls as w grows: e pushes w below 0
    inner = keras.Sequential([keras.Input((2,)), SqrtScale()])
    ssam = SSAMModel(inner, rho=0.5)
    ssam.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="mse")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        ssam.fit(x, y, batch_size=4, epochs=1, verbose=0)
    np.testing.assert_array_equal(inner.get_weights()[0], np.float32([1e-3, 1e-3]))
    assert int(ssam.non_finite_steps.numpy()) == 2
    assert int(ssam.optimizer.iterations.numpy()) == 0  # no optimizer state moved
    # The same model trains normally when e stays in the domain.
    ok = SSAMModel(keras.Sequential([keras.Input((2,)), SqrtScale()]), rho=1e-4)
    ok.compile(optimizer=keras.optimizers.SGD(1e-6), loss="mse")
    ok.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert int(ok.non_finite_steps.numpy()) == 0
    assert np.all(ok.model.get_weights()[0] > 1e-3)


def test_non_finite_counter_is_read_once_per_epoch_when_skipping(monkeypatch):
    """A per-batch host read stalls async dispatch; "skip" reads per epoch."""
    x, y = make_data()
    ssam = SSAMModel(make_mlp(make_params()), rho=0.1)
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    target = ssam.non_finite_steps
    cls = type(target)
    reads = []
    for name in ("numpy", "__array__"):
        original = getattr(cls, name)

        def spy(self, *args, _original=original, **kwargs):
            if self is target:
                reads.append(1)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, spy)
    ssam.fit(x, y, batch_size=2, epochs=2, verbose=0)  # 24 batches
    # At most one read (possibly counted twice by numpy/__array__) at the
    # start and per epoch; a per-batch read would give >= 24.
    assert 0 < len(reads) <= 2 * (1 + 2)


# ------------------------------------------------------------------ trainable changes
def test_freezing_a_layer_after_wrapping_drops_its_masks():
    x, y = make_data()
    params = make_params()
    inner = make_mlp(params)
    ssam = SSAMModel(inner, rho=0.3)
    ssam.set_masks([np.ones(p.shape, "float32") for p in params])
    assert ssam.masks_valid() is False  # not set by a mask callback
    ssam.masks_initialized.assign(1)
    assert ssam.masks_valid()
    inner.layers[0].trainable = False
    assert not ssam.masks_valid()
    assert [tuple(m.shape) for m in ssam.masks] == [(7, C), (C,)]
    half = random_masks(params[2:], density=0.5, seed=3)
    ssam.set_masks(half)
    want = sum(m.sum() for m in half) / sum(m.size for m in half)
    assert ssam.mask_density() == pytest.approx(want, abs=1e-7)
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    history = ssam.fit(x, y, batch_size=N, epochs=1, shuffle=False, verbose=0)
    assert history.history["mask_density"][0] == pytest.approx(want, abs=1e-6)
    # The frozen layer did not move; the head took the masked SAM step
    # (e over the head only, the norm over the head's gradient).
    np.testing.assert_array_equal(inner.layers[0].get_weights()[0], params[0])
    p = [tf.constant(v) for v in params]
    with tf.GradientTape() as tape:
        tape.watch(p[2:])
        loss = LOSS(y, tf.nn.relu(x @ p[0] + p[1]) @ p[2] + p[3])
    g = [t.numpy() for t in tape.gradient(loss, p[2:])]
    e = numpy_perturbation(g, half, 0.3)
    q = p[:2] + [tf.constant(v + ei.astype("float32")) for v, ei in zip(params[2:], e)]
    with tf.GradientTape() as tape:
        tape.watch(q[2:])
        loss2 = LOSS(y, tf.nn.relu(x @ q[0] + q[1]) @ q[2] + q[3])
    g2 = tape.gradient(loss2, q[2:])
    for got, w, gi in zip(inner.layers[1].get_weights(), params[2:], g2):
        np.testing.assert_allclose(got, w - 0.1 * gi.numpy(), atol=1e-6, rtol=0)


def test_unfreezing_a_layer_frozen_at_wrap_time_uses_its_mask():
    """A layer frozen when wrapped and unfrozen later still gets its mask."""
    x, y = make_data()
    params = make_params()
    inner = make_mlp(params)
    inner.layers[0].trainable = False
    ssam = SSAMModel(inner, rho=0.3)
    assert len(ssam.masks) == 2
    inner.layers[0].trainable = True
    assert len(ssam.masks) == 4
    ssam.set_masks([np.zeros(p.shape, "float32") for p in params])
    assert ssam.mask_density() == 0.0
    fit_params = dict(batch_size=N, epochs=1, shuffle=False, verbose=0)
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    ssam.fit(x, y, **fit_params)
    # An all-zero mask everywhere: e = 0, i.e. one plain SGD step.
    _, g = mlp_grad(params, x, y)
    for got, w, gi in zip(inner.get_weights(), params, g):
        np.testing.assert_allclose(got, w - 0.1 * gi, atol=1e-6, rtol=0)


def test_freezing_between_fits_without_recompiling_uses_the_new_trainable_set():
    x, y = make_data()
    params = make_params()
    inner = make_mlp(params)
    ssam = SSAMModel(inner, rho=0.3)
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    ssam.fit(x, y, batch_size=N, epochs=1, verbose=0)
    frozen = inner.layers[0].get_weights()
    inner.layers[0].trainable = False
    history = ssam.fit(x, y, batch_size=N, epochs=1, verbose=0)
    for a, b in zip(frozen, inner.layers[0].get_weights()):
        np.testing.assert_array_equal(a, b)
    assert history.history["mask_density"][0] == 1.0


def test_new_trainable_variable_without_a_mask_is_an_error():
    inner = keras.Sequential([keras.Input((D,)), keras.layers.Dense(7)])
    ssam = SSAMModel(inner, rho=0.1)
    inner.add(keras.layers.Dense(C))  # new variables, created after wrapping
    with pytest.raises(ValueError, match="no mask for the trainable variable"):
        ssam.mask_density()


# ------------------------------------------------------------------ SSAM-D order
def test_in_step_mask_update_applies_from_the_next_step():
    """Official SSAM-D order: e uses the current mask, the new one applies next."""
    x, y = make_data()
    params = make_params()
    ssam = SSAMModel(make_mlp(params), rho=0.3)
    ssam.set_in_step_mask_update(lambda grads, variables, masks: [tf.zeros_like(m) for m in masks])
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    ssam.request_mask_update()
    ssam.fit(x, y, batch_size=N, epochs=1, shuffle=False, verbose=0)
    ones = [np.ones_like(p) for p in params]
    expected, *_ = reference_sgd_step(params, x, y, ones, rho=0.3, lr=0.1)
    for got, want in zip(ssam.model.get_weights(), expected):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert ssam.mask_density() == 0.0  # ...and the new mask is in place


# ---------------------------------------------------------------- coupled decay
def _pytorch_sgd_sam(params, x, y, steps, batch, lr, momentum, wd, rho):
    """SAM with torch.optim.SGD(lr, momentum, weight_decay=wd) semantics, in NumPy.

    d_p = grad L(w + e) + wd * w;  buf = d_p (first step), else momentum * buf + d_p;
    w -= lr * buf.  e comes from grad L(w) alone.
    """
    w = [p.astype(np.float64) for p in params]
    buf, sharp = None, []
    for step in range(steps):
        sl = slice(step * batch, (step + 1) * batch)
        w32 = [v.astype("float32") for v in w]
        loss, g = mlp_grad(w32, x[sl], y[sl])
        e = numpy_perturbation(g, [np.ones_like(v) for v in w], rho)
        loss2, g2 = mlp_grad([v + ei.astype("float32") for v, ei in zip(w32, e)], x[sl], y[sl])
        sharp.append(loss2 - loss)
        d = [gi + wd * v for gi, v in zip(g2, w)]
        buf = d if buf is None else [momentum * b + di for b, di in zip(buf, d)]
        w = [v - lr * b for v, b in zip(w, buf)]
    return w, sharp


def test_coupled_weight_decay_matches_pytorch_sgd_semantics():
    x, y = make_data()
    params = make_params()
    wd = 0.05  # large, so a decoupled or a missing decay is far off
    want, sharp = _pytorch_sgd_sam(params, x, y, 3, 8, 0.1, 0.9, wd, 0.3)
    ssam = SSAMModel(make_mlp(params), rho=0.3, coupled_weight_decay=wd)
    ssam.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS)
    logs = {}

    class Log(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None, _out=logs):
            _out[batch] = dict(logs)

    ssam.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[Log()])
    for got, w in zip(ssam.model.get_weights(), want):
        np.testing.assert_allclose(got, w, atol=1e-5, rtol=0)
    # e and the sharpness come from the data loss alone: wd does not enter them.
    np.testing.assert_allclose(logs[0]["sharpness"], sharp[0], rtol=1e-4, atol=1e-7)
    # Decoupled Keras decay is a different experiment: check the test can tell.
    decoupled = SSAMModel(make_mlp(params), rho=0.3)
    decoupled.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=wd), loss=LOSS)
    decoupled.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    gap = max(np.abs(a - b).max() for a, b in zip(decoupled.model.get_weights(), want))
    assert gap > 1e-3


def test_coupled_weight_decay_with_rho_zero_is_pytorch_sgd():
    x, y = make_data()
    params = make_params()
    want, _ = _pytorch_sgd_sam(params, x, y, 3, 8, 0.1, 0.9, 0.01, 0.0)
    ssam = SSAMModel(make_mlp(params), rho=0.0, coupled_weight_decay=0.01)
    ssam.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS)
    ssam.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for got, w in zip(ssam.model.get_weights(), want):
        np.testing.assert_allclose(got, w, atol=1e-5, rtol=0)


def test_coupled_weight_decay_under_loss_scaling():
    x, y = make_data()
    params = make_params()
    want, _ = _pytorch_sgd_sam(params, x, y, 1, N, 0.1, 0.9, 0.05, 0.3)
    keras.config.set_dtype_policy("mixed_float16")
    ssam = SSAMModel(make_mlp(params), rho=0.3, coupled_weight_decay=0.05)
    ssam.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS)
    assert isinstance(ssam.optimizer, keras.optimizers.LossScaleOptimizer)
    ssam.fit(x, y, batch_size=N, epochs=1, shuffle=False, verbose=0)
    for got, w in zip(ssam.model.get_weights(), want):
        np.testing.assert_allclose(got, w, atol=2e-3, rtol=0)
    # Without the loss scale on the decay term it would be 2**15 times too
    # large (or too small): the weights would be far off.


# ------------------------------------------------ steps_per_execution, class_weight
def _weighted_reference(params, x, y, sw, masks, rho, lr, batch):
    w = [p.copy() for p in params]

    def grad(p, xs, ys, ws):
        p = [tf.constant(v) for v in p]
        with tf.GradientTape() as tape:
            tape.watch(p)
            logits = tf.nn.relu(xs @ p[0] + p[1]) @ p[2] + p[3]
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(ys, logits)
            loss = tf.reduce_sum(ce * ws) / len(ys)
        return [g.numpy() for g in tape.gradient(loss, p)]

    for start in range(0, len(y), batch):
        sl = slice(start, start + batch)
        g = grad(w, x[sl], y[sl], sw[sl])
        e = numpy_perturbation(g, masks, rho)
        g2 = grad([v + ei.astype("float32") for v, ei in zip(w, e)], x[sl], y[sl], sw[sl])
        w = [v - lr * gi for v, gi in zip(w, g2)]
    return w


@pytest.mark.parametrize("option", ["steps_per_execution", "class_weight"])
def test_masked_perturbation_under_fit_options_matches_reference(option):
    x, y = make_data()
    params = make_params()
    masks = random_masks(params, density=0.4)
    class_weight = {0: 0.2, 1: 1.0, 2: 3.0}
    sw = np.ones(N, "float32")
    fit_kwargs, compile_kwargs = {}, {}
    if option == "class_weight":
        fit_kwargs["class_weight"] = class_weight
        sw = np.array([class_weight[int(c)] for c in y], "float32")
    else:
        compile_kwargs["steps_per_execution"] = 3
    ssam = SSAMModel(make_mlp(params), rho=0.3)
    ssam.set_masks(masks)
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS, **compile_kwargs)
    ssam.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, **fit_kwargs)
    want = _weighted_reference(params, x, y, sw, masks, 0.3, 0.1, 8)
    for got, w in zip(ssam.model.get_weights(), want):
        np.testing.assert_allclose(got, w, atol=1e-6, rtol=0)


# ------------------------------------------------------------------ API surprises
def test_count_params_and_summary_describe_the_wrapped_model():
    inner = make_mlp(make_params())
    ssam = SSAMModel(inner, rho=0.1)
    assert ssam.count_params() == inner.count_params() == D * 7 + 7 + 7 * C + C
    lines = []
    ssam.summary(print_fn=lambda line, *a, **k: lines.append(line))
    text = "\n".join(lines)
    assert "mask" not in text
    assert f"{inner.count_params()}" in text.replace(",", "")


def test_default_epsilon_is_the_official_1e_minus_7():
    """With a tiny gradient the norm's epsilon matters: 1e-7 as in the official code."""
    g = [np.full((3,), 1e-7 / np.sqrt(3), "float32")]  # ||g|| = 1e-7
    (e,) = sparse_perturbation([tf.constant(g[0])], [tf.ones((3,))], 0.1)
    # rho * g / (||g|| + 1e-7) = 0.1 * g / 2e-7: half the unit-direction step.
    np.testing.assert_allclose(e.numpy(), 0.1 * g[0] / 2e-7, rtol=1e-5)
    assert inspect.signature(SSAMModel).parameters["epsilon"].default == 1e-7


def test_config_covers_every_init_argument():
    """Compared with the __init__ signature, so a dropped argument fails."""
    values = dict(
        rho=0.25,
        norm_scope="masked",
        adaptive=True,
        eta=0.3,
        perturbation="local",
        epsilon=1e-9,
        num_batch_splits=3,
        non_finite="stop",
        coupled_weight_decay=5e-4,
        reuse_activations=False,
        interval=4,
        between="looksam",
        alpha=0.5,
    )
    names = set(inspect.signature(SSAMModel.__init__).parameters) - {"self", "model", "kwargs"}
    # `trigger` and `ascent` exclude `interval > 1`: checked on models of their own below.
    assert names == set(values) | {"trigger", "ascent", "momentum"}
    defaults = {k: p.default for k, p in inspect.signature(SSAMModel.__init__).parameters.items()}
    assert all(values[k] != defaults[k] for k in values)  # every value is a non-default
    model = SSAMModel(make_mlp(make_params()), **values)
    config = model.get_config()
    clone = SSAMModel.from_config(json.loads(json.dumps(config)))
    for key, value in values.items():
        assert config[key] == value, key
        assert getattr(clone, key) == value, key
    trigger = GradientNormTrigger(0.8, -0.5, 0.5, 123)
    model = SSAMModel(make_mlp(make_params()), trigger=trigger)
    clone = SSAMModel.from_config(json.loads(json.dumps(model.get_config())))
    assert (
        clone.trigger.get_config()
        == trigger.get_config()
        != GradientNormTrigger(0.9, -0.5, 0.5, 123).get_config()
    )
    model = SSAMModel(make_mlp(make_params()), ascent="momentum", momentum=0.5)
    clone = SSAMModel.from_config(json.loads(json.dumps(model.get_config())))
    assert (clone.ascent, clone.momentum) == ("momentum", 0.5)
