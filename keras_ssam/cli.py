"""`keras-ssam train`: train a model with SGD, SAM or Sparse SAM.

This first version trains on the offline `digits` dataset (scikit-learn's
bundled 8x8 digits) with a small CNN; CIFAR/ImageNet datasets and models are
tracked in the project's CLI issue.
"""

import argparse
import json
import os
import sys
import time

OPTIMIZERS = ("sgd", "sam", "ssam-f", "ssam-d", "ssam-random")
DATASETS = ("digits",)
MODELS = ("small_cnn",)


def build_parser():
    parser = argparse.ArgumentParser(prog="keras-ssam")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a model and write results.json")
    train.add_argument("--dataset", default="digits")
    train.add_argument("--model", default="small_cnn")
    train.add_argument("--optimizer", default="ssam-f")
    train.add_argument("--sparsity", type=float, default=0.5)
    train.add_argument("--rho", type=float, default=0.05)
    train.add_argument("--adaptive", action="store_true")
    train.add_argument("--num-samples", type=int, default=16)
    train.add_argument("--update-interval", type=int, default=1)
    train.add_argument("--drop-rate", type=float, default=0.5)
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=0.05)
    train.add_argument("--weight-decay", type=float, default=5e-4)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", default="runs/latest")
    train.add_argument("--export", default=None, help="write a TF Serving SavedModel")
    train.add_argument("--verbose", type=int, default=2)
    return parser


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise SystemExit(
            f"keras-ssam: error: --{name} must be one of {', '.join(allowed)}; received {value!r}."
        )


def load_digits(seed):
    """scikit-learn's 8x8 digits, scaled to [0, 1], seeded 80/20 split."""
    import numpy as np
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def small_cnn(input_shape, classes):
    import keras

    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Conv2D(32, 3, padding="same", use_bias=False),
            layers.BatchNormalization(momentum=0.9),
            layers.ReLU(),
            layers.Conv2D(64, 3, padding="same", strides=2, use_bias=False),
            layers.BatchNormalization(momentum=0.9),
            layers.ReLU(),
            layers.GlobalAveragePooling2D(),
            layers.Dense(classes),
        ],
        name="small_cnn",
    )


def mask_callback(args, x, y):
    import keras_ssam

    if args.optimizer == "ssam-f":
        return keras_ssam.FisherMask(
            x,
            y,
            num_samples=args.num_samples,
            sparsity=args.sparsity,
            update_interval=args.update_interval,
            seed=args.seed,
        )
    if args.optimizer == "ssam-d":
        return keras_ssam.DynamicMask(
            sparsity=args.sparsity,
            drop_rate=args.drop_rate,
            update_interval=args.update_interval,
            seed=args.seed,
        )
    if args.optimizer == "ssam-random":
        return keras_ssam.RandomMask(sparsity=args.sparsity, seed=args.seed)
    return None


def train(args):
    _check_choice("dataset", args.dataset, DATASETS)
    _check_choice("model", args.model, MODELS)
    _check_choice("optimizer", args.optimizer, OPTIMIZERS)
    import keras

    import keras_ssam

    keras.utils.set_random_seed(args.seed)
    (x, y), (x_test, y_test) = load_digits(args.seed)
    model = small_cnn(x.shape[1:], 10)
    if args.optimizer != "sgd":
        model = keras_ssam.SSAMModel(model, rho=args.rho, adaptive=args.adaptive)
    steps = args.epochs * -(-len(y) // args.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, steps)
    # Decoupled weight decay (Keras' `weight_decay`), as in SGDW.
    optimizer = keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=args.weight_decay)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    os.makedirs(args.out, exist_ok=True)
    callbacks = [keras.callbacks.CSVLogger(os.path.join(args.out, "history.csv"))]
    mask = mask_callback(args, x, y)
    if mask is not None:
        callbacks.insert(0, mask)
    start = time.perf_counter()
    history = model.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=(x_test, y_test),
        callbacks=callbacks,
        verbose=args.verbose,
    )
    seconds = time.perf_counter() - start
    scores = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    test_loss, test_acc = scores["loss"], scores["accuracy"]
    results = {
        "args": vars(args),
        "test_loss": float(test_loss),
        "test_accuracy": float(test_acc),
        "train_seconds": seconds,
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
    }
    if isinstance(model, keras_ssam.SSAMModel):
        results["mask_density"] = model.mask_density()
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    if args.export:
        model.export(args.export, verbose=False)
    print(f"test accuracy {test_acc:.4f}; results in {args.out}/results.json")
    return results


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return train(args)
    return None


if __name__ == "__main__":
    main(sys.argv[1:])
