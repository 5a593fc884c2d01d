"""Mask strategies against NumPy, hand-computed and per-example-loop references."""

import inspect
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssam import DynamicMask, FisherMask, RandomMask, SSAMModel
from keras_ssam.masks import mask_ops

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
N_ENTRIES = 99  # conv_bn_model: conv 72 + 4, BN gamma/beta 8, dense 12 + 3


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


def flat_masks(model):
    return mask_ops.flatten(model.masks).numpy()


def loop_fisher(inner, x, y, loss_fn, training):
    """Reference: one example at a time with a bare tape, as the official code.

    In training mode it runs on a clone, so that the moving statistics its
    BatchNorm updates stay out of the model under test.
    """
    if training:
        clone = keras.models.clone_model(inner)
        clone.set_weights(inner.get_weights())
        inner = clone
    totals = [np.zeros(v.shape) for v in inner.trainable_variables]
    for i in range(len(y)):
        with tf.GradientTape() as tape:
            loss = loss_fn(y[i : i + 1], inner(x[i : i + 1], training=training))
        for t, g in zip(totals, tape.gradient(loss, inner.trainable_variables)):
            t += np.square(g.numpy().astype(np.float64))
    return totals


def numpy_topk(scores, k):
    order = np.argsort(-scores, kind="stable")  # ties: lower index first
    out = np.zeros_like(scores)
    out[order[:k]] = 1
    return out


@pytest.mark.parametrize(
    "loss, training, fresh",
    [("ce", True, True), ("mse", True, False), ("ce", False, False), ("mse", False, True)],
)
def test_fisher_scores_and_mask_match_loop_reference(loss, training, fresh):
    x, y = data()
    if loss == "mse":
        loss_obj, targets = keras.losses.MeanSquaredError(), np.eye(3)[y].astype("float32")
    else:
        loss_obj, targets = LOSS, y
    model = compiled(loss=loss_obj)
    if not fresh:
        model.fit(x, targets, batch_size=20, epochs=1, verbose=0)  # non-trivial BN stats
    kwargs = {} if training else {"training": False}  # training mode is the default
    callback = FisherMask(x, targets, num_samples=13, chunk_size=5, sparsity=0.7, **kwargs)
    callback.set_model(model)
    xs, ys = callback.sample()
    assert len(ys) == 13
    before = [v.numpy().copy() for v in model.variables]
    opt_before = [v.numpy().copy() for v in model.optimizer.variables]
    got = callback.fisher_scores(xs, ys)
    want = loop_fisher(model.model, xs, ys, loss_obj, training)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=2e-5, atol=1e-12)
    # Global top-k over all variables, exactly k entries, same set.
    flat = np.concatenate([w.ravel() for w in want])
    k = mask_ops.num_perturbed(0.7, flat.size)
    assert k == 30  # round(0.3 * 99) = round(29.7)
    mask = mask_ops.top_k_indicator(mask_ops.flatten(got), k).numpy()
    np.testing.assert_array_equal(mask, numpy_topk(flat, k))
    # Nothing else moved: weights, BN statistics, optimizer slots.
    for b, v in zip(before, model.variables):
        np.testing.assert_array_equal(b, v.numpy())
    for b, v in zip(opt_before, model.optimizer.variables):
        np.testing.assert_array_equal(b, v.numpy())


def test_fisher_train_and_inference_modes_differ_on_a_fresh_network():
    """On a fresh network BN's moving statistics are 0/1: the modes must differ."""
    x, y = data()
    model = compiled()
    scores = {}
    for training in (True, False):
        callback = FisherMask(x, y, num_samples=8, training=training)
        callback.set_model(model)
        scores[training] = mask_ops.flatten(callback.fisher_scores(x[:8], y[:8])).numpy()
    assert not np.allclose(scores[True], scores[False], rtol=1e-2)


