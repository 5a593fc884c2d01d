"""Evidence table: SGD, SAM, every SSAM variant and the cheap steps in one regime, with cost.

    python benchmarks/evidence.py --calibrate --out docs/evidence.json        # rho grids, seeds 0-2
    python benchmarks/evidence.py --rho-from docs/evidence.json --only-seeds 3 4 5 6 7 \
        --out docs/evidence-heldout.json --methods ...                          # the held-out table
    python benchmarks/evidence.py --quick --out /tmp/evidence-quick.json      # smoke, ~3 min

Default regime (calibrated in docs/EVIDENCE.md; every value is a flag): the proxy CNN
(~290k parameters) on a seeded 1,000-image subset of the CIFAR-10 training images
with 40 % symmetric label noise, no augmentation, 40 epochs at batch 128 (280 steps),
cosine lr from 0.05, momentum 0.9, coupled weight decay 5e-4 (SGD) / 1e-3 (SAM-type);
test accuracy on all 10,000 clean test images.

Rows (`--methods`, `METHODS`): sgd, sam, ssam-f-50/90, ssam-d-50/90, structured-50/30
(the number is the sparsity), the cheap steps of `CHEAP` with SAM's dense mask
(interval-2, interval-5, looksam-5, trigger, momentum, late-25, early-25), and each of
those with an SSAM-F 50 % mask (`ssam-f-50+interval-5`, ...). Every row is built by the
shared recipes (`keras_ssam.experiments.recipes`, the code the CLI uses):
`SSAMModel(..., coupled_weight_decay=wd)` with a plain `SGD(lr, momentum=0.9)`
(PyTorch's coupled decay, as the official code); the SGD row is `SSAMModel(rho=0)`.
The structured row is `StructuredFisherMask` with `norm_scope="masked"`.

rho: every record stores its own. `--calibrate` runs each method over its grid
(`GRIDS`, or `--rhos`), growing it by a factor of 2 at an edge that holds the best
mean test accuracy (`extended_grid`), without Hessians or timing; `--rho-from FILE`
runs each method at the rho chosen on FILE's seeds (`chosen_rho`); otherwise `--rho`.
(Records made before issue 23 have no rho field: they ran at their file's `rho`.)

Data: the shared CIFAR-10 image folder, extracted to `--cache`, loaded with
`keras_ssam.data.load("folder:...")`. With `--label-noise p` a copy of the
training folder is built in the cache from hard links, with a fraction `p` of
the 50,000 images moved to a uniformly drawn *other* class (seeded by
`--noise-seed`); each seed then takes its own seeded subset of `--train-images`
(the same subset and initial weights for every method of that seed).

Per (method, seed, rho) the JSON gets: test accuracy as a whole count over the
evaluated test images, train accuracy (inference mode, no augmentation, the labels
trained on), the steps of each kind (`step_counts`), per-epoch logs, test accuracy
on a fixed test subset every `--curve-every` epochs, and (unless `--no-hessian`) the
top Hessian eigenvalue of the final model on `--hessian-examples` training examples.
Per seed, one timing record holds the median seconds of each (method, step kind),
measured interleaved in one process (`timing`); a method's cost is its steps of each
kind times those medians, over as many SGD steps (`evidence_report.step_cost`). A
method added later re-times its seed with every method.

The JSON is rewritten after every record, under a file lock, merged with what other
processes wrote: several processes may run the same command on one `--out`, each
claiming a record before running it. Started again with the same `--out` and budget,
the script skips what is there.
"""

import argparse
import dataclasses
import fcntl
import json
import os
import shutil
import tarfile
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import evidence_report as report  # noqa: E402  (a sibling script in benchmarks/)
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ssam  # noqa: E402
from keras_ssam import analysis, data, models  # noqa: E402
from keras_ssam.experiments import recipes  # noqa: E402
from keras_ssam.masks import mask_distribution  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Method:
    """A row: a recipe method, its mask sparsity and a cheap-step mechanism (or none)."""

    kind: str  # a key of RECIPES
    sparsity: float = None
    cheap: str = None  # a key of CHEAP


