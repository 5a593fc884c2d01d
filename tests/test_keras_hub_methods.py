"""Every method on KerasHub's two families (BERT text, ResNet image) against a plain tape.

Each case runs three steps of `SSAMModel(task).fit` on raw strings / raw images
and the same three steps written out with `tf.GradientTape` on an identical
copy of the task (same initial weights, same Dropout draws in both passes,
BatchNorm statistics from the first pass only), then compares the weight
changes. Tolerances, relative to the largest weight change: float32 1e-4,
mixed_float16 3e-2, mixed_bfloat16 8e-2 (bfloat16 keeps 8 bits of mantissa).
"""

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras_hub_models as hub_models  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_ssam  # noqa: E402

RHO, LR, ALPHA, MOMENTUM, EPSILON, BATCH = 0.05, 0.1, 0.7, 0.9, 1e-7, 3
TOLERANCE = {"float32": 1e-4, "mixed_float16": 3e-2, "mixed_bfloat16": 8e-2}
METHODS = ("sam", "ssam_f", "ssam_d", "looksam", "momentum")
FAMILIES = {
    "bert": (hub_models.bert_classifier, hub_models.text_data),
    "resnet": (hub_models.resnet_classifier, hub_models.images),
}


class MaskRecorder(keras.callbacks.Callback):
    """The masks each step starts from (those that form its `e`), by trainable index."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_begin(self, batch, logs=None):
        by_id = {
            id(v): np.asarray(m) for v, m in zip(self.model.masked_variables, self.model.masks)
        }
        self.steps.append([by_id[id(v)] for v in self.model.model.trainable_variables])


def _ssam_run(family, method, dtype):
    build, data = FAMILIES[family]
    x, y = data()
    task = build(dropout=0.1, dtype=None if dtype == "float32" else dtype)
    kwargs = {"rho": RHO}
    callbacks = []
    if method == "ssam_f":
        callbacks.append(keras_ssam.FisherMask(x, y, num_samples=8, sparsity=0.5))
    elif method == "ssam_d":
        callbacks.append(
            keras_ssam.DynamicMask(sparsity=0.5, update_interval=1, update_unit="step")
        )
    elif method == "looksam":
        kwargs.update(interval=2, between="looksam", alpha=ALPHA)
    elif method == "momentum":
        kwargs.update(ascent="momentum", momentum=MOMENTUM)
    model = keras_ssam.SSAMModel(task, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss=hub_models.loss())
    initial = [np.asarray(v) for v in task.trainable_variables]
    recorder = MaskRecorder()
    model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0, callbacks=callbacks + [recorder])
    final = [np.asarray(v) for v in task.trainable_variables]
    return initial, final, recorder.steps, model


def _loss(task, x, y):
    logits = task(x, training=True)
    loss = tf.reduce_mean(hub_models.loss()(y, tf.cast(logits, "float32")))
    return loss + sum(tf.cast(term, "float32") for term in task.losses)


def _grads(task, x, y):
    with tf.GradientTape() as tape:
        loss = _loss(task, x, y)
    grads = tape.gradient(loss, task.trainable_variables)
    return [tf.cast(tf.convert_to_tensor(g), "float32") for g in grads]


def _norm(grads):
    return tf.sqrt(sum(tf.reduce_sum(tf.square(g)) for g in grads))


def _reference_run(family, method, dtype, masks):
    """The method's steps with a bare tape on a fresh copy of the task."""
    build, data = FAMILIES[family]
    x, y = data()
    task = build(dropout=0.1, dtype=None if dtype == "float32" else dtype)
    variables = task.trainable_variables
    state = [v for v in task.variables if not v.trainable]  # BatchNorm statistics, seeds
    seeds = [v for v in state if v.name == "seed_generator_state"]
    initial = [np.asarray(v) for v in variables]
    buffer = [tf.zeros(v.shape) for v in variables]  # momentum v, or LookSAM's g_v / ||g_v||
    for step, start in enumerate(range(0, len(y), BATCH)):
        xb, yb = task.preprocessor(x[start : start + BATCH], y[start : start + BATCH])
        w = [tf.convert_to_tensor(v) for v in variables]
        if method == "momentum":
            norm = _norm(buffer)
            for v, wi, b in zip(variables, w, buffer):
                v.assign(wi - RHO * b / (norm + EPSILON) if step else wi)
            update = _grads(task, xb, yb)  # its state updates are kept
            buffer = [MOMENTUM * b + g for b, g in zip(buffer, update)]
        else:
            before = [tf.identity(tf.convert_to_tensor(s)) for s in seeds]
            g = _grads(task, xb, yb)
            after = [tf.identity(tf.convert_to_tensor(s)) for s in state]
            if method != "looksam" or step % 2 == 0:  # a SAM step
                norm = _norm(g)
                m = masks[step]
                for v, wi, gi, mi in zip(variables, w, g, m):
                    v.assign(wi + tf.cast(RHO * gi / (norm + EPSILON) * mi, v.dtype))
                for s, value in zip(seeds, before):  # the same Dropout draws
                    s.assign(value)
                update = _grads(task, xb, yb)
                for s, value in zip(state, after):  # pass 2's state updates dropped
                    s.assign(value)
                if method == "looksam":
                    dot = sum(tf.reduce_sum(a * b) for a, b in zip(g, update))
                    g_v = [s - dot / tf.square(norm) * a for a, s in zip(g, update)]
                    buffer = [v / _norm(g_v) for v in g_v]
            else:
                update = [gi + ALPHA * _norm(g) * b for gi, b in zip(g, buffer)]
        for v, wi, u in zip(variables, w, update):
            v.assign(wi - LR * tf.cast(u, v.dtype))
    return initial, [np.asarray(v) for v in variables]


def _check(family, method, dtype):
    initial, final, masks, model = _ssam_run(family, method, dtype)
    ref_initial, ref_final = _reference_run(family, method, dtype, masks)
    for a, b in zip(initial, ref_initial):
        np.testing.assert_array_equal(a, b)  # the two copies start equal
    got = [f - i for f, i in zip(final, initial)]
    want = [f - i for f, i in zip(ref_final, ref_initial)]
    scale = max(np.max(np.abs(d)) for d in want)
    worst = max(np.max(np.abs(a - b)) for a, b in zip(got, want))
    assert worst <= TOLERANCE[dtype] * scale, (worst, scale)
    if method in ("ssam_f", "ssam_d"):
        density = np.mean(np.concatenate([np.ravel(m) for m in masks[0]]))
        assert 0.4 < density < 0.6  # a sparse mask was in use
    if dtype == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


@pytest.mark.parametrize("family", ["bert", "resnet"])
def test_sam_equals_the_tape_reference(family):
    _check(family, "sam", "float32")


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS[1:])
@pytest.mark.parametrize("family", ["bert", "resnet"])
def test_method_equals_the_tape_reference(family, method):
    _check(family, method, "float32")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["bert", "resnet"])
def test_method_in_mixed_precision_equals_the_tape_reference(family, method, dtype):
    _check(family, method, dtype)
