"""XLA on CPU and a second pass inside `tf.cond`: the proxy CNN, without keras-ssam (issue 30).

    python benchmarks/xla_cond.py --batch 32

Three hand-written steps on the proxy CNN (`keras_ssam.experiments.models`
builds the model; the steps use only Keras and TensorFlow): one pass; two
passes (SAM's gradient at `w + e`, evaluated on tensors); and the same two
passes with the second inside `tf.cond`, as a step that may skip it must
place it. Each is a `tf.function` run with and without `jit_compile`; the
table gives the median of `--repeats` steps after a first (tracing,
compiling) call. On TensorFlow 2.21's CPU backend the cond makes the XLA
step about 20x slower while the non-XLA step does not change
(docs/benchmarks.md), so the cost belongs to XLA, not to keras-ssam's step.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_ssam.experiments import models  # noqa: E402

RHO, LR = 0.05, 0.01


def make_steps(batch):
    """`{name: step function}` sharing one model and one batch."""
    keras.utils.set_random_seed(0)
    model = models.build_model("proxy_cnn", 10, (32, 32, 3))
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, 32, 32, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, batch))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    trainable = model.trainable_variables

    def grads_at(values):
        frozen = [tf.convert_to_tensor(v) for v in model.non_trainable_variables]
        with tf.GradientTape() as tape:
            tape.watch(values)
            out, _ = model.stateless_call(values, frozen, x, training=True)
            loss = loss_fn(y, out)
        return loss, tape.gradient(loss, values)

    def apply(grads):
        for v, g in zip(trainable, grads):
            v.assign_sub(LR * g)

    def moved(w, g):
        norm = tf.linalg.global_norm(g)
        return [wi + RHO * gi / (norm + 1e-12) for wi, gi in zip(w, g)]

    def one_pass():
        loss, g = grads_at([tf.convert_to_tensor(v) for v in trainable])
        apply(g)
        return loss

    def two_passes():
        w = [tf.convert_to_tensor(v) for v in trainable]
        _, g = grads_at(w)
        loss, g2 = grads_at(moved(w, g))
        apply(g2)
        return loss

    def two_passes_in_cond():
        w = [tf.convert_to_tensor(v) for v in trainable]
        loss, g = grads_at(w)
        # A condition the compiler cannot fold: always true for a finite loss.
        g2 = tf.cond(loss > -1.0, lambda: grads_at(moved(w, g))[1], lambda: g)
        apply(g2)
        return loss

    return {"one pass": one_pass, "two passes": two_passes, "two, 2nd in cond": two_passes_in_cond}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{'step':<18} {'XLA':>4} {'first call s':>12} {'median ms':>10}")
    for name, step in make_steps(args.batch).items():
        for jit in (False, True):
            fn = tf.function(step, jit_compile=jit)
            start = time.perf_counter()
            fn().numpy()
            first = time.perf_counter() - start
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn().numpy()
                times.append(time.perf_counter() - start)
            on = "on" if jit else "off"
            print(f"{name:<18} {on:>4} {first:>12.2f} {1000 * np.median(times):>10.1f}", flush=True)


if __name__ == "__main__":
    main()