# AE-SAM's gradient-norm trigger (delta, lambda1, lambda2): chosen on seed 0 of
# this regime so that about 25 % of the steps are SAM steps (docs/EVIDENCE.md,
# "Trigger calibration"); T is the run's number of steps.
TRIGGER = (0.9, 0.25, 0.25)
# Cheap-step mechanisms (issues 21, 22): recipe arguments; `window` is the
# part of training (fractions of the epochs) that has SAM steps, rho 0 outside.
CHEAP = {
    "interval-2": dict(interval=2),
    "interval-5": dict(interval=5),
    "looksam-5": dict(interval=5, between="looksam", alpha=0.7),
    "trigger": dict(trigger=TRIGGER),
    "momentum": dict(ascent="momentum"),
    "late-25": dict(window=(0.75, 1.0)),
    "early-25": dict(window=(0.0, 0.25)),
    # A diagnostic, not a row of the table: LookSAM with a smaller alpha.
    "looksam-5-a0.1": dict(interval=5, between="looksam", alpha=0.1),
}
CHEAP_LABELS = {
    "interval-2": "SAM every 2nd step",
    "interval-5": "SAM every 5th step",
    "looksam-5": "LookSAM, k = 5",
    "trigger": "gradient-norm trigger",
    "momentum": "momentum ascent",
    "late-25": "SAM in the last 25 %",
    "early-25": "SAM in the first 25 %",
    "looksam-5-a0.1": "LookSAM, k = 5, alpha 0.1",
}
METHODS = {
    "sgd": Method("sgd"),
    "sam": Method("sam"),
    "ssam-f-50": Method("fisher", 0.5),
    "ssam-f-90": Method("fisher", 0.9),
    "ssam-d-50": Method("dynamic", 0.5),
    "ssam-d-90": Method("dynamic", 0.9),
    "structured-50": Method("structured", 0.5),
    "structured-30": Method("structured", 0.3),
}
LABELS = {
    "sgd": "SGD",
    "sam": "SAM",
    "ssam-f-50": "SSAM-F 50 %",
    "ssam-f-90": "SSAM-F 90 %",
    "ssam-d-50": "SSAM-D 50 %",
    "ssam-d-90": "SSAM-D 90 %",
    "structured-50": "structured SSAM-F 50 %",
    "structured-30": "structured SSAM-F 30 %",
}
for _name, _label in CHEAP_LABELS.items():
    METHODS[_name] = Method("sam", None, _name)
    LABELS[_name] = _label
    METHODS["ssam-f-50+" + _name] = Method("fisher", 0.5, _name)
    LABELS["ssam-f-50+" + _name] = f"SSAM-F 50 % + {_label}"
# Calibration grids of rho (issue 23): SAM x0.5 to x4 of 0.15; schedules with
# fewer SAM steps larger, momentum ascent larger still (MSAM used 3 against
# SAM's 0.2); a method whose best rho is at an edge of its grid is extended
# (`extended_grid`). A `ssam-f-50+` row uses its mechanism's grid.
GRIDS = {
    "sam": (0.075, 0.15, 0.3, 0.6),
    "ssam-f-50": (0.15, 0.3, 0.6),
    "structured-50": (0.15, 0.3, 0.6, 1.2),
    "interval-2": (0.15, 0.3, 0.6),
    "interval-5": (0.3, 0.6, 1.2),
    "looksam-5": (0.3, 0.6, 1.2),
    "trigger": (0.3, 0.6, 1.2),
    # 1.0 added after 0.6 memorized the noisy labels (99.7 % train accuracy) and
    # 1.5 under-fit (31 %): the only mechanism at about SGD's cost gets its peak.
    "momentum": (0.6, 1.0, 1.5, 3.0),
    "late-25": (0.3, 0.6, 1.2),
    "early-25": (0.3, 0.6, 1.2),
    "looksam-5-a0.1": (0.3, 0.6, 1.2),
}
MAX_EXTENSIONS = 2  # grid points added per method when its best rho is at an edge
COLLAPSE = 3.0  # points below SGD's mean accuracy: larger rhos are not run
# Arguments that define the experiment: a resumed --out must match them.
BUDGET_ARGS = (
    "model",
    "train_images",
    "test_images",
    "epochs",
    "batch",
    "lr",
    "wd_sgd",
    "wd_sam",
    "label_noise",
    "noise_seed",
    "augment",
    "cutout",
    "fisher_samples",
    "hessian_examples",
    "hessian_max_iter",
    "curve_every",
    "curve_images",
    "timing_steps",
    "timing_warmup",
)
FULL = dict(  # the regime of docs/EVIDENCE.md (calibrated there)
    train_images=1000,
    test_images=None,
    epochs=40,
    seeds=3,
    hessian_examples=1000,
    hessian_max_iter=20,
    curve_every=5,
    curve_images=1000,
    timing_steps=10,
    timing_warmup=2,
)
QUICK = dict(
    train_images=256,
    test_images=200,
    epochs=2,
    seeds=1,
    hessian_examples=64,
    hessian_max_iter=4,
    curve_every=1,
    curve_images=100,
    timing_steps=2,
    timing_warmup=1,
)