def test_fisher_training_mode_draws_dropout_per_example():
    """16 examples in one vectorized chunk, Dropout(0.5) before the last Dense.

    With its own Dropout draw per example (the official batch-size-1 loop),
    a hidden unit is dropped for all 16 examples with probability 2^-16, so
    (almost) every row of the last kernel has a non-zero Fisher; a draw shared
    by the chunk would zero about half of the rows. Seed states stay put.
    """
    keras.utils.set_random_seed(0)
    inner = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(64, activation="tanh"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(3),
        ]
    )
    model = SSAMModel(inner, rho=0.1)
    model.compile(optimizer="sgd", loss=LOSS)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 5)).astype("float32"), rng.integers(0, 3, 16)
    seeds = [v.numpy().copy() for v in inner.variables if v.name == "seed_generator_state"]
    callback = FisherMask(x, y, num_samples=16, chunk_size=16)
    callback.set_model(model)
    kernel = callback.fisher_scores(x, y)[2].numpy()  # the last Dense kernel, 64 x 3
    zero_rows = np.mean(np.all(kernel == 0, axis=1))
    assert zero_rows <= 2 / 64, zero_rows
    after = [v.numpy() for v in inner.variables if v.name == "seed_generator_state"]
    for a, b in zip(seeds, after):
        np.testing.assert_array_equal(a, b)
    # Inference mode: no Dropout, equal to the per-example loop.
    callback = FisherMask(x, y, num_samples=16, chunk_size=16, training=False)
    callback.set_model(model)
    got = callback.fisher_scores(x, y)
    for g, w in zip(got, loop_fisher(inner, x, y, LOSS, training=False)):
        np.testing.assert_allclose(g.numpy(), w, rtol=2e-5, atol=1e-12)


def test_fisher_callback_sets_mask_before_first_step_and_each_epoch():
    x, y = data()
    model = compiled()
    seen, begin, end = [], [], []
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda b, logs: seen.append(model.mask_density())
    )
    # Listed first, so each epoch's window holds the mask update of that epoch's begin.
    clock = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: begin.append(time.perf_counter()),
        on_epoch_end=lambda e, logs: end.append(time.perf_counter()),
    )
    callback = FisherMask(x, y, num_samples=16, sparsity=0.5)
    history = model.fit(
        x, y, batch_size=20, epochs=3, verbose=0, callbacks=[clock, callback, probe]
    )
    np.testing.assert_allclose(seen, 50 / N_ENTRIES, rtol=1e-6)  # k = round(49.5) = 50
    assert [h["index"] for h in callback.history] == [0, 1, 2]
    assert history.history["mask_changed"][0] == N_ENTRIES - 50
    # One update per epoch: its time is positive and within the epoch.
    for seconds, a, b in zip(history.history["mask_seconds"], begin, end, strict=True):
        assert 0 < seconds <= b - a


def class_sorted(n_per_class=1000, classes=3):
    x = np.arange(n_per_class * classes * 2, dtype="float32").reshape(-1, 2)
    y = np.repeat(np.arange(classes), n_per_class)
    return x, y


def test_fisher_dataset_draws_uniformly_over_class_sorted_data():
    # 3000 examples sorted by class, larger than any shuffle buffer of the
    # old sampler (max(1024, 8 * num_samples)), which drew from the head.
    x, y = class_sorted()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    unknown = dataset.filter(lambda a, b: True)  # cardinality unknown: counted
    for source in (dataset, unknown):
        callback = FisherMask(source, num_samples=30, seed=5)
        for index in (0, 1, 7):
            callback.index = index
            xs, ys = callback.sample()
            # Independent reference: a seeded NumPy choice over all positions.
            rng = np.random.default_rng([5, index])
            want = np.sort(rng.choice(len(y), size=30, replace=False))
            np.testing.assert_array_equal(xs, x[want])
            np.testing.assert_array_equal(ys, y[want])
            counts = np.bincount(ys, minlength=3)
            assert counts.min() >= 4, counts  # about 10 of each class
    # Arrays draw the same examples.
    arrays = FisherMask(x, y, num_samples=30, seed=5)
    arrays.index = 7
    np.testing.assert_array_equal(arrays.sample()[0], xs)


