"""`keras-ssam train`: presets resolved, the recipe built, `fit`, results written."""

import json
import os
import time

from keras_ssam_cli.parser import check_cheap_steps, fail
from keras_ssam_cli.presets import (
    ASCENT_RHO_SCALE,
    MODEL_PRESETS,
    PRESETS,
    interval_rho_scale,
)


def preset_key(dataset, data_dir=None):
    """The preset a dataset gets: digits, cifar10, cifar100 or imagenet.

    tfds names are matched by name; other datasets and `folder:` datasets by
    their images: ImageNet-size images get `imagenet`, small ones `cifar100`
    with 100 classes and `cifar10` otherwise.
    """
    from keras_ssam.experiments import data

    if dataset in ("digits", "cifar10", "cifar100"):
        return dataset
    if not dataset.startswith("folder:") and "imagenet" in dataset:
        return "imagenet"
    if data.describe(dataset, data_dir) == "large":
        return "imagenet"
    if dataset.startswith("folder:"):
        train = os.path.join(dataset[len("folder:") :], "train")
        classes = [d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d))]
        return "cifar100" if len(classes) == 100 else "cifar10"
    return "cifar10"


def resolve(args):
    """Fills the (dataset, model) defaults and checks what depends on them."""
    check_cheap_steps(args)
    args.preset = preset_key(args.dataset, args.data_dir)
    rho_from_preset = args.rho is None
    preset = dict(PRESETS[args.preset])
    model = args.model or preset["model"]
    preset.update(MODEL_PRESETS.get((args.preset, model), {}))
    for field in ("model", "epochs", "batch_size", "lr", "rho", "cutout", "num_samples"):
        if getattr(args, field) is None:
            setattr(args, field, preset[field])
    if args.weight_decay is None:
        args.weight_decay = preset["wd_sgd" if args.optimizer == "sgd" else "wd_sam"]
    for field in ("epochs", "batch_size", "num_samples"):
        if getattr(args, field) < 1:
            fail(f"--{field.replace('_', '-')} must be >= 1; received {getattr(args, field)}.")
    if args.weight_decay < 0:
        fail(f"--weight-decay must be >= 0; received {args.weight_decay}.")
    if getattr(args, "rho_from", None):
        if not rho_from_preset:
            fail("--rho and --rho-from both set rho: pass one of them.")
        from keras_ssam.tuning.results import rho_from

        try:
            args.rho = rho_from(args.rho_from, args)
        except ValueError as err:
            fail(str(err))
    elif rho_from_preset:
        # --ascent momentum takes no --sam-interval (checked above): one scale applies.
        args.rho = args.rho * interval_rho_scale(args.sam_interval)
        args.rho = args.rho * ASCENT_RHO_SCALE[args.ascent]
    return args


def _backup_dir(args, strategy):
    # Keras 3 writes the same backup file names from every worker: one
    # folder per worker keeps them apart on a shared file system.
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return os.path.join(args.checkpoint_dir, f"worker-{strategy.cluster_resolver.task_id}")
    return args.checkpoint_dir


