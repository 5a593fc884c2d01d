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
import gc
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


def machine_seconds():
    """`(busy, steal)`: CPU seconds the whole machine has spent busy and stolen, from /proc/stat.

    Steal is time the hypervisor ran something else on this VM's virtual CPUs.
    Linux only; zeros elsewhere. Jiffies (10 ms): meaningful summed over steps.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except OSError:
        return 0.0, 0.0
    user, nice, system, _, _, irq, softirq, steal = fields
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, steal / hz


class GarbageTime:
    """Seconds spent in Python's garbage collector, per generation, since the process began.

    A full (generation 2) collection walks every tracked object - with
    TensorFlow and many models loaded, a pause of its own size whenever the
    allocation counters say so, in whichever configuration happens to run.
    """

    def __init__(self):
        self.seconds = [0.0, 0.0, 0.0]
        self._start = None
        gc.callbacks.append(self._callback)

    def _callback(self, phase, info):
        if phase == "start":
            self._start = time.perf_counter()
        elif self._start is not None:
            self.seconds[info["generation"]] += time.perf_counter() - self._start
            self._start = None

    def total(self):
        return sum(self.seconds)


GC = GarbageTime()


class StepTimes(keras.callbacks.Callback):
    """Each step of the last `fit`: wall and CPU seconds, the machine's share, SAM or not.

    Per step (between consecutive `on_train_batch_end` calls): `times` (wall
    seconds), `cpu` (this process's CPU seconds, all threads), `busy` (the
    whole machine's busy CPU seconds, 10 ms ticks: compare sums, not single
    steps), `steal` (seconds the hypervisor took from this VM), `gc` (seconds
    in Python's garbage collector) - the evidence for whether a slow step was
    this process working or waiting. Whether a step was a SAM step follows
    from the running mean `sam_steps` that the batch logs carry (plain Keras:
    none are). `begin`: seconds from `fit`'s call to `on_train_begin`.
    """

    FIELDS = ("times", "sam", "cpu", "busy", "steal", "gc")

    def __init__(self, called):
        super().__init__()
        self.called = called

    def _now(self):
        return (time.perf_counter(), time.process_time(), *machine_seconds(), GC.total())

    def on_train_begin(self, logs=None):
        for field in self.FIELDS:
            setattr(self, field, [])
        self._last = self._now()
        self.begin = self._last[0] - self.called
        self._mean = 0.0

    def on_train_batch_end(self, batch, logs=None):
        now = self._now()
        for field, a, b in zip(("times", "cpu", "busy", "steal", "gc"), now, self._last):
            getattr(self, field).append(a - b)
        self._last = now
        mean = float((logs or {}).get("sam_steps", 0.0))
        self.sam.append(round((batch + 1) * mean - batch * self._mean) == 1)
        self._mean = mean


def window(model, data):
    """One window's record: per-step lists (see `StepTimes`) and the window's seconds.

    The first step also waits for the input pipeline to start: it is kept
    apart (`first`, `first_gc`), with `begin` and `end`, the seconds `fit`
    spends before its first step and after its last, and `gc_window`, the
    garbage collector's seconds over the whole call.
    """
    gc_before = GC.total()
    start = time.perf_counter()
    timer = StepTimes(start)
    model.fit(data, epochs=1, verbose=0, callbacks=[timer])
    seconds = time.perf_counter() - start
    record = {
        f: [float(v) if f != "sam" else bool(v) for v in getattr(timer, f)[1:]]
        for f in StepTimes.FIELDS
    }
    record.update(
        seconds=seconds,
        first=timer.times[0],
        first_gc=timer.gc[0],
        begin=timer.begin,
        end=seconds - timer.begin - sum(timer.times),
        gc_window=GC.total() - gc_before,
    )
    return record


def synthetic_data(shape, batch, steps, autotune=False):
    """`(x, y, dataset)`: `steps` batches of Gaussian inputs and 10 random classes.

    `autotune=False` turns tf.data's autotuning off: `fit` deletes its
    iterator at the end of each epoch and, in some epochs, waits idle for
    the autotuning thread, longer the longer the epoch ran
    (docs/benchmarks.md); a cached, in-memory dataset has nothing to tune.
    """
    rng = np.random.default_rng(0)
    n = batch * steps
    x = rng.normal(size=(n, *shape)).astype("float32")
    y = rng.integers(0, 10, n)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache()
    options = tf.data.Options()
    options.autotune.enabled = autotune
    return x, y, data.with_options(options)


def measure(model_name, names, xla_modes, args, saved, save):
    """Runs the rounds `saved` (this model's part of the results file) lacks.

    `saved["rounds"]` holds one dict per finished round, configuration key ->
    window record; `save()` is called after each round, so a stopped run
    resumes where it stopped (the rotation depends on the round's index only).
    """
    shape, batch = SIZES[model_name]
    batch = args.batch or batch
    x, y, data = synthetic_data(shape, batch, args.window, args.autotune == "on")
    keys = [(name, xla) for xla in xla_modes for name in names]
    total = args.window * (args.rounds + 1)
    saved.setdefault("rounds", [])
    saved.setdefault("loads", [])
    saved["batch"] = batch
    if len(saved["rounds"]) >= args.rounds:
        return saved
    built = {}
    for name, xla in keys:
        config, _, package = name.partition(" @")
        built[name, xla] = build(config, model_name, x, y, total, xla, package or None)
    for model in built.values():
        window(model, data)  # traces and compiles the step; not timed
    for r in range(len(saved["rounds"]), args.rounds):
        loads = os.getloadavg()
        records = {}
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            records[_key(*k)] = window(built[k], data)
        saved["loads"].append(loads)
        saved["rounds"].append(records)
        save()
    return saved


def _key(name, xla):
    return f"{name} | xla {'on' if xla else 'off'}"


def summarize(saved, names, xla_modes, stall):
    """Per configuration and XLA mode: the estimators' ratios and the stalls."""
    rows = {}
    rounds = saved["rounds"]
    for xla in xla_modes:
        ref = [_step_cost(r[_key("keras sgd", xla)], stall)[0] for r in rounds]
        ref_window = np.array([r[_key("keras sgd", xla)]["seconds"] for r in rounds])
        for name in names:
            mine = [r[_key(name, xla)] for r in rounds]
            costs = [_step_cost(rec, stall) for rec in mine]
            step = np.array([c for c, _ in costs])
            whole = np.array([rec["seconds"] for rec in mine])
            slow = {f: sum(s[f] for _, s in costs) for f in costs[0][1]}
            rows[_key(name, xla)] = {
                "ms_per_step": 1000 * float(np.median(step)),
                "step_ratio": _spread(step / np.array(ref)),
                "window_ratio": _spread(whole / ref_window),
                "stall_share": float(slow["wall"] / whole.sum()),
                "sam_steps": float(np.mean([np.mean(rec["sam"]) for rec in mine])),
                "stalls": slow,
            }
    return rows


def _step_cost(record, stall):
    """`(cost, stalls)`: the SAM-share-weighted median of each kind of step, and its stalls.

    One-pass and SAM steps are summarized apart (a SAM step is no stall); a
    step slower than `stall` times its kind's median is a stall. `stalls`
    sums over them: their count `n`; `wall`, `cpu` (this process), `busy`
    (the machine) and `steal` seconds; `extra_wall` and `extra_cpu`, what they took beyond
    their kind's median step; `working`, how many of them ran on at least 1.5x
    the median step's own CPU (this process worked rather than waited).
    """
    times, sam = np.asarray(record["times"]), np.asarray(record["sam"], bool)
    cpu = np.asarray(record["cpu"])
    cost = 0.0
    stalls = dict.fromkeys(
        ("n", "wall", "cpu", "busy", "steal", "extra_wall", "extra_cpu", "working"), 0.0
    )
    for kind in (False, True):
        mine = sam == kind
        if not mine.any():
            continue
        median, median_cpu = float(np.median(times[mine])), float(np.median(cpu[mine]))
        cost += median * mine.sum() / times.size
        slow = mine & (times > stall * median)
        stalls["n"] += int(slow.sum())
        for field in ("wall", "cpu", "busy", "steal"):
            source = times if field == "wall" else np.asarray(record[field])
            stalls[field] += float(source[slow].sum())
        stalls["extra_wall"] += float((times[slow] - median).sum())
        stalls["extra_cpu"] += float((cpu[slow] - median_cpu).sum())
        stalls["working"] += int((cpu[slow] > 1.5 * median_cpu).sum())
    return cost, stalls


def _spread(ratios):
    return [float(ratios.min()), float(np.median(ratios)), float(ratios.max())]


def table(model_name, rows, saved, args):
    loads = [a[0] for a in saved["loads"]]
    lines = [
        f"\nmodel={model_name} batch={saved['batch']} window={args.window} steps, "
        f"{len(saved['rounds'])} rounds, load (1 min) {min(loads):.1f}-{max(loads):.1f}",
        f"{'config':<34} {'ms/step':>7} {'per-step ratio (min-max)':>25} "
        f"{'window ratio (min-max)':>23} {'stalls':>6} {'stall %':>7} {'SAM':>5}",
    ]
    for name, row in rows.items():
        lo, med, hi = row["step_ratio"]
        wlo, wmed, whi = row["window_ratio"]
        sam = f"{row['sam_steps']:.2f}"
        lines.append(
            f"{name:<34} {row['ms_per_step']:>7.2f} {med:>10.2f} ({lo:.2f}-{hi:.2f}) "
            f"{wmed:>9.2f} ({wlo:.2f}-{whi:.2f}) {int(row['stalls']['n']):>6} "
            f"{100 * row['stall_share']:>6.1f}% {sam:>5}"
        )
    print("\n".join(lines), flush=True)


def stall_table(model_name, rows, saved):
    """Where the stalls' time went: this process working, or the machine taking the CPUs.

    Rates are CPU seconds per wall second: `own` (this process), `others`
    (the rest of the machine busy) and `steal` (the hypervisor), during stall
    steps against all steps. `work`: stalls on >= 1.5x the median step's own
    CPU; `extra s` and `own CPU`: their wall and CPU seconds beyond the median.
    """
    steps = [rec for r in saved["rounds"] for rec in r.values()]
    wall = sum(sum(rec["times"]) for rec in steps)
    own = sum(sum(rec["cpu"]) for rec in steps) / wall
    others = sum(sum(rec["busy"]) for rec in steps) / wall - own
    steal = sum(sum(rec["steal"]) for rec in steps) / wall
    lines = [
        f"\nstalls of {model_name}; all steps: own {own:.2f}, others {others:.2f}, "
        f"steal {steal:.2f} CPU s/s",
        f"{'config':<34} {'stalls':>6} {'extra s':>8} {'own CPU':>8} {'work':>5} "
        f"{'own/s':>6} {'others/s':>8} {'steal/s':>8}",
    ]
    for name, row in rows.items():
        st = row["stalls"]
        if not st["n"]:
            continue
        lines.append(
            f"{name:<34} {int(st['n']):>6} {st['extra_wall']:>8.2f} {st['extra_cpu']:>8.2f} "
            f"{int(st['working']):>5} {st['cpu'] / st['wall']:>6.2f} "
            f"{(st['busy'] - st['cpu']) / st['wall']:>8.2f} "
            f"{st['steal'] / st['wall']:>8.2f}"
        )
    print("\n".join(lines), flush=True)


def window_table(model_name, saved):
    """What a window spends outside its timed steps: `fit`'s start and end, the first step.

    Per configuration, the median and the largest value over the rounds of
    `begin` (`fit` before its first step), `first` (the first step, which
    also starts the input pipeline), `end` (`fit` after its last step), and
    the garbage collector's time over the window, in ms; `step` is the timed
    steps' median, for scale.
    """
    rounds = [r for r in saved["rounds"] if "first" in next(iter(r.values()))]
    if not rounds:
        return
    fields = ("begin", "first", "end", "gc_window")
    lines = [
        f"\noutside the timed steps ({model_name}, ms: median / largest over rounds)",
        f"{'config':<34} {'step':>7} " + " ".join(f"{f:>15}" for f in fields),
    ]
    for key in rounds[0]:
        recs = [r[key] for r in rounds]
        cells = [
            f"{1000 * np.median([r[f] for r in recs]):7.1f} /{1000 * max(r[f] for r in recs):7.1f}"
            for f in fields
        ]
        step = 1000 * np.median([np.median(r["times"]) for r in recs])
        lines.append(f"{key:<34} {step:>7.1f} " + " ".join(f"{c:>15}" for c in cells))
    print("\n".join(lines), flush=True)


def _load(path, args):
    """The results file to resume, or a new one; refuses one made with other settings."""
    settings = {k: v for k, v in vars(args).items() if k not in ("rounds", "out", "models")}
    if path and os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
        if results["settings"] != settings:
            raise SystemExit(f"{path} was made with {results['settings']}, not {settings}")
        return results
    return {"settings": settings, "models": {}}


def _save(path, results):
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump(results, f)
        os.replace(path + ".tmp", path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp"], choices=list(SIZES))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--xla", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--window", type=int, default=200, help="steps per window")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch", type=int, default=None, help="default: per model")
    parser.add_argument("--stall", type=float, default=3.0, help="x the window's median step")
    parser.add_argument(
        "--autotune",
        default="off",
        choices=["off", "on"],
        help="tf.data autotuning of the synthetic data (on: windows may end with its wait)",
    )
    parser.add_argument(
        "--out", default=None, help="JSON file for every step's record; an existing one resumes"
    )
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
    results = _load(args.out, args)
    for model_name in args.models:
        saved = results["models"].setdefault(model_name, {})
        measure(model_name, names, xla_modes, args, saved, lambda: _save(args.out, results))
        rows = summarize(saved, names, xla_modes, args.stall)
        table(model_name, rows, saved, args)
        stall_table(model_name, rows, saved)
        window_table(model_name, saved)
        saved["rows"] = rows
    _save(args.out, results)
    return results


if __name__ == "__main__":
    main()
