"""What a step of each kind costs next to plain Keras, per step, with XLA off and on (issue 30).

    python benchmarks/step_cost.py --models mlp --rounds 9 --xla off on
    python benchmarks/step_cost.py --models proxy_cnn --window 10 --rounds 9 --xla off on

Every configuration is its own model: plain Keras SGD ("keras sgd", the
unwrapped model) and `SSAMModel` step kinds built by the shared recipes, each
compiled with and without XLA (`jit_compile`). In each round every model
trains one window of `--window` steps with `fit` (one epoch), the order
rotating from round to round; a first untimed window traces (and compiles)
each step. A batch callback records the time of every step (between
consecutive `on_train_batch_end` calls; every model has that callback, so
`fit` syncs each step in every configuration alike).

Estimators, each a ratio to plain Keras with the same XLA setting in the
same round, then the median and min-max over the rounds:

- **per-step**: the median one-pass step and the median SAM step of the
  window, weighted by their shares (so a mixed kind such as interval or
  LookSAM is its mean cost, and a stall, the machine or the runtime pausing
  a few steps, moves it little). The primary figure on a shared machine.
  The tables report the stalls this leaves out: steps slower than `--stall`
  times their kind's median, and the share of window time they took.
- **window**: the whole window's time (stalls and `fit`'s per-epoch work
  included).
`os.getloadavg()` is recorded beside each round.
"""

import argparse
import importlib
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_ssam.experiments import models  # noqa: E402

# name: (recipe method, keyword arguments); "keras sgd" is the plain model.
CONFIGS = {
    "keras sgd": (None, {}),
    "rho 0": ("sgd", {}),
    "interval 5": ("sam", {"interval": 5}),
    "looksam 5": ("sam", {"interval": 5, "between": "looksam", "alpha": 0.1}),
    "momentum": ("sam", {"ascent": "momentum"}),
    "trigger": ("sam", {"trigger": (0.9, 0.0, 1.0)}),
    "sam": ("sam", {}),
    "structured 50": ("structured", {}),
}
# model: (input shape, batch)
SIZES = {"mlp": ((64,), 64), "proxy_cnn": ((32, 32, 3), 128), "resnet18": ((32, 32, 3), 32)}


def mlp(num_classes, input_shape):
    """The small MLP of issue 30: 64 -> 512 -> 512 -> 10, ReLU."""
    inputs = keras.Input(input_shape)
    h = keras.layers.Dense(512, activation="relu")(inputs)
    h = keras.layers.Dense(512, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(h))


def build(name, model_name, x, y, total_steps, xla, package=None):
    """The compiled model of configuration `name`, its first mask set as `fit` sets it.

    `package`: the name of another copy of `keras_ssam` to build it with
    (e.g. the code before a change), or `None`.
    """
    keras.utils.set_random_seed(0)
    method, kwargs = CONFIGS[name]
    ssam = importlib.import_module(package or "keras_ssam")
    recipes = importlib.import_module(ssam.__name__ + ".experiments.recipes")
    if model_name == "mlp":
        base = mlp(10, x.shape[1:])
    else:
        base = models.build_model(model_name, 10, x.shape[1:])
    if method is None:
        base.compile(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            jit_compile=xla,
        )
        return base
    kwargs = dict(kwargs)
    if "trigger" in kwargs:
        kwargs["trigger"] = ssam.GradientNormTrigger(*kwargs["trigger"], total_steps)
    recipe = recipes.build(method, base, 0.05, rho=0.1, train_data=(x, y), num_samples=16, **kwargs)
    recipe.compile_kwargs["jit_compile"] = xla
    model = recipe.compile()
    for mask in recipe.callbacks:
        mask.set_model(model)
        mask.set_params({"epochs": 1, "steps": 1})
        mask.on_train_begin()
        mask.on_epoch_begin(0)
    return model


class StepTimes(keras.callbacks.Callback):
    """Each step of the last `fit`: seconds (between batch ends) and whether it was a SAM step.

    Whether a step was a SAM step follows from the running mean `sam_steps`
    that the batch logs carry (plain Keras: none are).
    """

    def on_train_begin(self, logs=None):
        self.times, self.sam = [], []
        self._last, self._mean = time.perf_counter(), 0.0

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now
        mean = float((logs or {}).get("sam_steps", 0.0))
        self.sam.append(round((batch + 1) * mean - batch * self._mean) == 1)
        self._mean = mean


def window(model, data):
    """`(per-step seconds, SAM flags, window seconds)` of one window."""
    timer = StepTimes()
    start = time.perf_counter()
    model.fit(data, epochs=1, verbose=0, callbacks=[timer])
    seconds = time.perf_counter() - start
    # The first step of a window also waits for the input pipeline to start.
    return np.asarray(timer.times[1:]), np.asarray(timer.sam[1:]), seconds


