"""Vectorized Fisher (FisherMask) vs a one-example-at-a-time loop, same process.

The loop is the official code's approach (batch size 1, one backward pass per
example), here compiled with `tf.function` so that it is a fair TensorFlow
baseline. Both run on a CIFAR ResNet-18 in inference mode.

    python benchmarks/fisher_mask.py [--samples 16 128 512] [--chunk 32] [--quick]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_ssam  # noqa: E402
from keras_ssam.experiments import models  # noqa: E402


def loop_fisher(inner, loss_fn, x, y):
    variables = inner.trainable_variables

    @tf.function
    def one(xi, yi):
        with tf.GradientTape() as tape:
            loss = loss_fn(yi, inner(xi, training=False))
        return [tf.square(g) for g in tape.gradient(loss, variables)]

    totals = [tf.zeros(v.shape) for v in variables]
    for i in range(len(y)):
        totals = [t + g for t, g in zip(totals, one(x[i : i + 1], y[i : i + 1]))]
    return totals


def timed(fn, repeats):
    fn()  # warm-up: tracing
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - start)
    return float(np.median(runs)), out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, nargs="+", default=[16, 128, 512])
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--quick", action="store_true", help="small_cnn, 16 samples")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.model, args.repeats = [16], "small_cnn", 1

    keras.utils.set_random_seed(0)
    inner = models.build_model(args.model, 10, (32, 32, 3))
    model = keras_ssam.SSAMModel(inner)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="sgd", loss=loss)
    rng = np.random.default_rng(0)
    n_max = max(args.samples)
    x = rng.normal(size=(n_max, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, n_max)

    print(
        f"model={args.model} params={inner.count_params():,} chunk={args.chunk} "
        f"threads={os.cpu_count()}"
    )
    print(f"{'samples':>8} {'loop s':>9} {'vectorized s':>13} {'speed-up':>9} {'max rel err':>12}")
    for n in args.samples:
        # The loop reference runs in inference mode; so does the vectorized pass here.
        fisher = keras_ssam.FisherMask(x, y, num_samples=n, chunk_size=args.chunk, training=False)
        fisher.set_model(model)
        t_vec, vec = timed(lambda: fisher.fisher_scores(x[:n], y[:n]), args.repeats)
        t_loop, ref = timed(lambda: loop_fisher(inner, loss.call, x[:n], y[:n]), args.repeats)
        err = max(
            float(np.max(np.abs(a.numpy() - b.numpy())) / (np.max(np.abs(b)) + 1e-30))
            for a, b in zip(vec, ref)
        )
        print(f"{n:>8} {t_loop:>9.2f} {t_vec:>13.2f} {t_loop / t_vec:>8.1f}x {err:>12.1e}")


if __name__ == "__main__":
    main()