# ------------------------------------------------------------------ data
def extract(archive, cache):
    """The archive's folder in `cache` (extracted once, atomically)."""
    root = os.path.join(cache, "cifar10-images")
    if os.path.isdir(os.path.join(root, "train")):
        return root
    os.makedirs(cache, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache, prefix="extract-")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    try:
        os.rename(tmp, root)
    except OSError:  # another process was faster
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def noisy_folder(root, noise, noise_seed, cache):
    """A copy of `root` (hard links) whose train/ has a fraction `noise` of
    the images in a uniformly drawn wrong class; test/ is the clean one."""
    if not noise:
        return root
    target = os.path.join(cache, f"cifar10-noise{noise:g}-seed{noise_seed}")
    if os.path.isdir(os.path.join(target, "train")):
        return target
    classes = sorted(os.listdir(os.path.join(root, "train")))
    files = [(c, f) for c in classes for f in sorted(os.listdir(os.path.join(root, "train", c)))]
    rng = np.random.default_rng(noise_seed)
    flip = rng.random(len(files)) < noise
    shift = rng.integers(1, len(classes), len(files))  # a different class, uniformly
    tmp = tempfile.mkdtemp(dir=cache, prefix="noisy-")
    for c in classes:
        os.makedirs(os.path.join(tmp, "train", c))
    for (c, f), bad, s in zip(files, flip, shift):
        label = classes[(classes.index(c) + s) % len(classes)] if bad else c
        src = os.path.join(root, "train", c, f)
        dst = os.path.join(tmp, "train", label, f"{c}_{f}")
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    os.symlink(os.path.abspath(os.path.join(root, "test")), os.path.join(tmp, "test"))
    with open(os.path.join(tmp, "noise.json"), "w") as fh:
        json.dump({"noise": noise, "seed": noise_seed, "flipped": int(flip.sum())}, fh)
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load(root, seed, args, **kwargs):
    options = dict(
        batch_size=args.batch,
        seed=seed,
        train_limit=args.train_images,
        test_limit=args.test_images,
        augment=args.augment,
        cutout=args.cutout,
    )
    options.update(kwargs)
    return data.load(f"folder:{root}", **options)


def plain_train_stream(root, seed, args, batch_size=256):
    """The seed's training subset, no augmentation, every example once."""
    train, _, _ = load(root, seed, args, batch_size=batch_size, augment=False, drop_remainder=False)
    return train


def arrays(dataset, limit=None):
    xs, ys = [], []
    for x, y in dataset:
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
        if limit and sum(len(v) for v in ys) >= limit:
            break
    x, y = np.concatenate(xs), np.concatenate(ys)
    return (x[:limit], y[:limit]) if limit else (x, y)


def count_correct(model, dataset):
    """(correct, total) over one pass of `dataset`, inference mode."""
    correct = total = 0
    for x, y in dataset:
        logits = model.predict_on_batch(x)
        correct += int(np.sum(np.argmax(logits, -1) == np.asarray(y)))
        total += int(len(y))
    return correct, total


# ------------------------------------------------------------------ models
# Evidence method kinds -> the shared recipes' method names.
RECIPES = {
    "sgd": "sgd",
    "sam": "sam",
    "fisher": "ssam-f",
    "dynamic": "ssam-d",
    "structured": "structured",
}


def cheap_arguments(cheap, epochs, steps):
    """The recipe arguments of a `CHEAP` mechanism for a run of `epochs` (`steps` steps)."""
    options = dict(CHEAP[cheap]) if cheap else {}
    if "trigger" in options:
        options["trigger"] = keras_ssam.GradientNormTrigger(*options["trigger"], total_steps=steps)
    if "window" in options:
        first, last = options.pop("window")
        start = min(int(first * epochs), epochs - 1)  # a short (smoke) run keeps one epoch
        options["sam_epochs"] = (start, max(round(last * epochs), start + 1))
    return options


