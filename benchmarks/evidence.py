"""Evidence table: SGD, SAM and every SSAM variant in one regime, with cost and flatness.

    python benchmarks/evidence.py --out runs/evidence.json \
        --figure docs/figures/evidence_accuracy_vs_cost.png     # the table, ~2.5-3 h on 2 cores
    python benchmarks/evidence.py --quick --out /tmp/evidence-quick.json   # smoke, ~3 min

Default regime (calibrated in docs/EVIDENCE.md; every value is a flag): the proxy CNN
(~290k parameters) on a seeded 1,000-image subset of the CIFAR-10 training images
with 40 % symmetric label noise, no augmentation, 40 epochs at batch 128 (280 steps),
cosine lr from 0.05, momentum 0.9, coupled weight decay 5e-4 (SGD) / 1e-3 (SAM-type),
rho 0.15 for every SAM-type row, 3 seeds; test accuracy on all 10,000 clean test images.

Rows (`--methods`): sgd, sam, ssam-f-50, ssam-f-90, ssam-d-50, ssam-d-90, structured-50,
structured-30 (the number is the sparsity).
Every row is built by the shared recipes (`keras_ssam.experiments.recipes`, the
same code the CLI uses): `SSAMModel(..., coupled_weight_decay=wd)` with a plain
`SGD(lr, momentum=0.9)` (PyTorch's coupled decay, as the official code); the SGD
row is `SSAMModel(rho=0)`, one pass per step. (Records made before 2026-12-02
built the SGD row as a plain model with an optimizer adding `wd * w` to the
gradient: the same update.) The structured row is `StructuredFisherMask` with
`norm_scope="masked"` (the only scope whose steps are cheaper); its support is
recorded with `keras_ssam.masks.mask_distribution`.

Data: the shared CIFAR-10 image folder, extracted to `--cache`, loaded with
`keras_ssam.data.load("folder:...")`. With `--label-noise p` a copy of the
training folder is built in the cache from hard links, with a fraction `p` of
the 50,000 images moved to a uniformly drawn *other* class (seeded by
`--noise-seed`); each seed then takes its own seeded subset of `--train-images`
(the same subset and initial weights for every method of that seed).

Per (method, seed) the JSON gets: test accuracy as a whole count over the
evaluated test images, train accuracy (inference mode, no augmentation, the
labels trained on), the last epoch's running train accuracy, per-epoch logs,
test accuracy on a fixed test subset every `--curve-every` epochs, and the top
Hessian eigenvalue of the final model on `--hessian-examples` training examples
(`keras_ssam.analysis.hessian_eigenvalues`, Lanczos, tol 1e-3). Per seed, the
step times of all methods are measured interleaved in one process (median of
`--timing-steps` rounds of one `train_on_batch` each); a method added to a finished
table re-times its seeds with every method. The JSON is rewritten
after every record; started again with the same `--out` and budget, the script
skips what is there (a killed run resumes with the next unfinished record).
"""

import argparse
import json
import math
import os
import shutil
import tarfile
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ssam  # noqa: E402
from keras_ssam import analysis, data, models  # noqa: E402
from keras_ssam.experiments import recipes  # noqa: E402
from keras_ssam.masks import mask_distribution  # noqa: E402

