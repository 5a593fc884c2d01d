"""Every method on KerasHub's two families (BERT text, ResNet image) against a plain tape.

Each case runs three steps of `SSAMModel(task).fit` on raw strings / raw images
and the same three steps written out with `tf.GradientTape` on an identical
copy of the task (same initial weights, same Dropout draws in both passes,
BatchNorm statistics from the first pass only), then compares the weight
changes by the relative L2 error of the whole weight change. Tolerances
(measured errors in brackets, keras-hub 0.32 / TF 2.21 on CPU): float32 1e-5
(<= 3e-6); BERT mixed_float16 5e-3 (<= 1.4e-3), mixed_bfloat16 5e-2
(<= 2.6e-2); ResNet mixed_float16 1e-1 (<= 5.4e-2), mixed_bfloat16 2e-1
(<= 1.1e-1): BatchNorm over 3 images in half precision makes the first
conv's kernel gradient a difference of nearly equal terms, so the two
computations round apart there (the reference's own result moves by as much
when its loss is scaled).
"""

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras_hub_models as hub_models  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_ssam  # noqa: E402

RHO, LR, ALPHA, MOMENTUM, EPSILON, BATCH = 0.05, 0.1, 0.7, 0.9, 1e-7, 3
TOLERANCE = {
    ("bert", "float32"): 1e-5,
    ("resnet", "float32"): 1e-5,
    ("bert", "mixed_float16"): 5e-3,
    ("bert", "mixed_bfloat16"): 5e-2,
    ("resnet", "mixed_float16"): 1e-1,
    ("resnet", "mixed_bfloat16"): 2e-1,
}
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
    # float16 gradients are taken of the loss times LossScaleOptimizer's
    # initial scale (2^15), as SSAMModel's are, or small ones underflow.
    scale = 2.0**15 if task.dtype_policy.name == "mixed_float16" else 1.0
    with tf.GradientTape() as tape:
        loss = _loss(task, x, y) * scale
    grads = tape.gradient(loss, task.trainable_variables)
    return [tf.cast(tf.convert_to_tensor(g), "float32") / scale for g in grads]


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


def check_matches_reference(family, method, dtype):
    initial, final, masks, model = _ssam_run(family, method, dtype)
    ref_initial, ref_final = _reference_run(family, method, dtype, masks)
    for a, b in zip(initial, ref_initial):
        np.testing.assert_array_equal(a, b)  # the two copies start equal
    got = [f - i for f, i in zip(final, initial)]
    want = [f - i for f, i in zip(ref_final, ref_initial)]
    flat_got, flat_want = (np.concatenate([np.ravel(d) for d in ds]) for ds in (got, want))
    error = np.linalg.norm(flat_got - flat_want) / np.linalg.norm(flat_want)
    print(f"{family} {method} {dtype}: relative L2 error of the weight change {error:.2e}")
    assert error <= TOLERANCE[family, dtype], error
    if method in ("ssam_f", "ssam_d"):
        density = np.mean(np.concatenate([np.ravel(m) for m in masks[0]]))
        assert 0.4 < density < 0.6  # a sparse mask was in use
    if dtype == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


@pytest.mark.parametrize("family", ["bert", "resnet"])
def test_sam_equals_the_tape_reference(family):
    check_matches_reference(family, "sam", "float32")


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS[1:])
@pytest.mark.parametrize("family", ["bert", "resnet"])
def test_method_equals_the_tape_reference(family, method):
    check_matches_reference(family, method, "float32")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["bert", "resnet"])
def test_method_in_mixed_precision_equals_the_tape_reference(family, method, dtype):
    check_matches_reference(family, method, dtype)
