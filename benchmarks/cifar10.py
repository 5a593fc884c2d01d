"""CIFAR-10 accuracy of SGD, SAM, SSAM-F and SSAM-D on a CPU-sized proxy.

    python benchmarks/cifar10.py --data PATH/cifar10-images.tar.gz          # full, < 2 h
    python benchmarks/cifar10.py --data PATH/cifar10-images.tar.gz --quick  # < 5 min

Budget (see docs/RESULTS.md for why): the 6-conv BatchNorm proxy CNN
(~290k parameters), a seeded subset of the training images, SGD momentum 0.9,
cosine lr from 0.05, decoupled weight decay 5e-4 (SGD) / 1e-3 (SAM, SSAM), crop +
flip + Cutout, the same rho for every SAM-type run, >= 3 seeds. Test accuracy on
all 10,000 test images at the end; a 1,000-image test subset every few epochs
for the curves. Writes a JSON of every run and, with --plots, PNG figures.

Every run is built by the shared recipes (`keras_ssam.experiments.recipes`) with
`weight_decay_mode="decoupled"`, this script's decay since its first records
(the CLI and `evidence.py` use coupled decay). Since 2026-12-02 the SGD run is
`SSAMModel(rho=0)` (one pass per step) rather than the plain model: the same
update.
"""

import argparse
import json
import os
import tarfile
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from evidence import count_correct  # noqa: E402  (a sibling script in benchmarks/)

from keras_ssam.experiments import data, models, recipes  # noqa: E402

CONFIGS = [
    ("sgd", None),
    ("sam", None),
    ("ssam-f", 0.5),
    ("ssam-f", 0.9),
    ("ssam-d", 0.5),
    ("ssam-d", 0.9),
]


def extract(archive, cache):
    root = os.path.join(cache, "cifar10-images")
    if not os.path.isdir(os.path.join(root, "train")):
        os.makedirs(root, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    return root


def run(root, optimizer, sparsity, seed, args):
    keras.utils.set_random_seed(seed)
    train, test, info = data.load(
        f"folder:{root}", batch_size=128, seed=seed, train_limit=args.train_images
    )
    _, curve_test, _ = data.load(
        f"folder:{root}",
        batch_size=256,
        seed=seed,
        train_limit=128,
        test_limit=args.curve_images,
        drop_remainder=False,  # only its test split is used
    )
    steps = args.epochs * info.steps_per_epoch  # full batches only (drop_last)
    # The shared recipe, with this script's decoupled weight decay (Keras'
    # SGD(weight_decay=)), as its records were made.
    recipe = recipes.build(
        optimizer,
        models.proxy_cnn(10, info.input_shape, data.preprocessing_layers(info)),
        keras.optimizers.schedules.CosineDecay(0.05, steps),
        rho=args.rho,
        weight_decay=5e-4 if optimizer == "sgd" else 1e-3,
        weight_decay_mode="decoupled",
        sparsity=0.5 if sparsity is None else sparsity,
        train_data=train,
        num_samples=128,
        seed=seed,
    )
    model = recipe.compile()
    callbacks = [data.epoch_callback(info)] + recipe.callbacks
    curve = []

    def record(epoch, logs):
        # Train loss/accuracy/sharpness every epoch (free: fit's own logs);
        # test accuracy on the curve subset every `curve_every` epochs.
        point = {"epoch": epoch + 1, "train_loss": logs["loss"], "train_accuracy": logs["accuracy"]}
        if optimizer != "sgd":  # SGD (rho 0) takes no SAM step: no sharpness
            point["sharpness"] = logs["sharpness"]
        if (epoch + 1) % args.curve_every == 0 or epoch + 1 == args.epochs:
            point["test_accuracy"] = model.evaluate(curve_test, verbose=0, return_dict=True)[
                "accuracy"
            ]
        curve.append(point)

    callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=record))
    start = time.perf_counter()
    model.fit(train, epochs=args.epochs, verbose=0, callbacks=callbacks)
    seconds = time.perf_counter() - start
    # Counted by hand, not model.evaluate: the record then says how many test images
    # the final accuracy is over, which a test can compare with the archive.
    test_correct, test_count = count_correct(model, test)
    return {
        "optimizer": optimizer,
        "sparsity": sparsity,
        "seed": seed,
        "test_accuracy": test_correct / test_count,
        "test_correct": test_correct,
        "test_count": test_count,
        "seconds": seconds,
        "curve": curve,
    }


