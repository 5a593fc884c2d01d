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

- **per-step**: the mean step time of the window without its stalls, a
  stall being a step slower than `--stall` times the window's median step
  (the machine or the runtime pausing). SAM steps (about 2x a one-pass
  step) stay in, so a mixed kind (interval, LookSAM) is its mean cost. The
  primary figure on a shared machine; the tables report how many steps were
  dropped as stalls and the share of window time they took.
- **window**: the whole window's time (stalls and `fit`'s per-epoch work
  included).
`os.getloadavg()` is recorded beside each round.
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


def build(name, model_name, x, y, total_steps, xla):
    """The compiled model of configuration `name`, its first mask set as `fit` sets it."""
    keras.utils.set_random_seed(0)
    method, kwargs = CONFIGS[name]
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
        kwargs["trigger"] = keras_ssam.GradientNormTrigger(*kwargs["trigger"], total_steps)
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
    """Seconds of each step of the last `fit`: between consecutive batch ends."""

    def on_train_begin(self, logs=None):
        self.times = []
        self._last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


def window(model, data):
    """`(per-step seconds, window seconds, SAM-step share or None)` of one window."""
    timer = StepTimes()
    start = time.perf_counter()
    history = model.fit(data, epochs=1, verbose=0, callbacks=[timer])
    seconds = time.perf_counter() - start
    shares = history.history.get("sam_steps")
    # The first step of a window also waits for the input pipeline to start.
    return np.asarray(timer.times[1:]), seconds, None if shares is None else float(shares[0])


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
    built = {k: build(k[0], model_name, x, y, total, k[1]) for k in keys}
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
        ref = runs["keras sgd", xla]
        ref_step = np.array([_trimmed(t, stall) for t, _, _ in ref])
        ref_window = np.array([s for _, s, _ in ref])
        for name in names:
            mine = runs[name, xla]
            step = np.array([_trimmed(t, stall) for t, _, _ in mine])
            whole = np.array([s for _, s, _ in mine])
            stalls = [t > stall * np.median(t) for t, _, _ in mine]
            stall_time = sum(t[s].sum() for (t, _, _), s in zip(mine, stalls))
            shares = [share for _, _, share in mine if share is not None]
            rows[f"{name} | xla {'on' if xla else 'off'}"] = {
                "ms_per_step": 1000 * float(np.median(step)),
                "step_ratio": _spread(step / ref_step),
                "window_ratio": _spread(whole / ref_window),
                "stalls": int(sum(s.sum() for s in stalls)),
                "stall_share": float(stall_time / whole.sum()),
                "sam_steps": float(np.mean(shares)) if shares else None,
            }
    return rows


def _trimmed(times, stall):
    """Mean step time without the stalls."""
    return float(times[times <= stall * np.median(times)].mean())


def _spread(ratios):
    return [float(ratios.min()), float(np.median(ratios)), float(ratios.max())]


def table(model_name, rows, loads, batch, args):
    lines = [
        f"\nmodel={model_name} batch={batch} window={args.window} steps, {args.rounds} rounds, "
        f"load (1 min) {min(a[0] for a in loads):.1f}-{max(a[0] for a in loads):.1f}",
        f"{'config':<24} {'ms/step':>7} {'per-step ratio (min-max)':>25} "
        f"{'window ratio (min-max)':>23} {'stalls':>6} {'stall %':>7} {'SAM':>5}",
    ]
    for name, row in rows.items():
        lo, med, hi = row["step_ratio"]
        wlo, wmed, whi = row["window_ratio"]
        sam = "-" if row["sam_steps"] is None else f"{row['sam_steps']:.2f}"
        lines.append(
            f"{name:<24} {row['ms_per_step']:>7.2f} {med:>10.2f} ({lo:.2f}-{hi:.2f}) "
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
    args = parser.parse_args(argv)
    names = ["keras sgd"] + [c for c in args.configs if c != "keras sgd"]
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