METHODS = {
    # name: (kind, sparsity)
    "sgd": ("sgd", None),
    "sam": ("sam", None),
    "ssam-f-50": ("fisher", 0.5),
    "ssam-f-90": ("fisher", 0.9),
    "ssam-d-50": ("dynamic", 0.5),
    "ssam-d-90": ("dynamic", 0.9),
    "structured-50": ("structured", 0.5),
    "structured-30": ("structured", 0.3),
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
# Arguments that define the experiment: a resumed --out must match them.
BUDGET_ARGS = (
    "model",
    "train_images",
    "test_images",
    "epochs",
    "batch",
    "lr",
    "rho",
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


def recipe_for(method, sparsity, info, args, steps, train=None, seed=0):
    """The shared recipe (`keras_ssam.experiments.recipes`) of a recipe method name."""
    base = models.build_model(
        args.model, info.num_classes, info.input_shape, data.preprocessing_layers(info)
    )
    return recipes.build(
        method,
        base,
        keras.optimizers.schedules.CosineDecay(args.lr, max(steps, 1)),
        rho=args.rho,
        weight_decay=args.wd_sgd if method == "sgd" else args.wd_sam,
        sparsity=0.5 if sparsity is None else sparsity,
        train_data=train,
        num_samples=args.fisher_samples,
        seed=seed,
    )


def build(method, info, args, steps, train=None, seed=0):
    """A compiled model for an evidence `method` and its mask callback (or None)."""
    kind, sparsity = METHODS[method]
    recipe = recipe_for(RECIPES[kind], sparsity, info, args, steps, train, seed)
    recipe.compile()
    return recipe.model, (recipe.callbacks[0] if recipe.callbacks else None)


def support(model):
    if not isinstance(model, keras_ssam.SSAMModel) or model.rho == 0:
        return None  # SGD: nothing is perturbed
    rows = mask_distribution(model)
    total = sum(r["entries"] for r in rows)
    return {
        "density": sum(r["perturbed"] for r in rows) / total,
        "support_fraction": sum(r["entries"] for r in rows if r["perturbed"]) / total,
        "first_perturbed": next((r["variable"] for r in rows if r["perturbed"]), None),
        "variables": rows,
    }


# ------------------------------------------------------------------ records
def run(root, method, seed, args):
    keras.utils.set_random_seed(seed)  # same initial weights for every method of a seed
    train, test, info = load(root, seed, args)
    _, curve_test, _ = load(
        root, seed, args, train_limit=128, test_limit=args.curve_images, drop_remainder=False
    )
    steps = args.epochs * info.steps_per_epoch
    model, mask = build(method, info, args, steps, train, seed)
    callbacks = [data.epoch_callback(info)] + ([mask] if mask else [])
    curve = []

    def record(epoch, logs):
        point = {"epoch": epoch + 1}
        point.update({k: float(v) for k, v in logs.items()})
        if args.curve_every and ((epoch + 1) % args.curve_every == 0 or epoch + 1 == args.epochs):
            point["curve_test_accuracy"] = count_correct(model, curve_test)[0] / args.curve_images
            print(  # progress of long runs
                f"  {method} seed {seed} epoch {epoch + 1}: train acc {point['accuracy']:.3f}, "
                f"curve test acc {point['curve_test_accuracy']:.3f}",
                flush=True,
            )
        curve.append(point)

    callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=record))
    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, verbose=0, callbacks=callbacks)
    seconds = time.perf_counter() - start
    test_correct, test_count = count_correct(model, test)
    train_correct, train_count = count_correct(model, plain_train_stream(root, seed, args))
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
        "method": method,
        "seed": seed,
        "test_correct": test_correct,
        "test_count": test_count,
        "test_accuracy": test_correct / test_count,
        "train_correct": train_correct,
        "train_count": train_count,
        "train_accuracy": train_correct / train_count,
        "fit_train_accuracy": curve[-1]["accuracy"],
        "steps": steps,
        "seconds": seconds,
        "hessian_top": hessian["eigenvalues"][0],
        "hessian_iterations": hessian["iterations"],
        "hessian_examples": int(len(hy)),
        "hessian_seconds": time.perf_counter() - start,
        "support": support(model),
        "curve": curve,
    }


def timing(root, seed, methods, args):
    """Seconds per step of every method, interleaved in this process (median)."""
    keras.utils.set_random_seed(seed)
    train, _, info = load(root, seed, args)
    x, y = arrays(train.take(args.timing_warmup + args.timing_steps))
    built = {}
    for method in methods:
        keras.utils.set_random_seed(seed)
        model, mask = build(method, info, args, 1000, train, seed)
        if mask is not None:  # the first mask, as fit sets it before its first step
            mask.set_model(model)
            mask.set_params({"epochs": 1, "steps": 1})
            mask.on_train_begin()
            mask.on_epoch_begin(0)
            mask.on_train_batch_begin(0)
        built[method] = model
    times = {m: [] for m in methods}
    b = args.batch
    for step in range(args.timing_warmup + args.timing_steps):
        xb, yb = x[(step * b) % len(x) :][:b], y[(step * b) % len(y) :][:b]
        for method, model in built.items():
            start = time.perf_counter()
            model.train_on_batch(xb, yb)
            if step >= args.timing_warmup:
                times[method].append(time.perf_counter() - start)
    median = {m: float(np.median(t)) for m, t in times.items()}
    ref = median.get("sgd")
    return {
        "seed": seed,
        "seconds_per_step": median,
        "relative_to_sgd": {m: s / ref for m, s in median.items()} if ref else None,
    }


def methods_to_time(timings, seed, methods):
    """The methods to time (again) for `seed`, or None when its record has them all.

    Ratios are only comparable within one interleaved measurement, so a method
    added later re-times the whole seed: the methods already timed and the new ones.
    """
    timed = next((t["seconds_per_step"] for t in timings if t["seed"] == seed), {})
    if all(m in timed for m in methods):
        return None
    return [m for m in METHODS if m in timed or m in methods]


