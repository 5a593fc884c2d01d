"""Mask strategies against NumPy and per-example-loop references."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssam import DynamicMask, FisherMask, RandomMask, SSAMModel, mask_ops  # noqa: F401

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def conv_bn_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ]
    )


def data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6, 6, 2)).astype("float32"), rng.integers(0, 3, n)


def compiled(seed=0, loss=LOSS, **kwargs):
    model = SSAMModel(conv_bn_model(seed), rho=0.1, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=loss)
    return model


def loop_fisher(inner, x, y, loss_fn):
    """Reference: one example at a time, as the official code does."""
    totals = [np.zeros(v.shape) for v in inner.trainable_variables]
    for i in range(len(y)):
        with tf.GradientTape() as tape:
            loss = loss_fn(y[i : i + 1], inner(x[i : i + 1], training=False))
        for t, g in zip(totals, tape.gradient(loss, inner.trainable_variables)):
            t += np.square(g.numpy().astype(np.float64))
    return totals


def numpy_topk(scores, k):
    order = np.argsort(-scores, kind="stable")  # ties: lower index first
    out = np.zeros_like(scores)
    out[order[:k]] = 1
    return out


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_fisher_scores_and_mask_match_loop_reference(loss):
    x, y = data()
    if loss == "mse":
        loss_obj, targets = keras.losses.MeanSquaredError(), np.eye(3)[y].astype("float32")
    else:
        loss_obj, targets = LOSS, y
    model = compiled(loss=loss_obj)
    model.fit(x, targets, batch_size=20, epochs=1, verbose=0)  # non-trivial BN stats
    callback = FisherMask(x, targets, num_samples=13, chunk_size=5, sparsity=0.7)
    callback.set_model(model)
    xs, ys = callback.sample()
    assert len(ys) == 13
    before = [v.numpy().copy() for v in model.variables]
    opt_before = [v.numpy().copy() for v in model.optimizer.variables]
    got = callback.fisher_scores(xs, ys)
    want = loop_fisher(model.model, xs, ys, loss_obj)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-5, atol=1e-12)
    # Global top-k over all variables, exactly k entries, same set.
    flat = np.concatenate([w.ravel() for w in want])
    k = mask_ops.num_perturbed(0.7, flat.size)
    mask = mask_ops.top_k_indicator(mask_ops.flatten(got), k).numpy()
    assert mask.sum() == k == round(0.3 * flat.size)
    np.testing.assert_array_equal(mask, numpy_topk(flat, k))
    # Nothing else moved: weights, BN statistics, optimizer slots.
    for b, v in zip(before, model.variables):
        np.testing.assert_array_equal(b, v.numpy())
    for b, v in zip(opt_before, model.optimizer.variables):
        np.testing.assert_array_equal(b, v.numpy())


def test_fisher_callback_sets_mask_before_first_step_and_each_epoch():
    x, y = data()
    model = compiled()
    seen = []
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda b, logs: seen.append(model.mask_density())
    )
    callback = FisherMask(x, y, num_samples=16, sparsity=0.5)
    history = model.fit(x, y, batch_size=20, epochs=3, verbose=0, callbacks=[callback, probe])
    k = mask_ops.num_perturbed(0.5, callback.num_entries)
    np.testing.assert_allclose(seen, k / callback.num_entries, rtol=1e-6)
    assert callback.updates == 3
    assert history.history["mask_changed"][0] == callback.num_entries - k
    assert all(s >= 0 for s in history.history["mask_seconds"])


def test_fisher_from_dataset_samples_real_examples():
    x, y = data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    model = compiled()
    callback = FisherMask(dataset, num_samples=10)
    callback.set_model(model)
    xs, ys = callback.sample()
    assert xs.shape == (10, 6, 6, 2)
    rows = {x[i].tobytes(): y[i] for i in range(len(y))}
    assert all(rows[a.tobytes()] == b for a, b in zip(xs, ys))


def test_drop_and_grow_matches_numpy():
    rng = np.random.default_rng(0)
    n, count = 200, 17
    mask = (rng.random(n) < 0.4).astype("float32")
    g = rng.normal(size=n).astype("float32")
    grow = rng.random(n).astype("float32")
    new = mask_ops.drop_and_grow(tf.constant(mask), tf.abs(g), tf.constant(grow), count).numpy()
    on, off = np.flatnonzero(mask), np.flatnonzero(mask == 0)
    dropped = on[np.argsort(np.abs(g[on]), kind="stable")[:count]]
    grown = off[np.argsort(-grow[off], kind="stable")[:count]]
    want = mask.copy()
    want[dropped] = 0
    want[grown] = 1
    np.testing.assert_array_equal(new, want)
    assert new.sum() == mask.sum()


def test_dynamic_schedule_formula_and_counts():
    callback = DynamicMask(sparsity=0.5, drop_rate=0.4)
    callback.set_model(compiled())
    callback.set_params({"epochs": 10, "steps": 5})
    for t in range(11):
        assert math.isclose(callback.drop_fraction(t), 0.2 * (1 + math.cos(math.pi * t / 10)))
        assert callback.drop_count(t) == math.floor(callback.drop_fraction(t) * callback.k + 0.5)


def test_dynamic_update_drops_smallest_first_pass_gradient():
    """Run 2 epochs of one batch; the epoch-1 step updates with its own g."""
    x, y = data(n=20)
    model = compiled()
    callback = DynamicMask(sparsity=0.6, drop_rate=0.8, seed=3)
    snap = {}

    def on_epoch_end(epoch, logs):
        if epoch == 0:
            snap["w"] = [v.numpy().copy() for v in model.model.variables]
            snap["m"] = mask_ops.flatten(model.masks).numpy()

    history = model.fit(
        x,
        y,
        batch_size=20,
        epochs=2,
        verbose=0,
        shuffle=False,
        callbacks=[callback, keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)],
    )
    # Reference gradient: the unperturbed pass at the epoch-1 start weights.
    ref = conv_bn_model()
    ref.set_weights(snap["w"])
    with tf.GradientTape() as tape:
        loss = LOSS(y, ref(x, training=True))
    g = np.abs(mask_ops.flatten(tape.gradient(loss, ref.trainable_variables)).numpy())
    old, new = snap["m"], mask_ops.flatten(model.masks).numpy()
    count = callback.drop_count(1)
    assert count > 0 and new.sum() == old.sum() == callback.k
    on = np.flatnonzero(old)
    want_dropped = set(on[np.argsort(g[on], kind="stable")[:count]])
    assert set(np.flatnonzero((old == 1) & (new == 0))) == want_dropped
    assert np.sum((old == 0) & (new == 1)) == count
    assert history.history["mask_changed"][1] == 2 * count


def test_dynamic_runs_are_reproducible_and_seeds_differ():
    x, y = data()

    def run(seed):
        model = compiled()
        model.fit(
            x,
            y,
            batch_size=10,
            epochs=3,
            verbose=0,
            shuffle=False,
            callbacks=[DynamicMask(0.7, seed=seed, update_interval=2, update_unit="step")],
        )
        return mask_ops.flatten(model.masks).numpy(), model.get_weights()

    (m1, w1), (m2, w2), (m3, _) = run(1), run(1), run(2)
    np.testing.assert_array_equal(m1, m2)
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)
    assert np.any(m1 != m3)


def test_random_mask_density_and_zero_sparsity_is_dense():
    x, y = data()
    for sparsity, cls in ((0.9, RandomMask), (0.0, FisherMask), (0.0, DynamicMask)):
        model = compiled()
        cb = cls(x, y, sparsity=sparsity) if cls is FisherMask else cls(sparsity)
        model.fit(x, y, batch_size=20, epochs=1, verbose=0, callbacks=[cb])
        ones = int(mask_ops.flatten(model.masks).numpy().sum())
        assert ones == mask_ops.num_perturbed(sparsity, cb.num_entries)
    assert ones == cb.num_entries


def test_nan_scores_never_change_density():
    scores = tf.constant([np.nan, 1.0, np.nan, 3.0, 2.0, np.nan])
    np.testing.assert_array_equal(mask_ops.top_k_indicator(scores, 4).numpy(), [1, 1, 0, 1, 1, 0])


class TestBadArguments:
    @pytest.mark.parametrize("value", [-0.1, 1.0, float("nan")])
    def test_sparsity(self, value):
        with pytest.raises(ValueError, match="sparsity="):
            RandomMask(sparsity=value)

    def test_intervals_and_samples(self):
        x, y = data()
        with pytest.raises(ValueError, match="num_samples=0"):
            FisherMask(x, y, num_samples=0)
        with pytest.raises(ValueError, match="update_interval=0"):
            DynamicMask(update_interval=0)
        with pytest.raises(ValueError, match="update_unit='batch'"):
            DynamicMask(update_unit="batch")

    @pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
    def test_drop_rate(self, value):
        with pytest.raises(ValueError, match="drop_rate="):
            DynamicMask(drop_rate=value)

    @pytest.mark.parametrize("arg", ["drop_strategy", "growth_strategy"])
    def test_strategy(self, arg):
        with pytest.raises(ValueError, match=f"{arg}='magnitude'"):
            DynamicMask(**{arg: "magnitude"})

    def test_empty_data(self):
        empty = tf.data.Dataset.from_tensor_slices(
            (np.zeros((0, 6, 6, 2), "float32"), np.zeros((0,), "int64"))
        ).batch(4)
        with pytest.raises(ValueError, match="empty dataset"):
            FisherMask(empty)
        with pytest.raises(ValueError, match="non-zero number"):
            FisherMask(np.zeros((0, 2)), np.zeros((0,)))

    def test_callback_on_a_plain_model(self):
        model = conv_bn_model()
        model.compile(optimizer="sgd", loss=LOSS)
        x, y = data()
        with pytest.raises(TypeError, match="SSAMModel"):
            model.fit(x, y, epochs=1, verbose=0, callbacks=[RandomMask()])


@pytest.mark.parametrize("seed", range(6))
def test_exact_top_k_selection_matches_stable_sort(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    # Heavy ties, negatives, signed zeros and infinities.
    pool = np.array([-np.inf, -3.5, -1.0, -0.0, 0.0, 1e-30, 2.0, 2.0, 7.25, np.inf], "float32")
    scores = rng.choice(pool, size=n) if seed % 2 else rng.normal(size=n).astype("float32")
    for k in {0, 1, n // 3, n // 2, n - 1, n}:
        got = mask_ops.top_k_indicator(tf.constant(scores), k).numpy()
        want = numpy_topk(np.where(scores == 0, 0.0, scores), k)  # -0.0 ties +0.0 in NumPy
        if seed % 2:  # ties between -0.0 and 0.0 order by sign in our keys
            assert got.sum() == k
            assert np.min(scores[got == 1], initial=np.inf) >= np.max(
                scores[got == 0], initial=-np.inf
            )
        else:
            np.testing.assert_array_equal(got, want)
