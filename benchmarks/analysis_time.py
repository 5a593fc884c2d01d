"""Time of the analysis primitives on a CIFAR ResNet-18 (random weights and data).

python benchmarks/analysis_time.py [--examples 1000] [--model resnet18]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_ssam import analysis, models  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--model", default="resnet18")
    args = parser.parse_args()
    model = models.build_model(args.model, 10, (32, 32, 3))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.examples, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, args.examples)
    objective = analysis._Objective(model, (x, y))
    vectors = [np.ones(v.shape, "float32") for v in objective.variables]
    rows = []
    for name, fn in [
        ("loss + accuracy (1 landscape point)", lambda: objective.evaluate(objective.weights())),
        ("gradient", lambda: objective.gradient()),
        ("Hessian-vector product", lambda: objective.hvp(vectors)),
    ]:
        fn()
        start = time.perf_counter()
        fn()
        rows.append((name, time.perf_counter() - start))
    print(f"model={args.model} examples={args.examples}")
    print(f"{'operation':<38} {'seconds':>8}")
    for name, sec in rows:
        print(f"{name:<38} {sec:>8.1f}")
    hvp = rows[2][1]
    print(
        f"top-5 eigenvalues, 20 power iterations each: ~{100 * hvp / 60:.0f} min; "
        f"1-D landscape of 21 points: ~{21 * rows[0][1] / 60:.1f} min; "
        f"gradient difference: ~{2 * rows[1][1]:.0f} s"
    )


if __name__ == "__main__":
    main()