def test_fisher_dataset_with_sample_weights_and_infinite_dataset():
    x, y = class_sorted(20)
    weighted = tf.data.Dataset.from_tensor_slices((x, y, np.ones(len(y)))).batch(7)
    xs, ys = FisherMask(weighted, num_samples=60).sample()
    np.testing.assert_array_equal(np.sort(xs[:, 0]), x[:, 0])  # all 60, each once
    infinite = tf.data.Dataset.from_tensor_slices((x, y)).batch(7).repeat()
    with pytest.raises(ValueError, match="infinite"):
        FisherMask(infinite).sample()


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


@pytest.mark.parametrize(
    "sparsity, total, want",
    [
        (0.5, 99, 50),  # 49.5: halves round up
        (0.5, 3, 2),  # 1.5
        (0.75, 10, 3),  # 2.5
        (0.7, 10, 3),  # 3.0000000000000004
        (0.3, 10, 7),
        (0.9, 99, 10),  # 9.9
        (0.99, 99, 1),  # 0.99
        (0.999, 99, 0),  # 0.099
        (0.0, 7, 7),
    ],
)
def test_num_perturbed_hand_computed(sparsity, total, want):
    assert mask_ops.num_perturbed(sparsity, total) == want


def test_dynamic_schedule_hand_computed():
    """d(t) = 0.2 (1 + cos(pi t / 10)), k = 50: values worked out by hand."""
    callback = DynamicMask(sparsity=0.5, drop_rate=0.4)
    callback.set_model(compiled())
    callback.set_params({"epochs": 10, "steps": 5})
    assert callback.k == 50
    fractions = {0: 0.4, 5: 0.2, 10: 0.0, 2: 0.3618034, 8: 0.0381966}
    for t, want in fractions.items():
        assert callback.drop_fraction(t) == pytest.approx(want, abs=1e-7)
    # round(d(t) * 50): 20, 18.09 -> 18, 15.88 -> 16, 10, 4.12 -> 4, 1.91 -> 2, 0.
    counts = {0: 20, 2: 18, 3: 16, 5: 10, 7: 4, 8: 2, 10: 0}
    assert {t: callback.drop_count(t) for t in counts} == counts
    # Feasibility: k = round(0.9 * 99) = 89, only 10 unperturbed entries to grow.
    dense = DynamicMask(sparsity=0.1, drop_rate=1.0)
    dense.set_model(compiled())
    dense.set_params({"epochs": 10})
    assert (dense.k, dense.drop_count(0)) == (89, 10)
    # Step unit: T = steps * epochs = 50; d(25) = 0.2.
    steps = DynamicMask(sparsity=0.5, drop_rate=0.4, update_unit="step")
    steps.set_model(compiled())
    steps.set_params({"epochs": 10, "steps": 5})
    assert steps.drop_count(25) == 10


def reference_first_step(weights, x, y, mask, rho, lr, epsilon):
    """Official SSAM-D step 1: e with the current mask, SGD on grad L(w + e)."""
    ref = conv_bn_model()
    ref.set_weights(weights)
    variables = ref.trainable_variables
    with tf.GradientTape() as tape:
        loss = LOSS(y, ref(x, training=True))
    g = [t.numpy().astype(np.float64) for t in tape.gradient(loss, variables)]
    norm = np.sqrt(sum(np.sum(t**2) for t in g))
    sizes = [t.size for t in g]
    masks = np.split(mask, np.cumsum(sizes)[:-1])
    e = [rho * t / (norm + epsilon) * m.reshape(t.shape) for t, m in zip(g, masks)]
    w = [v.numpy() for v in variables]
    for v, wi, ei in zip(variables, w, e):
        v.assign(wi + ei.astype("float32"))
    with tf.GradientTape() as tape:
        loss = LOSS(y, ref(x, training=True))
    g2 = tape.gradient(loss, variables)
    new = [wi - lr * gi.numpy() for wi, gi in zip(w, g2)]  # momentum: first step
    return new, np.concatenate([t.ravel() for t in g])