def recipe_for(method, sparsity, info, args, steps, train=None, seed=0, rho=None, cheap=None):
    """The shared recipe (`keras_ssam.experiments.recipes`) of a recipe method name."""
    base = models.build_model(
        args.model, info.num_classes, info.input_shape, data.preprocessing_layers(info)
    )
    return recipes.build(
        method,
        base,
        keras.optimizers.schedules.CosineDecay(args.lr, max(steps, 1)),
        rho=args.rho if rho is None else rho,
        weight_decay=args.wd_sgd if method == "sgd" else args.wd_sam,
        sparsity=0.5 if sparsity is None else sparsity,
        train_data=train,
        num_samples=args.fisher_samples,
        seed=seed,
        **cheap_arguments(cheap, args.epochs, steps),
    )


def build(method, info, args, steps, train=None, seed=0, rho=None):
    """A compiled model for an evidence `method` and its callbacks (mask, rho window)."""
    spec = METHODS[method]
    recipe = recipe_for(
        RECIPES[spec.kind], spec.sparsity, info, args, steps, train, seed, rho, spec.cheap
    )
    recipe.compile()
    return recipe.model, recipe.callbacks


def support(model):
    rows = mask_distribution(model)
    total = sum(r["entries"] for r in rows)
    return {
        "density": sum(r["perturbed"] for r in rows) / total,
        "support_fraction": sum(r["entries"] for r in rows if r["perturbed"]) / total,
        "first_perturbed": next((r["variable"] for r in rows if r["perturbed"]), None),
        "variables": rows,
    }


def kinds_of(method):
    """The step kinds a method's run can take (see `step_counts`)."""
    spec = METHODS[method]
    if spec.kind == "sgd":
        return ("one_pass",)
    if spec.cheap == "momentum":
        return ("momentum",)
    return ("sam", "one_pass") if spec.cheap else ("sam",)


def step_counts(method, curve, steps_per_epoch):
    """Steps of each kind in a run, from the per-epoch share of SAM steps.

    `sam`: two passes; `one_pass`: one pass at w (SGD's cost plus the gate);
    `momentum`: one pass at `w + e` from the momentum buffer.
    """
    total = len(curve) * steps_per_epoch
    if kinds_of(method) == ("momentum",):
        return {"momentum": total}
    sam = sum(round(p.get("sam_steps", 0.0) * steps_per_epoch) for p in curve)
    return {k: n for k, n in (("sam", sam), ("one_pass", total - sam)) if n}


# ------------------------------------------------------------------ records
def rho_of(method, rho):
    return 0.0 if method == "sgd" else float(rho)


def run(root, method, seed, rho, args, hessian=True):
    keras.utils.set_random_seed(seed)  # same initial weights for every method of a seed
    train, test, info = load(root, seed, args)
    _, curve_test, _ = load(
        root, seed, args, train_limit=128, test_limit=args.curve_images, drop_remainder=False
    )
    steps = args.epochs * info.steps_per_epoch
    model, callbacks = build(method, info, args, steps, train, seed, rho)
    callbacks = [data.epoch_callback(info)] + callbacks
    curve = []

    def record(epoch, logs):
        point = {"epoch": epoch + 1}
        point.update({k: float(v) for k, v in logs.items()})
        if args.curve_every and ((epoch + 1) % args.curve_every == 0 or epoch + 1 == args.epochs):
            point["curve_test_accuracy"] = count_correct(model, curve_test)[0] / args.curve_images
            print(  # progress of long runs
                f"  {method} rho {rho:g} seed {seed} epoch {epoch + 1}: train acc "
                f"{point['accuracy']:.3f}, curve test acc {point['curve_test_accuracy']:.3f}",
                flush=True,
            )
        curve.append(point)

    callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=record))
    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, verbose=0, callbacks=callbacks)
    seconds = time.perf_counter() - start
    test_correct, test_count = count_correct(model, test)
    train_correct, train_count = count_correct(model, plain_train_stream(root, seed, args))
    out = {
        "method": method,
        "seed": seed,
        "rho": rho_of(method, rho),
        "test_correct": test_correct,
        "test_count": test_count,
        "test_accuracy": test_correct / test_count,
        "train_correct": train_correct,
        "train_count": train_count,
        "train_accuracy": train_correct / train_count,
        "fit_train_accuracy": curve[-1]["accuracy"],
        "steps": steps,
        "step_counts": step_counts(method, curve, info.steps_per_epoch),
        "mask_updates": sum(len(c.history) for c in mask_callbacks(callbacks)),
        "non_finite_steps": int(keras.ops.convert_to_numpy(model.non_finite_steps)),
        "seconds": seconds,
        "support": None if method == "sgd" else support(model),
        "curve": curve,
    }
    if hessian:
        out.update(hessian_record(model, root, seed, args))
    return out


