"""Records or compares a golden run: the final weights of short deterministic trainings.

A refactor of the step must not change a single bit of what it computes. This
script trains a small CNN (Conv-BN-ReLU, Dropout, a head) for a few steps
with op determinism on, for each kind of step: SAM, SSAM-F, SSAM-D, a
structured mask (reused second pass), `num_batch_splits=2`, mixed precision,
and SAM on 2 mirrored logical CPUs; then writes every final weight, mask and
BatchNorm statistic to an `.npz` file (`--record`) or compares them bitwise
with one (`--compare`), printing a table of the largest differences.

Usage:

    python benchmarks/golden_run.py --record /tmp/golden.npz
    # ... change the code ...
    python benchmarks/golden_run.py --compare /tmp/golden.npz
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

# Two logical CPUs for the mirrored case, set before TensorFlow initializes.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)
tf.config.experimental.enable_op_determinism()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ssam  # noqa: E402

S, C, N, BATCH = 8, 4, 64, 16
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
CASES = ("sam", "ssam_f", "ssam_d", "structured", "splits2", "mixed_float16", "mirrored2")


def cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((S, S, 3))
    x = inputs
    for i, filters in enumerate((6, 8)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.25, seed=3)(x)
    return keras.Model(inputs, keras.layers.Dense(C, name="head", dtype="float32")(x))


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, S, S, 3)).astype("float32")
    return x, rng.integers(0, C, N).astype("int32")


def structured_masks(model):
    rng = np.random.default_rng(1)
    masks = []
    for v in model.trainable_variables:
        m = (rng.random(v.shape) < 0.5).astype("float32")
        if v.path.startswith(("conv0", "bn0")):
            m[...] = 0.0
        else:
            m.flat[0] = 1.0
        masks.append(m)
    return masks


def run(case):
    """Trains one case; returns {name: array} of everything the run leaves."""
    x, y = data()
    kwargs, callbacks = {}, []
    if case == "mixed_float16":
        keras.config.set_dtype_policy("mixed_float16")
    strategy = (
        tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        if case == "mirrored2"
        else tf.distribute.get_strategy()
    )
    if case == "structured":
        kwargs["norm_scope"] = "masked"
    if case == "splits2":
        kwargs["num_batch_splits"] = 2
    if case == "ssam_f":
        callbacks.append(keras_ssam.FisherMask(x, y, num_samples=16, sparsity=0.5))
    if case == "ssam_d":
        callbacks.append(keras_ssam.DynamicMask(sparsity=0.5, drop_rate=0.5, seed=2))
    try:
        with strategy.scope():
            model = keras_ssam.SSAMModel(cnn(), rho=0.2, coupled_weight_decay=5e-4, **kwargs)
            model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=LOSS)
        if case == "structured":
            model.set_masks(structured_masks(model.model))
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
        # Keyed by position and name: paths carry counters that depend on the case order.
        return {f"{case}/{i}/{v.name}": v.numpy() for i, v in enumerate(model.variables)}
    finally:
        keras.config.set_dtype_policy("float32")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", metavar="NPZ")
    mode.add_argument("--compare", metavar="NPZ")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    args = parser.parse_args(argv)
    results = {}
    for case in args.cases:
        results.update(run(case))
    if args.record:
        np.savez(args.record, **results)
        print(f"recorded {len(results)} arrays from {len(args.cases)} cases to {args.record}")
        return 0
    golden = np.load(args.compare)
    print(f"{'case':<14} {'arrays':>6} {'bitwise equal':>13} {'max |diff|':>11}")
    bad = 0
    for case in args.cases:
        keys = [k for k in golden.files if k.startswith(case + "/")]
        mine = [k for k in results if k.startswith(case + "/")]
        if sorted(keys) != sorted(mine):
            print(f"{case:<14} variables differ: {sorted(set(keys) ^ set(mine))[:4]}")
            bad += 1
            continue
        equal = sum(np.array_equal(golden[k], results[k]) for k in keys)
        worst = max(float(np.max(np.abs(golden[k] - results[k]), initial=0.0)) for k in keys)
        bad += equal != len(keys)
        print(f"{case:<14} {len(keys):>6} {equal:>13} {worst:>11.3g}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
