"""`keras-ssam train`: the paper's experiments (Mi et al. 2022, Sec. 5.1) from the shell.

Defaults follow the paper and its official code per (dataset, model), see
`PRESETS` and `MODEL_PRESETS`: CIFAR batch 128, 200 epochs, lr 0.05 cosine,
momentum 0.9, weight decay 5e-4 (SGD) / 1e-3 (SAM, SSAM), rho 0.1 (CIFAR-10) /
0.2 (CIFAR-100), Fisher samples 16, crop + flip + Cutout (VGG11-BN on CIFAR-10:
lr 0.1, from the official VGG runs); ImageNet batch 256, lr 0.1, weight decay
1e-4, rho 0.07, Fisher samples 128, random-resized crops.
Weight decay is PyTorch's coupled L2 (`SSAMModel(coupled_weight_decay=...)`)
by default, as the paper's numbers were tuned for it. A `folder:` dataset of
ImageNet-size images gets the ImageNet preset. The offline default, `digits`,
trains a small CNN in seconds.
"""

import argparse
import json
import os
import sys
import time

# keras_ssam.experiments.recipes.METHODS (not imported here: importing the CLI
# module must not import TensorFlow).
OPTIMIZERS = ("sgd", "sam", "ssam-f", "ssam-d", "ssam-random", "structured")
BETWEEN = ("sgd", "looksam")  # SSAMModel(between=)
ASCENTS = ("gradient", "momentum")  # SSAMModel(ascent=)
METHODS = ("lanczos", "power")  # keras_ssam.analysis.hessian_eigenvalues(method=)
HVP_MODES = ("forward", "reverse")  # keras_ssam.analysis.HVP_MODES
DISTRIBUTE = ("none", "mirrored", "multiworker")
WEIGHT_DECAY_MODES = ("coupled", "decoupled")
_CIFAR = dict(
    model="resnet18",
    epochs=200,
    batch_size=128,
    lr=0.05,
    rho=0.1,
    wd_sgd=5e-4,
    wd_sam=1e-3,
    cutout=True,
    num_samples=16,
)
PRESETS = {
    "digits": dict(
        model="small_cnn",
        epochs=10,
        batch_size=64,
        lr=0.05,
        rho=0.05,
        wd_sgd=5e-4,
        wd_sam=5e-4,
        cutout=False,
        num_samples=16,
    ),
    "cifar10": _CIFAR,
    "cifar100": dict(_CIFAR, rho=0.2),
    "imagenet": dict(
        model="resnet50",
        epochs=90,
        batch_size=256,
        lr=0.1,
        rho=0.07,
        wd_sgd=1e-4,
        wd_sam=1e-4,
        cutout=False,
        num_samples=128,
    ),
}
# (preset, model) -> values that differ from the dataset's preset.
#
# VGG11-BN on CIFAR-10: the official release's own VGG runs, configs/train.sh of
# github Mi-Peng/Sparse-Sharpness-Aware-Minimization at 2d17866 (the file was
# deleted in 76974fd), its first run (the others differ in --sparsity, and in
# the swept values below):
VGG11_BN_CIFAR10_COMMAND = (
    "python train.py --sparsity 0.9 --update_freq $update_freq --num_samples $num_samples "
    "--dataset CIFAR10_cutout --seed $seed --lr 0.1 --weight_decay 1e-3 --model $model "
    "--opt ssamf-sgd --rho 0.1 --wandb --output_dir logs/${model}_${data}"
)
# (model=vgg11_bn, sparsity 0.9/0.95/0.98/0.99, update_freq 1/5, num_samples
# 128/1024). Taken from it: lr 0.1, weight decay 1e-3 (SAM and SSAM), rho 0.1,
# Cutout (CIFAR10_cutout). What it leaves to configs/defaulf_cfg.py, as the CIFAR
# preset: 200 epochs, batch 128, momentum 0.9, cosine schedule. What it sweeps
# keeps the values of the official README's CIFAR SSAM-F command (`--sparsity 0.5
# --num_samples 16 --update_freq 1`): --sparsity 0.5, 16 Fisher samples,
# --update-interval 1. The SGD baseline's weight decay (not in the command) stays
# that of the official README's SGD command, 5e-4.
MODEL_PRESETS = {
    ("cifar10", "vgg11_bn"): dict(lr=0.1, rho=0.1, wd_sam=1e-3, cutout=True),
}
# rho of a SAM step every K steps (`--sam-interval K`, SGD between), as a multiple
# of the preset's: the ratio of the rhos chosen on the calibration seeds of
# docs/EVIDENCE.md (issue 23), where SAM's best rho was 0.15, SAM every 2nd
# step's 0.15 too and every 5th step's 0.3. Between measured intervals the
# multiple is interpolated linearly; beyond the largest it is held, not
# extrapolated. An explicit --rho wins.
INTERVAL_RHO_SCALE = {1: 1.0, 2: 1.0, 5: 2.0}
# rho of each `--ascent`, as a multiple of the preset's: momentum ascent's rho
# chosen on the same calibration seeds (1.0) ÷ SAM's (0.15). Its ascent direction
# is the normalized momentum buffer, which in this regime needs a far larger
# radius to do anything: at SAM's rho it memorizes the noisy labels like SGD.
ASCENT_RHO_SCALE = {"gradient": 1.0, "momentum": 1.0 / 0.15}