def hessian_record(model, root, seed, args):
    hx, hy = arrays(plain_train_stream(root, seed, args), args.hessian_examples)
    start = time.perf_counter()
    hessian = analysis.hessian_eigenvalues(
        model,
        (hx, hy),
        top_k=1,
        method="lanczos",
        tol=1e-3,
        max_iter=args.hessian_max_iter,
        verbose=0,
    )
    return {
        "hessian_top": hessian["eigenvalues"][0],
        "hessian_iterations": hessian["iterations"],
        "hessian_examples": int(len(hy)),
        "hessian_seconds": time.perf_counter() - start,
    }


# ------------------------------------------------------------------ step-kind timing
def force_kind(model, kind, rho):
    """Puts `model` in the state whose next step is of `kind` (for timing only)."""
    if not isinstance(model, keras_ssam.SSAMModel) or model.ascent == "momentum":
        if kind == "momentum":
            model.rho = rho
        return
    if kind == "one_pass":
        model.rho = 0.0  # never a SAM step: the gate's other branch
        return
    model.rho = rho
    if model.interval > 1:
        it = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        model.optimizer.iterations.assign(it + (-it) % model.interval)
    if model.trigger is not None:
        # With no variance yet and a mean far below ||g||^2 the trigger fires
        # whenever it can fire at all (c_t * sqrt(1 - delta) <= 1).
        model.trigger_mean.assign(-1e6)
        model.trigger_variance.assign(0.0)


def mask_callbacks(callbacks):
    return [c for c in callbacks if isinstance(c, keras_ssam.MaskCallback)]


def first_mask(model, callbacks):
    """Sets the first mask as `fit` does before its first step."""
    for callback in callbacks:
        callback.set_model(model)
        callback.set_params({"epochs": 1, "steps": 1})
        callback.on_train_begin()
        callback.on_epoch_begin(0)
        callback.on_train_batch_begin(0)


def timing(root, seed, rhos, args):
    """Seconds per step of each (method, step kind), interleaved in this process (median).

    `rhos`: `{method: rho}`. Every round times one step of every pair, in turn,
    on a real training batch; a step of the wrong kind raises.
    """
    keras.utils.set_random_seed(seed)
    train, _, info = load(root, seed, args)
    x, y = arrays(train.take(args.timing_warmup + args.timing_steps))
    built, masks = {}, {}
    for method, rho in rhos.items():
        keras.utils.set_random_seed(seed)
        model, callbacks = build(method, info, args, 1000, train, seed, rho)
        first_mask(model, callbacks)
        built[method] = model
        for callback in mask_callbacks(callbacks):  # one at most
            masks[method] = callback
    mask_times = {method: [] for method in masks}
    pairs = [(m, k) for m in built for k in kinds_of(m)]
    times = {pair: [] for pair in pairs}
    b = args.batch
    for step in range(args.timing_warmup + args.timing_steps):
        xb, yb = x[(step * b) % len(x) :][:b], y[(step * b) % len(y) :][:b]
        for method, kind in pairs:
            model = built[method]
            force_kind(model, kind, rhos[method])
            start = time.perf_counter()
            logs = model.train_on_batch(xb, yb, return_dict=True)
            elapsed = time.perf_counter() - start
            expected = {"sam": 1.0, "one_pass": 0.0}.get(kind)
            if expected is not None and logs.get("sam_steps", 0.0) != expected:
                raise RuntimeError(f"{method}: a {kind} step was timed as {logs}")
            if step >= args.timing_warmup:
                times[(method, kind)].append(elapsed)
        # A mask refresh is part of an epoch's cost too (SSAM-F: Ns per-example
        # gradients); timed in the same rounds, on the same machine state.
        for method, callback in masks.items():
            start = time.perf_counter()
            callback.update_mask(step + 1)
            if step >= args.timing_warmup:
                mask_times[method].append(time.perf_counter() - start)
    kinds = {m: {} for m in built}
    for (method, kind), values in times.items():
        kinds[method][kind] = float(np.median(values))
    return {
        "seed": seed,
        "rhos": dict(rhos),
        "seconds_per_step": kinds,
        "seconds_per_mask_update": {m: float(np.median(v)) for m, v in mask_times.items()},
    }