def test_dynamic_official_order_updates_at_epoch_zero_after_e():
    """Step 1 perturbs with the initial mask, then drops/grows with its own g."""
    x, y = data(n=20)
    model = compiled()
    start = [v.numpy().copy() for v in model.model.variables]
    callback = DynamicMask(sparsity=0.6, drop_rate=0.5, seed=3)
    seen = {}
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda b, logs: seen.setdefault("m0", flat_masks(model))
    )
    history = model.fit(
        x, y, batch_size=20, epochs=1, verbose=0, shuffle=False, callbacks=[callback, probe]
    )
    m0, m1 = seen["m0"], flat_masks(model)
    k, count = 40, 20  # round(0.4 * 99) = round(39.6); d(0) * k = 0.5 * 40
    assert m0.sum() == m1.sum() == k
    want_w, g = reference_first_step(start, x, y, m0, 0.1, 0.1, model.epsilon)
    for got, want in zip(model.model.trainable_variables, want_w):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)
    on = np.flatnonzero(m0)
    want_dropped = set(on[np.argsort(np.abs(g[on]), kind="stable")[:count]])
    assert set(np.flatnonzero((m0 == 1) & (m1 == 0))) == want_dropped
    assert np.sum((m0 == 0) & (m1 == 1)) == count
    # The initial mask (N - k changes from dense) and the epoch-0 update.
    assert history.history["mask_changed"] == [N_ENTRIES - k + 2 * count]
    assert [h["index"] for h in callback.history] == [0, 0]


def test_dynamic_update_drops_smallest_first_pass_gradient():
    """Run 2 epochs of one batch; the epoch-1 step updates with its own g."""
    x, y = data(n=20)
    model = compiled()
    callback = DynamicMask(sparsity=0.6, drop_rate=0.8, seed=3)
    snap = {}

    def on_epoch_end(epoch, logs):
        if epoch == 0:
            snap["w"] = [v.numpy().copy() for v in model.model.variables]
            snap["m"] = flat_masks(model)

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
    old, new = snap["m"], flat_masks(model)
    count = 16  # d(1) = 0.4 (1 + cos(pi / 2)) = 0.4, k = 40
    assert new.sum() == old.sum() == 40
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
        return flat_masks(model), model.get_weights()

    (m1, w1), (m2, w2), (m3, _) = run(1), run(1), run(2)
    np.testing.assert_array_equal(m1, m2)
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)
    assert np.any(m1 != m3)


# Steps-per-execution: 60 examples in batches of 10 = 6 steps per epoch, 4
# steps per execution, so Keras calls the batch hooks at the steps 0 and 4
# of each epoch: global steps 0, 4 | 6, 10 | 12, 16. With update_interval=3
# updates are due at 3, 6, 9, 12, 15 and run at the first boundary at or
# after them: 4 (3), 6, 10 (9), 12, 16 (15). Worked out by hand.
SPE_UPDATES = [4, 6, 10, 12, 16]


@pytest.mark.parametrize("cls", [RandomMask, DynamicMask])
def test_step_updates_with_steps_per_execution(cls):
    x, y = data(n=60)
    model = SSAMModel(conv_bn_model(), rho=0.1)
    model.compile(optimizer="sgd", loss=LOSS, steps_per_execution=4)
    callback = cls(sparsity=0.5, update_interval=3, update_unit="step", seed=1)
    boundaries, masks = [], []

    def probe(batch, logs):
        boundaries.append(batch)
        masks.append(flat_masks(model))

    model.fit(
        x,
        y,
        batch_size=10,
        epochs=3,
        verbose=0,
        shuffle=False,
        callbacks=[callback, keras.callbacks.LambdaCallback(on_train_batch_begin=probe)],
    )
    assert boundaries == [0, 4] * 3
    indices = [h["index"] for h in callback.history]
    if cls is RandomMask:  # the initial mask, then a redraw at each update
        assert indices == [0, *SPE_UPDATES]
        global_steps = [0, 4, 6, 10, 12, 16]
        changed = [not np.array_equal(a, b) for a, b in zip(masks, masks[1:])]
        assert changed == [s in SPE_UPDATES for s in global_steps[1:]]
    else:  # the initial mask, the step-0 update (as at epoch 0), then in-step updates
        assert indices == [0, 0, *SPE_UPDATES]
        assert all(h["mask_changed"] > 0 for h in callback.history)


