"""Runs SSAM under MirroredStrategy on 2 logical CPUs; prints one JSON line of facts.

Run as a subprocess by test_distributed.py: logical devices must be set up
before TensorFlow initializes, which the pytest process has already done.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from reference import numpy_perturbation  # noqa: E402

import keras_ssam  # noqa: E402

D, H, C, N, BATCH = 5, 7, 3, 32, 16
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
rng = np.random.default_rng(0)
X = rng.normal(size=(N, D)).astype("float32")
Y = rng.integers(0, C, N).astype("int64")
MIRRORED = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
ONE = tf.distribute.OneDeviceStrategy("/cpu:0")


def mlp():
    # No BatchNorm: per-replica batch statistics would differ from 1 device.
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(H, activation="relu"), keras.layers.Dense(C)]
    )


def train(
    strategy, perturbation="global", callbacks=(), epochs=2, x=X, momentum=0.9, masks=None, **kw
):
    with strategy.scope():
        model = keras_ssam.SSAMModel(mlp(), rho=0.3, perturbation=perturbation, **kw)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=momentum), loss=LOSS)
    if masks is not None:
        model.set_masks(masks)
    data = tf.data.Dataset.from_tensor_slices((x, Y[: len(x)])).batch(BATCH)
    model.fit(data, epochs=epochs, verbose=0, callbacks=list(callbacks))
    return model


def max_diff(a, b):
    return float(max(np.abs(u - v).max() for u, v in zip(a, b)))


def replicas_identical(model):
    """Every variable (weights, masks, rho) bitwise equal on both replicas."""
    for v in model.variables:
        local = MIRRORED.experimental_local_results(v.value)
        if not all(np.array_equal(local[0].numpy(), t.numpy()) for t in local[1:]):
            return False
    return True


def local_reference():
    """One SGD step where each half-batch (replica) perturbs with its own g."""
    params = [v.numpy() for v in mlp().trainable_variables]

    def grad(p, x, y):
        p = [tf.constant(a) for a in p]
        with tf.GradientTape() as tape:
            tape.watch(p)
            loss = LOSS(y, tf.nn.relu(x @ p[0] + p[1]) @ p[2] + p[3])
        return [g.numpy() for g in tape.gradient(loss, p)]

    total = [np.zeros_like(p) for p in params]
    perturbations = []
    for half in (slice(0, BATCH // 2), slice(BATCH // 2, BATCH)):
        x, y = X[half], Y[half]
        e = numpy_perturbation(grad(params, x, y), [np.ones_like(p) for p in params], 0.3)
        perturbations.append(e)
        g2 = grad([p + ei.astype("float32") for p, ei in zip(params, e)], x, y)
        total = [t + g / 2 for t, g in zip(total, g2)]
    e_gap = max_diff(*perturbations)
    return [p - 0.1 * g for p, g in zip(params, total)], e_gap


def main():
    facts = {}
    one, two = train(ONE), train(MIRRORED)
    facts["global_vs_one_device"] = max_diff(one.model.get_weights(), two.model.get_weights())
    facts["global_replicas_identical"] = replicas_identical(two)

    masks = [(rng.random(v.shape) < 0.5).astype("float32") for v in mlp().trainable_variables]
    facts["masked_global_vs_one_device"] = max_diff(
        train(ONE, masks=masks).model.get_weights(),
        train(MIRRORED, masks=masks).model.get_weights(),
    )

    expected, facts["local_perturbation_gap"] = local_reference()
    with MIRRORED.scope():
        local = keras_ssam.SSAMModel(mlp(), rho=0.3, perturbation="local")
        local.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    local.fit(
        tf.data.Dataset.from_tensor_slices((X[:BATCH], Y[:BATCH])).batch(BATCH), epochs=1, verbose=0
    )
    facts["local_vs_reference"] = max_diff(local.model.get_weights(), expected)
    global_one = train(MIRRORED, epochs=1, momentum=0.0)
    facts["local_vs_global"] = max_diff(
        local.model.get_weights(), [w for w in global_one.model.get_weights()]
    )
    facts["local_replicas_identical"] = replicas_identical(local)

    for name, callback in (
        ("fisher", keras_ssam.FisherMask(X, Y, num_samples=8)),
        ("dynamic", keras_ssam.DynamicMask(0.5, update_unit="step", update_interval=1)),
    ):
        model = train(MIRRORED, callbacks=[callback], epochs=3)
        facts[f"{name}_replicas_identical"] = replicas_identical(model)
        facts[f"{name}_updates"] = callback.updates
        facts[f"{name}_density"] = model.mask_density()
        twin = (
            keras_ssam.DynamicMask(**callback.get_config())
            if name == "dynamic"
            else keras_ssam.FisherMask(X, Y, **callback.get_config())
        )
        ref = train(ONE, callbacks=[twin], epochs=3)
        facts[f"{name}_updates_one_device"] = twin.updates
        facts[f"{name}_vs_one_device"] = max_diff(ref.get_weights(), model.get_weights())

    # SSAM-D with per-replica perturbations: the drop/grow scores are
    # all-reduced, so both replicas keep one mask.
    dynamic = keras_ssam.DynamicMask(0.5, update_unit="step", update_interval=1)
    model = train(MIRRORED, perturbation="local", callbacks=[dynamic], epochs=3)
    facts["dynamic_local_replicas_identical"] = replicas_identical(model)
    facts["dynamic_local_changed"] = sum(h["mask_changed"] for h in dynamic.history)

    # Coupled decay: each replica adds its share, so the sum is wd * w once.
    decayed = [train(s, coupled_weight_decay=0.05).model.get_weights() for s in (ONE, MIRRORED)]
    facts["coupled_decay_vs_one_device"] = max_diff(*decayed)
    facts["coupled_decay_effect"] = max_diff(decayed[0], one.model.get_weights())

    # A structured mask (second layer only): the second pass from the cut
    # equals the full recomputation on 2 replicas.
    top = [np.zeros(v.shape, "float32") for v in mlp().trainable_variables[:2]] + [
        np.ones(v.shape, "float32") for v in mlp().trainable_variables[2:]
    ]
    runs = [
        train(MIRRORED, masks=top, norm_scope="masked", reuse_activations=reuse)
        for reuse in (True, False)
    ]
    facts["reuse_plans"] = [r.step_plan()["reuse"] for r in runs]
    facts["reuse_vs_recompute"] = max_diff(*(r.model.get_weights() for r in runs))
    facts["reuse_replicas_identical"] = replicas_identical(runs[0])

    # Cheap steps (issues 21, 22): the interval, LookSAM, the trigger and the
    # momentum ascent decide and apply on 2 replicas what they do on one device.
    trigger = keras_ssam.GradientNormTrigger(0.5, 0.0, 0.5, 4)
    for name, kwargs in (
        ("interval", dict(interval=2)),
        ("looksam", dict(interval=2, between="looksam", alpha=0.5)),
        ("trigger", dict(trigger=trigger)),
        ("trigger_looksam", dict(trigger=trigger, between="looksam", alpha=0.5)),
        ("momentum", dict(ascent="momentum", momentum=0.8)),
    ):
        pair = [train(s, **kwargs) for s in (ONE, MIRRORED)]
        weights = [m.model.get_weights() for m in pair]
        facts[f"{name}_vs_one_device"] = max_diff(*weights)
        facts[f"{name}_replicas_identical"] = replicas_identical(pair[1])
        facts[f"{name}_vs_sam"] = max_diff(weights[0], one.model.get_weights())

    bad = X.copy()
    bad[BATCH - 1, 0] = np.nan  # only replica 1 of the first step sees it
    skipped = train(MIRRORED, x=bad[:BATCH], epochs=1)
    facts["nonfinite_unchanged"] = max_diff(skipped.model.get_weights(), mlp().get_weights())
    facts["nonfinite_replicas_identical"] = replicas_identical(skipped)
    print("FACTS " + json.dumps(facts))


if __name__ == "__main__":
    main()