def methods_to_time(timings, seed, methods):
    """The methods to time (again) for `seed`, or None when its record has them all.

    Ratios are only comparable within one interleaved measurement, so a method
    added later re-times the whole seed: the methods already timed and the new ones.
    Records of the single-step timing used before issue 23 (no step kinds) are redone.
    """
    record = next((t for t in timings if t["seed"] == seed and "rhos" in t), None)
    timed = record["seconds_per_step"] if record else {}
    if all(m in timed for m in methods):
        return None
    return [m for m in METHODS if m in timed or m in methods]


# ------------------------------------------------------------------ the plan
def records_of(runs, method, rho=None):
    return [r for r in runs if r["method"] == method and (rho is None or r["rho"] == rho)]


def mean_accuracy(runs, method, rho, seeds):
    """Mean test accuracy of `method` at `rho` over `seeds`, or None until all are done."""
    done = {r["seed"]: r["test_accuracy"] for r in records_of(runs, method, rho)}
    return np.mean([done[s] for s in seeds]) if all(s in done for s in seeds) else None


def extended_grid(runs, method, seeds, args):
    """`method`'s calibration grid, extended by factors of 2 while its best rho is at an edge.

    Best: the highest mean test accuracy over `seeds` (the same seeds for every
    rho, so this is the highest mean gain over SGD, paired). An extension is
    only decided when every grid point has all of `seeds`. A rho whose mean is
    more than `COLLAPSE` points below SGD's ends the grid: larger ones are not
    run (in this regime a larger rho only under-fits more; the grid then grows
    at its lower edge, keeping 3 points at least).
    """
    grid = sorted(args.rhos or GRIDS.get(METHODS[method].cheap or method, (args.rho,)))
    if len(grid) < 2:
        return grid
    sgd = mean_accuracy(runs, "sgd", 0.0, seeds)
    for extensions in range(MAX_EXTENSIONS + 1):
        means = []
        for rho in grid:
            means.append(mean_accuracy(runs, method, rho, seeds))
            if sgd is not None and means[-1] is not None and means[-1] < sgd - COLLAPSE / 100:
                grid = grid[: len(means)]
                break
        if None in means:
            return grid
        best = int(np.argmax(means))
        if 0 < best < len(grid) - 1 or extensions == MAX_EXTENSIONS:
            return grid
        grid = [grid[0] / 2] + grid if best == 0 else grid + [grid[-1] * 2]
    return grid


def chosen_rho(runs, method, seeds, args):
    """The calibration choice: the grid's rho with the highest mean test accuracy over `seeds`.

    None until every point of the (extended) grid has all of `seeds`.
    """
    if method == "sgd":
        return 0.0
    means = {
        rho: mean_accuracy(runs, method, rho, seeds)
        for rho in extended_grid(runs, method, seeds, args)
    }
    if None in means.values():
        return None
    return max(means, key=means.get)


def pending(result, args, seeds):
    """The (method, seed, rho) records still to run, in order."""
    done = {(r["method"], r["seed"], r["rho"]) for r in result["runs"]}
    todo = []
    for method in args.methods:
        if args.calibrate:
            rhos = [0.0] if method == "sgd" else extended_grid(result["runs"], method, seeds, args)
        else:
            rhos = [rho_of(method, result["chosen_rho"].get(method, args.rho))]
        for rho in rhos:
            todo += [(method, s, rho) for s in seeds if (method, s, rho) not in done]
    return todo