def test_sparse_step_under_steps_per_execution_and_class_weight():
    """A 30 % mask with rho > 0: steps_per_execution=4 and class_weight change nothing.

    The reference is the plain one-step-per-execution run with the class
    weights given as per-example sample weights (the step itself is pinned
    against a NumPy reference in test_step.py).
    """
    x, y = data(n=60)
    class_weight = {0: 2.0, 1: 0.5, 2: 1.0}

    def run(per_execution, **fit_kwargs):
        model = SSAMModel(conv_bn_model(), rho=0.5)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            loss=LOSS,
            steps_per_execution=per_execution,
        )
        model.fit(
            x,
            y,
            batch_size=10,
            epochs=2,
            verbose=0,
            shuffle=False,
            callbacks=[RandomMask(0.7, seed=2)],
            **fit_kwargs,
        )
        return flat_masks(model), model.model.get_weights()

    ref_mask, ref = run(1, sample_weight=np.array([class_weight[c] for c in y]))
    assert ref_mask.sum() == 30  # round(0.3 * 99) = round(29.7)
    for got_mask, got in (run(4, class_weight=class_weight), run(1, class_weight=class_weight)):
        np.testing.assert_array_equal(got_mask, ref_mask)
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The mask matters: a dense (SAM) run ends elsewhere.
    model = SSAMModel(conv_bn_model(), rho=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS)
    model.fit(
        x,
        y,
        batch_size=10,
        epochs=2,
        verbose=0,
        shuffle=False,
        sample_weight=np.array([class_weight[c] for c in y]),
    )
    assert max(np.abs(a - b).max() for a, b in zip(model.model.get_weights(), ref)) > 1e-4


class Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.current = epoch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.current == self.epoch:
            raise RuntimeError("interrupted")


# Interrupted at epoch 1, resumed there. Steps: boundaries 0, 4 | 6, 10 |
# 12, 16 | 18, 22; update_interval=5 puts the due step 5 inside the last
# execution of epoch 0, so the resumed run must fire it at step 6 as the
# uninterrupted run does; then 10, 16 (15), 22 (20).
@pytest.mark.parametrize(
    "unit, interval, per_execution, resumed_updates",
    [("epoch", 1, 1, [1, 2, 3]), ("step", 5, 4, [6, 10, 16, 22])],
)
def test_random_mask_resume_redraws_identically(
    tmp_path, unit, interval, per_execution, resumed_updates
):
    x, y = data(n=60)

    def fit(extra=(), backup=None):
        model = SSAMModel(conv_bn_model(), rho=0.1)
        model.compile(optimizer="sgd", loss=LOSS, steps_per_execution=per_execution)
        callback = RandomMask(0.5, update_interval=interval, update_unit=unit, seed=4)
        callbacks = [callback, *extra]
        if backup:
            callbacks.append(keras.callbacks.BackupAndRestore(str(backup)))
        model.fit(x, y, batch_size=10, epochs=4, verbose=0, shuffle=False, callbacks=callbacks)
        return model, callback

    full, full_cb = fit()
    with pytest.raises(RuntimeError, match="interrupted"):
        fit([Interrupt(1)], tmp_path / "backup")
    resumed, resumed_cb = fit(backup=tmp_path / "backup")
    # The resumed run keeps the restored mask and redraws from epoch 1 on.
    assert [h["index"] for h in resumed_cb.history] == resumed_updates
    assert [h["index"] for h in full_cb.history][-len(resumed_updates) :] == resumed_updates
    np.testing.assert_array_equal(flat_masks(resumed), flat_masks(full))
    for a, b in zip(resumed.get_weights(), full.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class CountingSGD(keras.optimizers.SGD):
    """Counts host (eager) reads of `iterations`."""

    eager_reads = 0

    @property
    def iterations(self):
        if tf.executing_eagerly():
            CountingSGD.eager_reads += 1
        return self._iterations


def test_step_unit_reads_iterations_once_per_epoch():
    reads = {}
    for n in (20, 80):  # 2 and 8 steps per epoch
        x, y = data(n=n)
        model = SSAMModel(conv_bn_model(), rho=0.1)
        model.compile(optimizer=CountingSGD(0.1), loss=LOSS)
        callback = RandomMask(0.5, update_interval=5, update_unit="step")
        CountingSGD.eager_reads = 0
        model.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[callback])
        reads[n] = CountingSGD.eager_reads
        # The count still advances: updates at the steps 5, 10, 15 of 16.
        if n == 80:
            assert [h["index"] for h in callback.history] == [0, 5, 10, 15]
    assert reads[20] == reads[80] <= 2, reads


