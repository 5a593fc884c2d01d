"""Cost of the steps that skip the second pass (issues 21, 22), as a ratio to plain SGD.

    python benchmarks/cheap_steps.py --quick                            # ~3 minutes
    python benchmarks/cheap_steps.py --models proxy_cnn --rounds 3      # whole epochs
    python benchmarks/cheap_steps.py --models resnet18 --window 10 --batch 64 --rounds 3

Every configuration is its own model, built by the shared recipes, on random
CIFAR-shaped data. In each round every configuration trains one window with
`fit` (whole epochs: `--epochs` epochs of `--steps-per-epoch` steps; a window
of 10 steps holds exactly 10/k SAM steps for k = 2, 5, 10), the order rotating
from round to round so that load changes on a shared machine hit every
configuration alike; a first untimed window traces each step. The primary
figure is each window's time divided by plain SGD's (the unwrapped Keras
model) in the same round: min / median / max over the rounds. `sam_steps` is
the share of SAM steps the model logged in its timed windows.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_ssam  # noqa: E402
from keras_ssam.experiments import models, recipes  # noqa: E402

# name: (recipe method, SSAMModel keyword arguments); "keras sgd" is the plain model.
CONFIGS = {
    "keras sgd": (None, {}),
    "rho 0": ("sgd", {}),
    "sam": ("sam", {}),
    "interval 2": ("sam", {"interval": 2}),
    "interval 5": ("sam", {"interval": 5}),
    "interval 10": ("sam", {"interval": 10}),
    "looksam 2": ("sam", {"interval": 2, "between": "looksam"}),
    "looksam 5": ("sam", {"interval": 5, "between": "looksam"}),
    "looksam 10": ("sam", {"interval": 10, "between": "looksam"}),
    "trigger": ("sam", {"trigger": (0.9, 0.0, 1.0)}),
    "momentum": ("sam", {"ascent": "momentum"}),
    "ssam-f 50": ("ssam-f", {}),
    "ssam-f 50 interval 5": ("ssam-f", {"interval": 5}),
    "ssam-f 50 looksam 5": ("ssam-f", {"interval": 5, "between": "looksam"}),
    "ssam-f 50 momentum": ("ssam-f", {"ascent": "momentum"}),
    "structured 50": ("structured", {}),
}
QUICK = ("keras sgd", "rho 0", "sam", "interval 5", "looksam 5", "trigger", "momentum")


def build(name, model_name, x, y, total_steps):
    """The compiled model of configuration `name`, its first mask set as `fit` sets it."""
    keras.utils.set_random_seed(0)
    method, kwargs = CONFIGS[name]
    base = models.build_model(model_name, 10, x.shape[1:])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if method is None:
        base.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=loss)
        return base
    kwargs = dict(kwargs)
    if "trigger" in kwargs:
        kwargs["trigger"] = keras_ssam.GradientNormTrigger(*kwargs["trigger"], total_steps)
    recipe = recipes.build(
        method, base, 0.05, rho=0.1, train_data=(x, y), num_samples=16, metrics=(), **kwargs
    )
    model = recipe.compile()
    for mask in recipe.callbacks:
        mask.set_model(model)
        mask.set_params({"epochs": 1, "steps": 1})
        mask.on_train_begin()
        mask.on_epoch_begin(0)
    return model


class _BatchSync(keras.callbacks.Callback):
    """A batch hook, as Keras' progress bar has, so `fit` runs as users run it.

    On a CIFAR ResNet-18 at batch 32 some windows took 10.3 s whatever their
    configuration, with and without this hook (seen 2026-12-02, not
    understood; docs/benchmarks.md). `--no-batch-sync` drops the hook.
    """

    def on_train_batch_end(self, batch, logs=None):
        pass


def window(model, data, epochs, sync=True):
    """Seconds of one window, and the SAM-step share it logged (None for plain Keras)."""
    start = time.perf_counter()
    history = model.fit(data, epochs=epochs, verbose=0, callbacks=[_BatchSync()] if sync else [])
    seconds = time.perf_counter() - start
    shares = history.history.get("sam_steps")
    return seconds, None if shares is None else float(np.mean(shares))


def measure(names, model_name, args):
    rng = np.random.default_rng(0)
    n = args.batch * args.steps_per_epoch
    x = rng.normal(size=(n, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, n)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch).cache()
    total = args.steps_per_epoch * args.epochs * (args.rounds + 1)
    built = {name: build(name, model_name, x, y, total) for name in names}
    for model in built.values():
        window(model, data, args.epochs, args.batch_sync)  # traces the step; not timed
    seconds = {name: [] for name in names}
    shares = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            s, share = window(built[name], data, args.epochs, args.batch_sync)
            seconds[name].append(s)
            shares[name].append(share)
    return seconds, shares


def table(model_name, names, seconds, shares, args):
    ref = np.asarray(seconds["keras sgd"])
    steps = args.steps_per_epoch * args.epochs
    lines = [
        f"\nmodel={model_name} batch={args.batch} window={steps} steps, {args.rounds} rounds",
        f"{'config':<22} {'ms/step':>8} {'÷ SGD min':>9} {'median':>7} {'max':>7} {'SAM steps':>9}",
    ]
    rows = {}
    for name in names:
        ratio = np.asarray(seconds[name]) / ref
        share = shares[name][0] if shares[name][0] is None else float(np.mean(shares[name]))
        rows[name] = {
            "ms_per_step": 1000 * float(np.median(seconds[name])) / steps,
            "ratio_min": float(ratio.min()),
            "ratio_median": float(np.median(ratio)),
            "ratio_max": float(ratio.max()),
            "sam_steps": share,
            "seconds": seconds[name],
        }
        sam = "-" if share is None else f"{share:.3f}"
        lines.append(
            f"{name:<22} {rows[name]['ms_per_step']:>8.1f} {ratio.min():>9.2f} "
            f"{np.median(ratio):>7.2f} {ratio.max():>7.2f} {sam:>9}"
        )
    print("\n".join(lines), flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["proxy_cnn"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps-per-epoch", type=int, default=7, help="7: 1,000 images")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per window")
    parser.add_argument("--window", type=int, default=None, help="steps per window (1 epoch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-batch-sync", dest="batch_sync", action="store_false")
    args = parser.parse_args(argv)
    if args.window is not None:
        args.steps_per_epoch, args.epochs = args.window, 1
    if args.quick:
        args.configs = [c for c in args.configs if c in QUICK]
        args.batch, args.epochs, args.rounds = 32, 2, 2
    names = ["keras sgd"] + [c for c in args.configs if c != "keras sgd"]
    results = {"args": vars(args), "models": {}}
    for model_name in args.models:
        seconds, shares = measure(names, model_name, args)
        results["models"][model_name] = table(model_name, names, seconds, shares, args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
