"""Time and peak memory of mask updates on WideResNet-28-10 (36.5M parameters).

Each stage runs in a fresh subprocess so its peak RSS is its own:
    python benchmarks/mask_memory.py [--model wrn28_10] [--num-samples 16] [--chunk 4]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def stage(name, model_name, num_samples, chunk):
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_ssam
    from keras_ssam.experiments import models
    from keras_ssam.masks import mask_ops

    inner = models.build_model(model_name, 10, (32, 32, 3))
    model = keras_ssam.SSAMModel(inner)
    model.compile(
        optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    n = sum(int(np.prod(m.shape)) for m in model.masks)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(num_samples, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, num_samples)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    if name == "fisher":
        callback = keras_ssam.FisherMask(x, y, num_samples=num_samples, chunk_size=chunk)
        callback.set_model(model)
        callback.update_mask()
    elif name == "dynamic":
        callback = keras_ssam.DynamicMask(0.5)
        callback.set_model(model)
        model.set_masks(callback.compute_mask())
        grads = [tf.random.normal(m.shape) for m in model.masks]
        flat = mask_ops.drop_and_grow(
            mask_ops.flatten(model.masks),
            tf.abs(mask_ops.flatten(grads)),
            mask_ops.random_scores(n, [0, 1]),
            n // 4,
        )
        model.set_masks(mask_ops.unflatten(flat, [m.shape for m in model.masks]))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        "RESULT "
        + json.dumps(
            {
                "stage": name,
                "params": n,
                "seconds": seconds,
                "peak_rss_gib": peak,
                "model_rss_gib": base_rss,
                "density": model.mask_density(),
            }
        )
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="wrn28_10")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=4)
    parser.add_argument("--stage", default=None)
    args = parser.parse_args()
    if args.stage:
        stage(args.stage, args.model, args.num_samples, args.chunk)
        return
    print(f"model={args.model} num_samples={args.num_samples} chunk={args.chunk}")
    print(
        f"{'update':>8} {'params':>12} {'seconds':>8} {'RSS after build GiB':>20} "
        f"{'peak RSS GiB':>13} {'density':>8}"
    )
    for name in ("fisher", "dynamic"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--stage",
                name,
                "--model",
                args.model,
                "--num-samples",
                str(args.num_samples),
                "--chunk",
                str(args.chunk),
            ],
            capture_output=True,
            text=True,
        )
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(f"{name:>8} failed: {out.stderr[-500:]}")
            continue
        r = json.loads(line[0][7:])
        print(
            f"{name:>8} {r['params']:>12,} {r['seconds']:>8.1f} {r['model_rss_gib']:>20.2f} "
            f"{r['peak_rss_gib']:>13.2f} {r['density']:>8.4f}"
        )


if __name__ == "__main__":
    main()