def measure(model_name, names, xla_modes, args):
    shape, batch = SIZES[model_name]
    batch = args.batch or batch
    rng = np.random.default_rng(0)
    n = batch * args.window
    x = rng.normal(size=(n, *shape)).astype("float32")
    y = rng.integers(0, 10, n)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache()
    keys = [(name, xla) for xla in xla_modes for name in names]
    total = args.window * (args.rounds + 1)
    built = {}
    for name, xla in keys:
        config, _, package = name.partition(" @")
        built[name, xla] = build(config, model_name, x, y, total, xla, package or None)
    for model in built.values():
        window(model, data)  # traces and compiles the step; not timed
    runs = {k: [] for k in keys}
    loads = []
    for r in range(args.rounds):
        loads.append(os.getloadavg())
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            runs[k].append(window(built[k], data))
    return runs, loads, batch


def summarize(runs, names, xla_modes, stall):
    """Per configuration and XLA mode: the estimators' ratios and the stalls."""
    rows = {}
    for xla in xla_modes:
        ref = [_step_cost(t, sam, stall) for t, sam, _ in runs["keras sgd", xla]]
        ref_window = np.array([s for _, _, s in runs["keras sgd", xla]])
        for name in names:
            mine = runs[name, xla]
            costs = [_step_cost(t, sam, stall) for t, sam, _ in mine]
            step = np.array([c for c, _, _ in costs])
            whole = np.array([s for _, _, s in mine])
            rows[f"{name} | xla {'on' if xla else 'off'}"] = {
                "ms_per_step": 1000 * float(np.median(step)),
                "step_ratio": _spread(step / np.array([c for c, _, _ in ref])),
                "window_ratio": _spread(whole / ref_window),
                "stalls": int(sum(n for _, n, _ in costs)),
                "stall_share": float(sum(t for _, _, t in costs) / whole.sum()),
                "sam_steps": float(np.mean([sam.mean() for _, sam, _ in mine])),
            }
    return rows


def _step_cost(times, sam, stall):
    """`(cost, stalls, stall seconds)`: the SAM-share-weighted median of each kind of step.

    One-pass and SAM steps are summarized apart (a SAM step is no stall);
    a step slower than `stall` times its kind's median is a stall.
    """
    cost, stalls, lost = 0.0, 0, 0.0
    for kind in (False, True):
        t = times[sam == kind]
        if t.size:
            median = float(np.median(t))
            cost += median * t.size / times.size
            slow = t > stall * median
            stalls, lost = stalls + int(slow.sum()), lost + float(t[slow].sum())
    return cost, stalls, lost


def _spread(ratios):
    return [float(ratios.min()), float(np.median(ratios)), float(ratios.max())]


def table(model_name, rows, loads, batch, args):
    lines = [
        f"\nmodel={model_name} batch={batch} window={args.window} steps, {args.rounds} rounds, "
        f"load (1 min) {min(a[0] for a in loads):.1f}-{max(a[0] for a in loads):.1f}",
        f"{'config':<34} {'ms/step':>7} {'per-step ratio (min-max)':>25} "
        f"{'window ratio (min-max)':>23} {'stalls':>6} {'stall %':>7} {'SAM':>5}",
    ]
    for name, row in rows.items():
        lo, med, hi = row["step_ratio"]
        wlo, wmed, whi = row["window_ratio"]
        sam = f"{row['sam_steps']:.2f}"
        lines.append(
            f"{name:<34} {row['ms_per_step']:>7.2f} {med:>10.2f} ({lo:.2f}-{hi:.2f}) "
            f"{wmed:>9.2f} ({wlo:.2f}-{whi:.2f}) {row['stalls']:>6} "
            f"{100 * row['stall_share']:>6.1f}% {sam:>5}"
        )
    print("\n".join(lines), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp"], choices=list(SIZES))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--xla", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--window", type=int, default=200, help="steps per window")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch", type=int, default=None, help="default: per model")
    parser.add_argument("--stall", type=float, default=3.0, help="x the window's median step")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument(
        "--compare-package",
        default=None,
        help="an importable copy of keras_ssam (e.g. the code before a change, its imports "
        "renamed) whose step kinds run beside this one's, labelled 'config @package'",
    )
    args = parser.parse_args(argv)
    names = ["keras sgd"] + [c for c in args.configs if c != "keras sgd"]
    if args.compare_package:
        names += [f"{c} @{args.compare_package}" for c in names[1:]]
    xla_modes = [mode == "on" for mode in args.xla]
    results = {"args": vars(args), "models": {}}
    for model_name in args.models:
        runs, loads, batch = measure(model_name, names, xla_modes, args)
        rows = summarize(runs, names, xla_modes, args.stall)
        table(model_name, rows, loads, batch, args)
        results["models"][model_name] = {"rows": rows, "loads": loads}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
