"""Time of the analysis primitives on a CIFAR ResNet-18 (random weights and data).

python benchmarks/analysis_time.py [--examples 1000] [--model resnet18] [--repeats 2]

The two Hessian-vector product modes are timed side by side (round-robin, the
median of `--repeats`), so their ratio holds on a noisy machine.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_ssam import analysis  # noqa: E402
from keras_ssam.experiments import models  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lanczos-steps", type=int, default=20)
    args = parser.parse_args()
    model = models.build_model(args.model, 10, (32, 32, 3))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.examples, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, args.examples)
    forward = analysis.Objective(model, (x, y), hvp_mode="forward")
    reverse = analysis.Objective(model, (x, y), hvp_mode="reverse")
    labels = forward.label_kind()  # "sparse": accuracy is counted, as in loss_landscape
    vectors = [rng.normal(size=v.shape).astype("float32") for v in forward.variables]
    operations = {
        "loss + accuracy (1 landscape point)": lambda: forward.evaluate(forward.weights(), labels),
        "gradient": lambda: forward.gradient(),
        "HVP, forward-over-reverse": lambda: forward.hvp(vectors),
        "HVP, double backprop": lambda: reverse.hvp(vectors),
    }
    times = {name: [] for name in operations}
    for fn in operations.values():
        fn()  # trace and warm up
    for _ in range(args.repeats):
        for name, fn in operations.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    sec = {name: float(np.median(t)) for name, t in times.items()}
    print(f"model={args.model} examples={args.examples} repeats={args.repeats}")
    print(f"| {'operation':<38} | {'seconds':>8} | {'x gradient':>10} |")
    print(f"|{'-' * 40}|{'-' * 10}|{'-' * 12}|")
    for name, s in sec.items():
        print(f"| {name:<38} | {s:>8.3f} | {s / sec['gradient']:>10.2f} |")
    hvp = sec["HVP, forward-over-reverse"]
    print(
        f"forward / double-backprop HVP time: {hvp / sec['HVP, double backprop']:.2f}; "
        f"estimates: top-5 by Lanczos ({args.lanczos_steps} HVPs) ~"
        f"{args.lanczos_steps * hvp / 60:.1f} min; 1-D landscape of 21 points ~"
        f"{21 * sec['loss + accuracy (1 landscape point)'] / 60:.1f} min; "
        f"gradient difference ~{2 * sec['gradient']:.0f} s"
    )


if __name__ == "__main__":
    main()