def interval_rho_scale(interval):
    """The multiple of the preset rho for `--sam-interval interval` (see `INTERVAL_RHO_SCALE`)."""
    points = sorted(INTERVAL_RHO_SCALE.items())
    if interval >= points[-1][0]:
        return points[-1][1]
    for (k0, v0), (k1, v1) in zip(points, points[1:]):
        if k0 <= interval <= k1:
            return v0 + (v1 - v0) * (interval - k0) / (k1 - k0)
    return points[0][1]


def build_parser():
    parser = argparse.ArgumentParser(prog="keras-ssam")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model and write results.json")
    t.add_argument(
        "--dataset",
        default="digits",
        help="digits (offline default), folder:PATH, or a tfds name "
        "(cifar10, cifar100, imagenet2012)",
    )
    t.add_argument("--data-dir", default=None, help="tensorflow-datasets data_dir")
    t.add_argument(
        "--model",
        default=None,
        help="resnet18, wrn28_10, vgg11_bn, resnet50, small_cnn or proxy_cnn",
    )
    t.add_argument("--optimizer", default="ssam-f", help=", ".join(OPTIMIZERS))
    t.add_argument("--sparsity", type=float, default=0.5)
    t.add_argument("--rho", type=float, default=None)
    t.add_argument("--adaptive", action="store_true", help="ASAM perturbation")
    t.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="SSAM-F examples (preset: 16 CIFAR, 128 ImageNet)",
    )
    t.add_argument("--update-interval", type=int, default=1, help="epochs per mask update")
    t.add_argument("--drop-rate", type=float, default=0.5, help="SSAM-D d0")
    t.add_argument(
        "--sam-interval",
        type=int,
        default=1,
        help="a SAM step every N optimizer steps, one pass between (SSAMModel(interval=)); "
        "without --rho the preset rho is scaled for it "
        "(INTERVAL_RHO_SCALE: x1 at N = 2, x2 at N = 5)",
    )
    t.add_argument(
        "--between",
        default="sgd",
        help="what steps between SAM steps apply: sgd or looksam (needs --sam-interval > 1 "
        "or --trigger)",
    )
    t.add_argument("--alpha", type=float, default=0.7, help="LookSAM's alpha")
    t.add_argument(
        "--ascent",
        default="gradient",
        help="gradient (SAM) or momentum (Momentum-SAM: one pass per step, e from the "
        "momentum buffer); without --rho the preset rho is scaled for it "
        "(ASCENT_RHO_SCALE: x6.7 for momentum; MSAM used 3 where SAM used 0.2)",
    )
    t.add_argument("--ascent-momentum", type=float, default=0.9, help="the momentum of that buffer")
    t.add_argument(
        "--trigger",
        type=float,
        nargs=3,
        default=None,
        metavar=("DELTA", "LAMBDA1", "LAMBDA2"),
        help="AE-SAM gradient-norm trigger (keras_ssam.GradientNormTrigger); T is the run's "
        "number of steps",
    )
    t.add_argument(
        "--sam-epochs",
        type=int,
        nargs=2,
        default=None,
        metavar=("START", "STOP"),
        help="SAM steps only in epochs START <= epoch < STOP (from 0), rho 0 (one pass) "
        "outside: keras_ssam.RhoWindow; e.g. the last quarter of 40 epochs is 30 40",
    )
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--weight-decay", type=float, default=None)
    t.add_argument(
        "--weight-decay-mode",
        default="coupled",
        help="coupled (PyTorch SGD's g + wd*w before momentum, the paper's; default) "
        "or decoupled (Keras' weight_decay=, w -= lr*wd*w)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--cutout", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--mixed-precision", action="store_true")
    t.add_argument("--distribute", default="none", help=", ".join(DISTRIBUTE))
    t.add_argument(
        "--train-limit", type=int, default=None, help="seeded subset of the training set"
    )
    t.add_argument("--test-limit", type=int, default=None)
    t.add_argument("--out", default="runs/latest")
    t.add_argument("--export", default=None, help="write a TF Serving SavedModel here")
    t.add_argument(
        "--checkpoint-dir",
        default=None,
        help="BackupAndRestore directory: a killed run resumes from it",
    )
    t.add_argument(
        "--deterministic",
        action="store_true",
        help="enable TensorFlow op determinism (bitwise-repeatable runs)",
    )
    t.add_argument("--verbose", type=int, default=2)

    a = sub.add_parser("analyze", help="Hessian spectrum, loss landscape, gradient difference")
    a.add_argument("model", help="a .keras file (an SSAMModel or any Keras model)")
    a.add_argument("--dataset", default="digits")
    a.add_argument("--data-dir", default=None)
    a.add_argument("--split", default="train", help="train or test")
    a.add_argument("--num-examples", type=int, default=1000)
    a.add_argument("--batch-size", type=int, default=128)
    a.add_argument("--hessian", action="store_true")
    a.add_argument("--top-k", type=int, default=5)
    a.add_argument("--max-iter", type=int, default=50)
    a.add_argument(
        "--tol",
        type=float,
        default=1e-3,
        help="stop once each top-k eigenvalue moved by at most this fraction in a step",
    )
    a.add_argument("--trace-samples", type=int, default=0)
    a.add_argument("--method", default="lanczos", help="lanczos or power")
    a.add_argument("--hvp-mode", default="forward", help="forward (faster) or reverse")
    a.add_argument(
        "--hessian-examples",
        type=int,
        default=None,
        help="use only the first N examples for the Hessian (a mini-batch Hessian; "
        "the cost of every product scales with N). Defaults to all --num-examples",
    )
    a.add_argument("--landscape", action="store_true")
    a.add_argument("--dims", type=int, default=1)
    a.add_argument("--resolution", type=int, default=21)
    a.add_argument("--span", type=float, nargs=2, default=(-1.0, 1.0))
    a.add_argument("--grad-diff", action="store_true")
    a.add_argument("--rho", type=float, default=0.05)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", default="runs/analysis")
    return parser


def _fail(message):
    raise SystemExit(f"keras-ssam: error: {message}")


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
    """Fills the (dataset, model) defaults and checks the choices."""
    from keras_ssam.experiments.models import MODELS

    if args.optimizer not in OPTIMIZERS:
        _fail(f"--optimizer must be one of {', '.join(OPTIMIZERS)}; received {args.optimizer!r}.")
    if args.distribute not in DISTRIBUTE:
        _fail(f"--distribute must be one of {', '.join(DISTRIBUTE)}; received {args.distribute!r}.")
    if args.weight_decay_mode not in WEIGHT_DECAY_MODES:
        _fail(
            f"--weight-decay-mode must be one of {', '.join(WEIGHT_DECAY_MODES)}; "
            f"received {args.weight_decay_mode!r}."
        )
    if args.model is not None and args.model not in MODELS:
        _fail(f"--model must be one of {', '.join(sorted(MODELS))}; received {args.model!r}.")
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
            _fail(f"--{field.replace('_', '-')} must be >= 1; received {getattr(args, field)}.")
    if args.weight_decay < 0:
        _fail(f"--weight-decay must be >= 0; received {args.weight_decay}.")
    _check_cheap_steps(args)
    if rho_from_preset:
        # --ascent momentum takes no --sam-interval (checked above): one scale applies.
        args.rho = args.rho * interval_rho_scale(args.sam_interval)
        args.rho = args.rho * ASCENT_RHO_SCALE[args.ascent]
    return args


def _check_cheap_steps(args):
    """The cheap-step flags, checked before anything is loaded."""
    if args.sam_interval < 1:
        _fail(f"--sam-interval must be >= 1; received {args.sam_interval}.")
    if args.between not in BETWEEN:
        _fail(f"--between must be one of {', '.join(BETWEEN)}; received {args.between!r}.")
    if args.alpha < 0:
        _fail(f"--alpha must be >= 0; received {args.alpha}.")
    if args.trigger is not None and args.sam_interval > 1:
        _fail("--sam-interval and --trigger both choose the SAM steps: pass one of them.")
    if args.between == "looksam" and args.sam_interval == 1 and args.trigger is None:
        _fail("--between looksam needs --sam-interval > 1 or --trigger.")
    if args.ascent not in ASCENTS:
        _fail(f"--ascent must be one of {', '.join(ASCENTS)}; received {args.ascent!r}.")
    if not 0 <= args.ascent_momentum < 1:
        _fail(f"--ascent-momentum must be in [0, 1); received {args.ascent_momentum}.")
    if args.ascent == "momentum" and (
        args.sam_interval > 1 or args.trigger is not None or args.between != "sgd"
    ):
        _fail("--ascent momentum does not combine with --sam-interval, --trigger or --between.")
    if args.trigger is not None and not 0 < args.trigger[0] < 1:
        _fail(f"--trigger DELTA must be in (0, 1); received {args.trigger[0]}.")
    if args.sam_epochs is not None and not 0 <= args.sam_epochs[0] < args.sam_epochs[1]:
        _fail(f"--sam-epochs needs 0 <= START < STOP; received {args.sam_epochs}.")


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


def train(args):
    args = resolve(args)
    import keras

    from keras_ssam.experiments import data

    keras.utils.set_random_seed(args.seed)
    if args.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    if args.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    train_ds, test_ds, info = data.load(
        args.dataset,
        args.data_dir,
        args.batch_size,
        args.seed,
        cutout=args.cutout,
        drop_remainder=True,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
    )
    strategy = _strategy(args.distribute)
    with strategy.scope():
        recipe = build(args, info, train_ds)
        model = recipe.compile()
    os.makedirs(args.out, exist_ok=True)
    callbacks = recipe.callbacks + epoch_callbacks(args.out)
    # First: the epoch keys the data order, which resumed runs must repeat.
    callbacks.insert(0, data.epoch_callback(info))
    if args.checkpoint_dir:
        callbacks.append(keras.callbacks.BackupAndRestore(_backup_dir(args, strategy)))
    start = time.perf_counter()
    history = model.fit(
        train_ds,
        validation_data=test_ds,
        epochs=args.epochs,
        callbacks=callbacks,
        verbose=args.verbose,
    )
    seconds = time.perf_counter() - start
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
    return results


def _first_examples(batches, count, batch_size):
    if count is None:
        return batches
    if count < 1:
        _fail(f"--hessian-examples must be >= 1; received {count}.")
    return batches.unbatch().take(count).batch(batch_size)


def analyze(args):
    """Runs the requested analyses; writes analysis.json and PNG figures."""
    if not (args.hessian or args.landscape or args.grad_diff):
        _fail("choose at least one of --hessian, --landscape, --grad-diff.")
    if args.split not in ("train", "test"):
        _fail(f"--split must be train or test; received {args.split!r}.")
    if args.method not in METHODS:
        _fail(f"--method must be one of {', '.join(METHODS)}; received {args.method!r}.")
    if args.hvp_mode not in HVP_MODES:
        _fail(f"--hvp-mode must be one of {', '.join(HVP_MODES)}; received {args.hvp_mode!r}.")
    if not os.path.isfile(args.model):
        _fail(f"no model file at {args.model!r}.")
    import keras
    import numpy as np

    import keras_ssam  # noqa: F401  (registers the SSAM classes for loading)
    from keras_ssam import analysis
    from keras_ssam.analysis import plots
    from keras_ssam.experiments import data

    model = keras.models.load_model(args.model)
    limit = {"train_limit": args.num_examples, "test_limit": args.num_examples}
    train_ds, test_ds, info = data.load(
        args.dataset,
        args.data_dir,
        args.batch_size,
        args.seed,
        augment=False,
        drop_remainder=False,
        **limit,
    )
    # Every pass of an analysis (each Hessian-vector product) reads the same
    # examples in the same order: the training stream stays at epoch 0.
    info.follow.assign(1)
    batches = train_ds if args.split == "train" else test_ds
    os.makedirs(args.out, exist_ok=True)
    report = {"model": args.model, "dataset": args.dataset, "split": args.split}
    if args.hessian:
        start = time.perf_counter()
        result = analysis.hessian_eigenvalues(
            model,
            _first_examples(batches, args.hessian_examples, args.batch_size),
            top_k=args.top_k,
            max_iter=args.max_iter,
            tol=args.tol,
            trace_samples=args.trace_samples,
            seed=args.seed,
            method=args.method,
            hvp_mode=args.hvp_mode,
        )
        report["hessian"] = dict(result, seconds=time.perf_counter() - start)
        plots.plot_eigenvalues(result, os.path.join(args.out, "eigenvalues.png"))
    if args.landscape:
        start = time.perf_counter()
        result = analysis.loss_landscape(
            model,
            batches,
            resolution=args.resolution,
            span=tuple(args.span),
            dims=args.dims,
            seed=args.seed,
        )
        plots.plot_landscape(result, os.path.join(args.out, f"landscape_{args.dims}d.png"))
        report["landscape"] = {
            k: np.asarray(v).tolist() for k, v in result.items() if k != "directions"
        }
        report["landscape"]["seconds"] = time.perf_counter() - start
    if args.grad_diff:
        start = time.perf_counter()
        result = analysis.gradient_difference(model, batches, rho=args.rho)
        plots.plot_gradient_difference(result, os.path.join(args.out, "grad_diff.png"))
        report["gradient_difference"] = {
            k: np.asarray(v).tolist() for k, v in result.items() if k != "ratio"
        }
        report["gradient_difference"]["seconds"] = time.perf_counter() - start
    with open(os.path.join(args.out, "analysis.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"analysis written to {args.out}")
    return report


def run(argv=None):
    """Runs a command and returns its results (`main` is the console entry)."""
    args = build_parser().parse_args(argv)
    from keras_ssam.experiments.data import DatasetError

    try:
        if args.command == "train":
            return train(args)
        if args.command == "analyze":
            return analyze(args)
    except DatasetError as err:
        _fail(str(err))
    return None


def main(argv=None):
    run(argv)
    return 0


if __name__ == "__main__":
    main(sys.argv[1:])