# ------------------------------------------------------------------ summary
def mean_std(values):
    values = np.asarray(values, float)
    if not len(values):
        return None, None
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarize(result):
    """Per method: mean ± std (sample) of accuracies, paired differences to SAM
    (same seed), step-time ratio to SGD (per-seed interleaved timing)."""
    runs, timings = result["runs"], result["timing"]
    sam = {r["seed"]: r["test_accuracy"] for r in runs if r["method"] == "sam"}
    out = {}
    for method in METHODS:
        picked = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        if not picked:
            continue
        accs = [100 * r["test_accuracy"] for r in picked]
        diffs = [100 * (r["test_accuracy"] - sam[r["seed"]]) for r in picked if r["seed"] in sam]
        ratios = [
            t["relative_to_sgd"][method]
            for t in timings
            if t.get("relative_to_sgd") and method in t["relative_to_sgd"]
        ]
        row = {
            "seeds": [r["seed"] for r in picked],
            "test_accuracy": accs,
            "test_accuracy_mean": mean_std(accs)[0],
            "test_accuracy_std": mean_std(accs)[1],
            "diff_to_sam": diffs if method != "sam" else [],
            "diff_to_sam_mean": mean_std(diffs)[0] if method != "sam" else None,
            "diff_to_sam_std": mean_std(diffs)[1] if method != "sam" else None,
            "train_accuracy_mean": mean_std([100 * r["train_accuracy"] for r in picked])[0],
            "fit_train_accuracy_mean": mean_std([100 * r["fit_train_accuracy"] for r in picked])[0],
            "step_ratio_mean": mean_std(ratios)[0],
            "step_ratio_std": mean_std(ratios)[1],
            "hessian_top_mean": mean_std([r["hessian_top"] for r in picked])[0],
            "hessian_top_std": mean_std([r["hessian_top"] for r in picked])[1],
            "minutes_per_run": float(np.mean([r["seconds"] for r in picked]) / 60),
        }
        sup = [r["support"] for r in picked if r.get("support")]
        if sup:
            row["density_mean"] = float(np.mean([s["density"] for s in sup]))
            row["support_fraction_mean"] = float(np.mean([s["support_fraction"] for s in sup]))
            row["first_perturbed"] = sorted({s["first_perturbed"] for s in sup})
        out[method] = row
    return out


def _fmt(mean, std, digits=2, signed=False):
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:{'+' if signed else ''}.{digits}f} ± {std:.{digits}f}"


def table(summary):
    lines = [
        "| method | test acc. % (mean ± std) | per seed | − SAM, paired | train acc. % "
        "| step time ÷ SGD | top Hessian eigenvalue | support |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, row in summary.items():
        sup = "—"
        if "density_mean" in row:
            sup = (
                f"density {100 * row['density_mean']:.1f} %, support "
                f"{100 * row['support_fraction_mean']:.1f} % of params"
            )
            if method.startswith("structured"):
                sup += f" from {', '.join(row['first_perturbed'])}"
        paired = _fmt(row["diff_to_sam_mean"], row["diff_to_sam_std"], signed=True)
        lines.append(
            f"| {LABELS[method]} | {_fmt(row['test_accuracy_mean'], row['test_accuracy_std'])}"
            f" | {' / '.join(f'{a:.1f}' for a in row['test_accuracy'])}"
            f" | {'—' if method == 'sam' else paired}"
            f" | {row['train_accuracy_mean']:.1f}"
            f" | {_fmt(row['step_ratio_mean'], row['step_ratio_std'])}"
            f" | {_fmt(row['hessian_top_mean'], row['hessian_top_std'], 1)} | {sup} |"
        )
    return "\n".join(lines)


def figure(summary, path):
    """Test accuracy against step time ÷ SGD, one point per method, ± std bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for method, row in summary.items():
        if row["step_ratio_mean"] is None:
            continue
        ax.errorbar(
            row["step_ratio_mean"],
            row["test_accuracy_mean"],
            xerr=row["step_ratio_std"],
            yerr=row["test_accuracy_std"],
            fmt="o",
            capsize=3,
            label=LABELS[method],
        )
    ax.set_xlabel("step time ÷ SGD step (interleaved, same process)")
    ax.set_ylabel("test accuracy % (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


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
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--no-timing", action="store_true", help="skip step-time records")
    parser.add_argument(
        "--only-seeds",
        type=int,
        nargs="+",
        default=None,
        help="run these seeds only (e.g. to shard seeds over processes, one --out each)",
    )
    parser.add_argument("--model", default="proxy_cnn", choices=sorted(models.MODELS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--rho", type=float, default=0.15)
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
    return args


def previous(args):
    if not os.path.exists(args.out):
        return {"args": vars(args), "runs": [], "timing": []}
    with open(args.out) as f:
        saved = json.load(f)
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


def save(args, result):
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    result["summary"] = summarize(result)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out)


def main(argv=None):
    args = parse(argv)
    if not os.path.exists(args.data):
        raise SystemExit(f"CIFAR-10 archive not found at {args.data}; pass --data.")
    root = noisy_folder(
        extract(args.data, args.cache), args.label_noise, args.noise_seed, args.cache
    )
    result = previous(args)
    for seed in args.only_seeds if args.only_seeds is not None else range(args.seeds):
        to_time = None if args.no_timing else methods_to_time(result["timing"], seed, args.methods)
        if to_time:
            result["timing"] = [t for t in result["timing"] if t["seed"] != seed]
            result["timing"].append(timing(root, seed, to_time, args))
            print(json.dumps(result["timing"][-1]), flush=True)
            save(args, result)
        for method in args.methods:
            if any((r["method"], r["seed"]) == (method, seed) for r in result["runs"]):
                continue  # resumed: already in --out
            result["runs"].append(run(root, method, seed, args))
            brief = {k: v for k, v in result["runs"][-1].items() if k not in ("curve", "support")}
            print(json.dumps(brief), flush=True)
            save(args, result)
    save(args, result)
    print(table(result["summary"]))
    if args.figure:
        print("wrote", figure(result["summary"], args.figure))


if __name__ == "__main__":
    main()
