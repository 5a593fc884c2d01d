"""`keras-ssam tune`: rho per method on a validation split (`keras_ssam.tuning`)."""

import os
import time

from keras_ssam.cli.train import load_data, resolve
from keras_ssam_cli.presets import MODEL_PRESETS, PRESETS

# What tuning.json records of the run (`rho_from` checks dataset, model, label noise).
CONTEXT = ("dataset", "model", "label_noise", "train_limit", "seed", "batch_size", "lr",
           "validation_split")  # fmt: skip


def _weight_decay(args, method, explicit):
    """`--weight-decay`, or the preset's for the method (SGD's or the SAM-type one)."""
    if explicit is not None:
        return explicit
    preset = dict(PRESETS[args.preset], **MODEL_PRESETS.get((args.preset, args.model), {}))
    return preset["wd_sgd" if method == "sgd" else "wd_sam"]


def _search_options(args, method, explicit_weight_decay):
    """`keras_ssam.tuning.tune`'s keyword arguments for one method."""
    recipe_kwargs = dict(
        weight_decay=_weight_decay(args, method, explicit_weight_decay),
        weight_decay_mode=args.weight_decay_mode,
        sparsity=args.sparsity,
        num_samples=args.num_samples,
        update_interval=args.update_interval,
        drop_rate=args.drop_rate,
        adaptive=args.adaptive,
        ascent_momentum=args.ascent_momentum,
    )
    return dict(
        alpha_grid=args.alpha_grid or [args.alpha],
        interval_grid=[args.sam_interval if args.sam_interval > 1 else 5],
        score=args.score,
        trials=args.trials,
        seed=args.seed,
        context={field: getattr(args, field) for field in CONTEXT},
        recipe_kwargs=recipe_kwargs,
        verbose=int(args.verbose > 0),
    )


def tune(args):
    """Runs `keras-ssam tune`; writes tuning.json, tuning.png and tuning.txt in --out."""
    explicit_weight_decay = args.weight_decay
    args = resolve(args)
    from keras_ssam import tuning
    from keras_ssam.experiments import data, models

    start = time.perf_counter()
    train_ds, validation, info = load_data(args, validation_split=args.validation_split)

    def build_base():
        preprocessing = data.preprocessing_layers(info)
        return models.build_model(args.model, info.num_classes, info.input_shape, preprocessing)

    result = None
    for method in args.methods:
        part = tuning.tune(
            [method], build_base, info, train_ds, validation, args.epochs, args.lr,
            args.rho_grid, os.path.join(args.out, "tuner"),
            **_search_options(args, method, explicit_weight_decay),
        )  # fmt: skip
        if result is None:
            result = part
        else:
            result["methods"].update(part["methods"])
    result["seconds"] = time.perf_counter() - start
    print(tuning.write(result, args.out))
    print(f"tuning written to {os.path.join(args.out, 'tuning.json')}")
    return result