def table(runs):
    lines = [
        "| config | test accuracy % (mean ± std) | per seed | − SAM, paired by seed"
        " | train accuracy %, last epoch | sharpness, last epoch | minutes per run |",
        "|---|---|---|---|---|---|---|",
    ]
    # Seeds share the training subset and initialisation across configurations,
    # so per-seed differences to SAM are much less noisy than the means.
    sam = {r["seed"]: r["test_accuracy"] * 100 for r in runs if r["optimizer"] == "sam"}
    for optimizer, sparsity in CONFIGS:
        picked = sorted(
            (r for r in runs if (r["optimizer"], r["sparsity"]) == (optimizer, sparsity)),
            key=lambda r: r["seed"],
        )
        if not picked:
            continue
        accs = np.array([r["test_accuracy"] for r in picked]) * 100
        train = np.array([r["curve"][-1]["train_accuracy"] for r in picked]) * 100
        sharp = [r["curve"][-1].get("sharpness") for r in picked]
        name = optimizer if sparsity is None else f"{optimizer} {int(sparsity * 100)}%"
        diff = np.array(
            [r["test_accuracy"] * 100 - sam[r["seed"]] for r in picked if r["seed"] in sam]
        )
        paired = "—" if optimizer == "sam" or not len(diff) else _mean_std(diff, signed=True)
        lines.append(
            f"| {name} | {accs.mean():.2f} ± {accs.std(ddof=1) if len(accs) > 1 else 0:.2f}"
            f" | {' / '.join(f'{a:.1f}' for a in accs)} | {paired} | {train.mean():.1f}"
            f" | {'—' if None in sharp else f'{np.mean(sharp):.4f}'}"
            f" | {np.mean([r['seconds'] for r in picked]) / 60:.1f} |"
        )
    return "\n".join(lines)


def _mean_std(values, signed=False):
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():{'+' if signed else ''}.2f} ± {std:.2f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--data",
        default=os.path.join(
            os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-images.tar.gz"
        ),
    )
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "keras-ssam"))
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--curve-every", type=int, default=3)
    parser.add_argument("--curve-images", type=int, default=1000)
    parser.add_argument("--out", default="runs/cifar10-benchmark.json")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--plots", default=None, help="folder for the PNG figures (see plot_cifar10.py)"
    )
    args = parser.parse_args()
    if args.quick:
        args.train_images, args.epochs, args.seeds, args.curve_every = 1000, 3, 1, 3
        args.curve_images = 500
    if not os.path.exists(args.data):
        raise SystemExit(f"CIFAR-10 archive not found at {args.data}; pass --data.")
    root = extract(args.data, args.cache)
    runs = previous_runs(args)
    for seed in range(args.seeds):
        for optimizer, sparsity in CONFIGS:
            if any(same_run(r, optimizer, sparsity, seed) for r in runs):
                continue  # resumed: this run is already in --out
            runs.append(run(root, optimizer, sparsity, seed, args))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "curve"}), flush=True)
            save(args, runs)
    print(table(runs))
    if args.plots:
        from plot_cifar10 import plot_all

        for path in plot_all(runs, args.plots):
            print("wrote", path)


BUDGET_ARGS = ("train_images", "epochs", "rho", "curve_every", "curve_images")


def previous_runs(args):
    """Runs already in `--out` from an interrupted invocation with the same budget."""
    if not os.path.exists(args.out):
        return []
    with open(args.out) as f:
        saved = json.load(f)
    if any(saved["args"].get(k) != getattr(args, k) for k in BUDGET_ARGS):
        raise SystemExit(f"{args.out} holds runs with another budget; pass another --out.")
    print(f"resuming: {len(saved['runs'])} runs already in {args.out}", flush=True)
    return saved["runs"]


def same_run(record, optimizer, sparsity, seed):
    return (record["optimizer"], record["sparsity"], record["seed"]) == (optimizer, sparsity, seed)


def save(args, runs):
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"args": vars(args), "runs": runs}, f, indent=2)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