# ------------------------------------------------------------------ main
def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        default=os.path.join(
            os.path.dirname(os.path.abspath(__file__)),
            "..",
            "..",
            "shared",
            "data",
            "cifar10-images.tar.gz",
        ),
    )
    parser.add_argument(
        "--cache", default=os.path.join(tempfile.gettempdir(), "keras-ssam-evidence")
    )
    parser.add_argument("--out", default="runs/evidence.json")
    parser.add_argument("--figure", default=None, help="PNG path for accuracy vs cost")
    parser.add_argument("--quick", action="store_true", help="smoke run (QUICK budget)")
    parser.add_argument("--methods", nargs="+", default=list(LABELS)[:8], choices=list(METHODS))
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="run every method over its rho grid (GRIDS, extended at an edge), no Hessians, "
        "no timing",
    )
    parser.add_argument(
        "--rhos",
        type=float,
        nargs="+",
        default=None,
        help="with --calibrate: this grid for every method instead of GRIDS",
    )
    parser.add_argument(
        "--rho-from",
        default=None,
        help="a calibration JSON: each method runs at the rho chosen there (its calibration "
        "seeds' best mean test accuracy); methods it lacks use --rho",
    )
    parser.add_argument("--no-timing", action="store_true", help="skip step-time records")
    parser.add_argument("--timing-only", action="store_true", help="only the step-time records")
    parser.add_argument("--no-hessian", action="store_true", help="skip the Hessian eigenvalue")
    parser.add_argument(
        "--only-seeds",
        type=int,
        nargs="+",
        default=None,
        help="run these seeds only (e.g. the held-out seeds 3 4 5 6 7)",
    )
    parser.add_argument("--model", default="proxy_cnn", choices=sorted(models.MODELS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--rho", type=float, default=0.15, help="rho where no other is chosen")
    parser.add_argument("--wd-sgd", type=float, default=5e-4)
    parser.add_argument("--wd-sam", type=float, default=1e-3)
    parser.add_argument("--label-noise", type=float, default=0.4)
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument(
        "--augment", action="store_true", help="random crop (pad 4) + flip (default: none)"
    )
    parser.add_argument("--cutout", action="store_true", help="Cutout 16 too (with --augment)")
    parser.add_argument("--fisher-samples", type=int, default=128)
    for name in FULL:  # None: the FULL or QUICK preset
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not 0 <= args.label_noise < 1:
        parser.error("--label-noise must be in [0, 1)")
    if args.calibrate and args.rho_from:
        parser.error("--calibrate chooses rho itself: drop --rho-from")
    return args


def upgrade(saved):
    """Records written before issue 23 ran every SAM-type row at the file's one rho,
    and every step of theirs was of one kind."""
    for r in saved["runs"]:
        r.setdefault("rho", rho_of(r["method"], saved["args"].get("rho", 0.15)))
        if "step_counts" not in r:
            r["step_counts"] = {kinds_of(r["method"])[0]: r["steps"]}
        if "mask_updates" not in r:  # at most one an epoch, each logging its seconds
            r["mask_updates"] = sum(p.get("mask_seconds", 0.0) > 0 for p in r.get("curve", []))
    saved.setdefault("chosen_rho", {})
    return saved


def read(path):
    with open(path) as f:
        return upgrade(json.load(f))


def previous(args):
    if not os.path.exists(args.out):
        return {"args": vars(args), "runs": [], "timing": [], "chosen_rho": {}}
    saved = read(args.out)
    changed = [k for k in BUDGET_ARGS if saved["args"].get(k) != getattr(args, k)]
    if changed:
        raise SystemExit(
            f"{args.out} holds records of another budget ({', '.join(changed)} differ); "
            "pass another --out."
        )
    print(
        f"resuming: {len(saved['runs'])} runs, {len(saved['timing'])} timings in {args.out}",
        flush=True,
    )
    saved["args"] = vars(args)
    return saved


def key(record):
    return record["method"], record["seed"], record["rho"]


class Store:
    """`--out`, shared by any number of processes: each write merges under a file lock.

    A process claims a record before running it, so several processes on the
    same command share the work; a claim whose process is gone is ignored.
    """

    def __init__(self, args, result):
        self.args, self.result = args, result

    def _merged(self):
        self.result.setdefault("claims", {})
        if not os.path.exists(self.args.out):
            return
        disk = read(self.args.out)
        mine = {key(r) for r in self.result["runs"]}
        self.result["runs"] += [r for r in disk["runs"] if key(r) not in mine]
        seeds = {t["seed"] for t in self.result["timing"]}
        self.result["timing"] += [t for t in disk["timing"] if t["seed"] not in seeds]
        claims = {k: v for k, v in disk.get("claims", {}).items() if _alive(v)}
        # Only this process's own claims come from memory: another's may be done.
        claims.update({k: v for k, v in self.result.get("claims", {}).items() if v == os.getpid()})
        done = {json.dumps(key(r)) for r in self.result["runs"]}
        self.result["claims"] = {k: v for k, v in claims.items() if k not in done}
        for method, rho in disk["chosen_rho"].items():
            self.result["chosen_rho"].setdefault(method, rho)

    def update(self, change=None):
        """Merges the file, applies `change(result)`, writes; returns `change`'s value."""
        os.makedirs(os.path.dirname(os.path.abspath(self.args.out)), exist_ok=True)
        with open(self.args.out + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._merged()
            value = change(self.result) if change else None
            self.result["summary"] = report.summarize(self.result)
            tmp = f"{self.args.out}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.result, f, indent=1)
            os.replace(tmp, self.args.out)
        return value

    def claim(self, todo):
        """The first record of `todo` that is neither done nor claimed, now claimed; or None."""

        def take(result):
            done = {key(r) for r in result["runs"]}
            for item in todo:
                name = json.dumps(item)
                if item not in done and name not in result["claims"]:
                    result["claims"][name] = os.getpid()
                    return item
            return None

        return self.update(take)

    def add(self, item, record):
        def put(result):
            result["runs"].append(record)
            result["claims"].pop(json.dumps(item), None)

        self.update(put)

    def others_busy(self):
        self.update()
        return any(pid != os.getpid() for pid in self.result["claims"].values())


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def seeds_of(args):
    return args.only_seeds if args.only_seeds is not None else list(range(args.seeds))


def choose_rhos(args, result):
    """`--rho-from`: each method's rho chosen on that file's calibration seeds."""
    calibration = read(args.rho_from)
    seeds = sorted({r["seed"] for r in calibration["runs"]})
    # The grids the calibration ran: its own --rhos / --rho, not this command's.
    grids = argparse.Namespace(rhos=calibration["args"].get("rhos"), rho=calibration["args"]["rho"])
    for method in args.methods:
        picked = {r["seed"] for r in records_of(calibration["runs"], method)}
        rho = chosen_rho(calibration["runs"], method, sorted(picked & set(seeds)), grids)
        if rho is None:
            raise SystemExit(f"{args.rho_from} has no finished rho grid for {method}.")
        old = result["chosen_rho"].get(method)
        if old is not None and old != rho:
            raise SystemExit(
                f"{args.out} was run with rho {old} for {method}; {args.rho_from} now "
                f"chooses {rho}: pass another --out."
            )
        result["chosen_rho"][method] = rho


def time_seeds(args, store, seeds):
    for seed in seeds:
        to_time = methods_to_time(store.result["timing"], seed, args.methods)
        if not to_time:
            continue
        rhos = {m: rho_of(m, store.result["chosen_rho"].get(m, args.rho)) for m in to_time}
        record = timing(store.root, seed, rhos, args)
        print(json.dumps(record), flush=True)

        def put(result, record=record):
            result["timing"] = [t for t in result["timing"] if t["seed"] != seed] + [record]

        store.update(put)


def run_records(args, store, seeds):
    hessian = not (args.no_hessian or args.calibrate)
    while True:
        item = store.claim(pending(store.result, args, seeds))
        if item is None:
            if not store.others_busy():
                return
            time.sleep(30)  # another process's record may extend a grid
            continue
        method, seed, rho = item
        record = run(store.root, method, seed, rho, args, hessian=hessian)
        brief = {k: v for k, v in record.items() if k not in ("curve", "support")}
        print(json.dumps(brief), flush=True)
        store.add(item, record)


def main(argv=None):
    args = parse(argv)
    if not os.path.exists(args.data):
        raise SystemExit(f"CIFAR-10 archive not found at {args.data}; pass --data.")
    store = Store(args, previous(args))
    store.root = noisy_folder(
        extract(args.data, args.cache), args.label_noise, args.noise_seed, args.cache
    )
    if args.rho_from:
        choose_rhos(args, store.result)
    seeds = seeds_of(args)
    if not (args.no_timing or args.calibrate):
        time_seeds(args, store, seeds)
    if not args.timing_only:
        run_records(args, store, seeds)
    store.update()
    print(report.table(store.result["summary"], LABELS))
    if args.figure:
        print("wrote", report.figure(store.result["summary"], LABELS, args.figure))


if __name__ == "__main__":
    main()