def _strategy(kind):
    import tensorflow as tf

    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def epoch_callbacks(out):
    """Per-epoch seconds in the logs and a JSON-lines history."""
    import keras

    class EpochRecorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs["epoch_seconds"] = time.perf_counter() - self._start
            with open(os.path.join(out, "history.jsonl"), "a") as f:
                f.write(
                    json.dumps({"epoch": epoch, **{k: float(v) for k, v in logs.items()}}) + "\n"
                )

    return [
        EpochRecorder(),
        keras.callbacks.CSVLogger(os.path.join(out, "history.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(out, "tensorboard")),
    ]


def build(args, info, train_data=None):
    """The `keras_ssam.experiments.recipes.Recipe` of a resolved `args` for `info`.

    The recipes are shared with the benchmarks: SGD is `SSAMModel(rho=0)` (one
    pass per step) with the same weight decay code path as the SAM-type
    methods. The cosine schedule spans `epochs * steps_per_epoch` steps (the
    training stream drops the last incomplete batch).
    """
    import keras

    import keras_ssam
    from keras_ssam.experiments import data, models, recipes

    base = models.build_model(
        args.model,
        info.num_classes,
        info.input_shape,
        preprocessing=data.preprocessing_layers(info),
    )
    steps = args.epochs * info.steps_per_epoch
    trigger = None
    if args.trigger is not None:
        trigger = keras_ssam.GradientNormTrigger(*args.trigger, total_steps=steps)
    return recipes.build(
        args.optimizer,
        base,
        keras.optimizers.schedules.CosineDecay(args.lr, steps),
        rho=args.rho,
        weight_decay=args.weight_decay,
        weight_decay_mode=args.weight_decay_mode,
        sparsity=args.sparsity,
        train_data=train_data,
        num_samples=args.num_samples,
        update_interval=args.update_interval,
        drop_rate=args.drop_rate,
        adaptive=args.adaptive,
        interval=args.sam_interval,
        between=args.between,
        alpha=args.alpha,
        trigger=trigger,
        ascent=args.ascent,
        ascent_momentum=args.ascent_momentum,
        sam_epochs=args.sam_epochs,
        seed=args.seed,
    )


def load_data(args, **options):
    """`experiments.data.load` with the data flags of `args` (seeded, set up for this run)."""
    import keras

    from keras_ssam.experiments import data

    keras.utils.set_random_seed(args.seed)
    if args.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    if args.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    return data.load(
        args.dataset,
        args.data_dir,
        args.batch_size,
        args.seed,
        cutout=args.cutout,
        drop_remainder=True,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        label_noise=args.label_noise,
        **options,
    )


def train(args):
    """Runs `keras-ssam train`; writes results.json, the weights and model.keras."""
    args = resolve(args)
    import keras

    from keras_ssam.experiments import data

    train_ds, test_ds, info = load_data(args)
    strategy = _strategy(args.distribute)
    with strategy.scope():
        recipe = build(args, info, train_ds)
        model = recipe.compile()
    os.makedirs(args.out, exist_ok=True)
    # First: the epoch keys the data order, which resumed runs must repeat.
    callbacks = [data.epoch_callback(info), *recipe.callbacks, *epoch_callbacks(args.out)]
    if args.checkpoint_dir:
        callbacks.append(keras.callbacks.BackupAndRestore(_backup_dir(args, strategy)))
    guard = _collapse_guard(args, info)
    if guard is not None:
        callbacks.append(guard)
    start = time.perf_counter()
    # The stream orders itself per epoch (experiments.data); fit's shuffle does not apply.
    history = model.fit(
        train_ds,
        validation_data=test_ds,
        epochs=args.epochs,
        callbacks=callbacks,
        verbose=args.verbose,
        shuffle=False,
    )
    results = _results(args, info, model, history, time.perf_counter() - start, test_ds)
    if guard is not None:
        results["collapsed_epoch"] = guard.collapsed_epoch
    _save(args, model, results)
    return results


def _collapse_guard(args, info):
    """`--collapse-guard`: a `CollapseGuard` that warns (or stops), or `None` (off)."""
    if args.collapse_guard == "off":
        return None
    from keras_ssam import CollapseGuard

    return CollapseGuard(info.num_classes, stop_training=args.collapse_guard == "stop")


def _results(args, info, model, history, seconds, test_ds):
    scores = model.evaluate(test_ds, verbose=0, return_dict=True)
    results = {
        "args": vars(args),
        "dataset": {
            "name": info.name,
            "num_train": info.num_train,
            "num_test": info.num_test,
            "num_classes": info.num_classes,
            "steps_per_epoch": info.steps_per_epoch,
        },
        "parameters": int(sum(int(v.numpy().size) for v in model.trainable_variables)),
        "test_loss": float(scores["loss"]),
        "test_accuracy": float(scores["accuracy"]),
        "train_seconds": seconds,
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
    }
    if args.optimizer != "sgd":
        results["mask_density"] = model.mask_density()
    return results


def _save(args, model, results):
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    model.save_weights(os.path.join(args.out, "final.weights.h5"))
    # The whole model too, so that `keras-ssam analyze OUT/model.keras` works on it.
    model.save(os.path.join(args.out, "model.keras"))
    if args.export:
        model.export(args.export, verbose=False)
    print(
        f"test accuracy {results['test_accuracy']:.4f}; "
        f"results in {os.path.join(args.out, 'results.json')}"
    )