@pytest.mark.parametrize(
    "cls, data_args",
    [(FisherMask, True), (DynamicMask, False), (RandomMask, False)],
)
def test_get_config_covers_every_init_argument_and_round_trips(cls, data_args):
    x, y = data()
    arguments = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    values = {  # every argument away from its default
        "num_samples": 7,
        "chunk_size": 3,
        "training": False,
        "vectorize": False,
        "sparsity": 0.25,
        "update_interval": 4,
        "update_unit": "step",
        "seed": 9,
        "drop_rate": 0.3,
        "drop_strategy": "weight",
        "growth_strategy": "gradient",
        "total_steps": 11,
    }
    kwargs = {name: values[name] for name in arguments if name in values}
    data_kwargs = {"x": x, "y": y} if data_args else {}
    callback = cls(**data_kwargs, **kwargs)
    config = callback.get_config()
    assert set(config) == set(arguments) - {"x", "y"}
    assert config == kwargs
    rebuilt = cls.from_config({**config, **data_kwargs})
    assert rebuilt.get_config() == config
    serialized = keras.saving.serialize_keras_object(callback)
    if data_args:
        with pytest.raises(ValueError, match="'x': x"):
            keras.saving.deserialize_keras_object(serialized)
    else:
        restored = keras.saving.deserialize_keras_object(serialized)
        assert type(restored) is cls and restored.get_config() == config


@pytest.mark.parametrize("cls", [FisherMask, RandomMask, DynamicMask])
def test_masks_follow_the_trainable_set(cls):
    """Freeze a layer after wrapping: k and the logged density count trainable entries."""
    x, y = data()

    def fit(model):
        callback = FisherMask(x, y, sparsity=0.5) if cls is FisherMask else cls(0.5)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
        history = model.fit(x, y, batch_size=20, epochs=1, verbose=0, callbacks=[callback])
        return history.history["mask_density"], callback

    model = SSAMModel(conv_bn_model(), rho=0.1)
    model.model.layers[-1].trainable = False  # the dense head: 15 of the 99 entries
    density, _ = fit(model)
    trainable = flat_masks(model)
    assert trainable.size == 84 and trainable.sum() == 42  # exactly half
    assert density == [0.5]
    # Unfreezing invalidates the mask: the next fit computes one over all 99.
    model.model.layers[-1].trainable = True
    density, callback = fit(model)
    assert callback.history[0]["index"] == 0 and callback.history[0]["mask_changed"] > 0
    assert flat_masks(model).sum() == 50  # round(49.5)
    assert density == [pytest.approx(50 / 99)]
    # Freezing the conv: recomputed over the 23 trainable entries.
    model.model.layers[0].trainable = False
    density, _ = fit(model)
    assert flat_masks(model).size == 23 and flat_masks(model).sum() == 12  # round(11.5)
    assert density == [pytest.approx(12 / 23)]


def test_random_mask_density_and_zero_sparsity_is_dense():
    x, y = data()
    for sparsity, cls, want in (
        (0.9, RandomMask, 10),
        (0.0, FisherMask, 99),
        (0.0, DynamicMask, 99),
    ):
        model = compiled()
        cb = cls(x, y, sparsity=sparsity) if cls is FisherMask else cls(sparsity)
        model.fit(x, y, batch_size=20, epochs=1, verbose=0, callbacks=[cb])
        assert int(flat_masks(model).sum()) == want


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
        with pytest.raises(ValueError, match="chunk_size=0"):
            FisherMask(x, y, chunk_size=0)
        with pytest.raises(ValueError, match="update_interval=0"):
            DynamicMask(update_interval=0)
        with pytest.raises(ValueError, match="total_steps=0"):
            DynamicMask(total_steps=0)
        with pytest.raises(ValueError, match="update_unit='batch'"):
            DynamicMask(update_unit="batch")
        with pytest.raises(TypeError, match="training='train'"):
            FisherMask(x, y, training="train")

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
