"""The argument parser of `keras-ssam`, and the checks that need no TensorFlow.

Every value is checked here, before `keras_ssam` (and with it TensorFlow) is
imported: a typo fails at once, with the flag and the value received.
"""

import argparse
import os
import re

from keras_ssam_cli import presets
from keras_ssam_cli.presets import (
    ALPHA,
    ASCENTS,
    BETWEEN,
    COLLAPSE_GUARD,
    DISTRIBUTE,
    HVP_MODES,
    METHODS,
    MODELS,
    OPTIMIZERS,
    SPLITS,
    WEIGHT_DECAY_MODES,
    preset_default,
)

# `keras-ssam tune --methods`: keras_ssam.tuning.TUNED_METHODS (pinned by a test).
TUNED_METHODS = (
    "sgd",
    "sam",
    "ssam-f",
    "ssam-d",
    "ssam-random",
    "structured",
    "looksam",
    "momentum",
    "interval",
)
RHO_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
SCORES = ("last", "best")
VERSION = "0.1.0"  # keras_ssam.__version__ (pinned by a test)


def fail(message):
    """Exits with `keras-ssam: error: MESSAGE` (what a test or a shell reads)."""
    raise SystemExit(f"keras-ssam: error: {message}")


class Parser(argparse.ArgumentParser):
    """argparse, exiting with the message as `SystemExit`'s value."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **dict(kwargs, allow_abbrev=False))

    def error(self, message):
        # A refused value's message names its flag already: no "argument --x:" prefix.
        message = re.sub(r"^argument [^:]+: (?=--)", "", message)
        fail(f"{message} (see `{self.prog} --help`)")


def choice(flag, options):
    """An argparse `type` that refuses a value outside `options`, naming both."""

    def check(value):
        if value not in options:
            raise argparse.ArgumentTypeError(
                f"{flag} must be one of {', '.join(options)}; received {value!r}."
            )
        return value

    return check


def number(flag, kind=float, low=None, high=None, high_open=False):
    """An argparse `type`: `kind(value)` within `[low, high]` (`[low, high)` if `high_open`)."""

    def check(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} must be {'an integer' if kind is int else 'a number'}; received {text!r}."
            ) from None
        if high is None:
            if low is not None and value < low:
                raise argparse.ArgumentTypeError(f"{flag} must be >= {low:g}; received {value}.")
            return value
        if not (low <= value and (value < high if high_open else value <= high)):
            right = ")" if high_open else "]"
            raise argparse.ArgumentTypeError(
                f"{flag} must be in [{low:g}, {high:g}{right}; received {value}."
            )
        return value

    return check


def _closed(arg, flag, options, default, help_text, **kwargs):
    """A flag with a closed set of values: `choices` shown, typos refused by name."""
    if default is not None:
        help_text = f"{help_text} (default: {default})"
    metavar = "{" + ",".join(options) + "}"
    arg(
        flag,
        default=default,
        choices=options,
        type=choice(flag, options),
        metavar=metavar,
        help=help_text,
        **kwargs,
    )


def add_data_arguments(p, train=True):
    """The data flags; `tune` (`train=False`) reads no test set: no `--test-limit`."""
    p = p.add_argument_group("data")
    dataset_help = "digits (offline default), folder:PATH, or a tfds name"
    p.add_argument("--dataset", default="digits", help=f"{dataset_help} (default: digits)")
    p.add_argument("--data-dir", default=None, help="tensorflow-datasets data_dir (default: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, model and masks (default: 0)")
    p.add_argument(
        "--train-limit",
        type=number("--train-limit", int, 1),
        default=None,
        help="a seeded subset of this many training examples (default: all)",
    )
    if train:
        p.add_argument(
            "--test-limit",
            type=number("--test-limit", int, 1),
            default=None,
            help="a seeded subset of this many test examples (default: all)",
        )
    p.add_argument(
        "--label-noise",
        type=number("--label-noise", float, 0.0, 1.0, high_open=True),
        default=0.0,
        help="replace this fraction of the TRAINING labels by a seeded random other class, "
        "once (test labels stay clean; in-memory datasets only) (default: 0)",
    )
    p.add_argument(
        "--cutout",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Cutout augmentation of small images (default: preset, on for CIFAR, off for digits)",
    )


def add_method_arguments(p, train=True):
    """The method's flags; `tune` (`train=False`) has `--methods` and `--rho-grid` instead
    of `--optimizer`, `--rho` and `--rho-from`."""
    g = p.add_argument_group("method")
    if train:
        _closed(g.add_argument, "--optimizer", OPTIMIZERS, "ssam-f", "sgd, SAM or the SSAM mask")
    _closed(
        g.add_argument,
        "--model",
        MODELS,
        None,
        "architecture (default: preset, " + preset_default("model") + ")",
    )
    g.add_argument(
        "--sparsity",
        type=number("--sparsity", float, 0.0, 1.0, high_open=True),
        default=0.5,
        help="fraction of the weights NOT perturbed by the SSAM masks (default: 0.5)",
    )
    if train:
        g.add_argument(
            "--rho",
            type=number("--rho", float, 0.0),
            default=None,
            help="SAM radius (default: preset, " + preset_default("rho") + "; scaled for "
            "--sam-interval and --ascent, see those flags)",
        )
        g.add_argument(
            "--rho-from",
            default=None,
            metavar="TUNING_JSON",
            help="take rho from `keras-ssam tune`'s tuning.json (refused if it was tuned for "
            "another method, dataset, model or label noise) (default: none)",
        )
    g.add_argument("--adaptive", action="store_true", help="ASAM perturbation (default: off)")
    g.add_argument(
        "--num-samples",
        type=number("--num-samples", int, 1),
        default=None,
        help="SSAM-F Fisher examples (default: preset, " + preset_default("num_samples") + ")",
    )
    g.add_argument(
        "--update-interval",
        type=number("--update-interval", int, 1),
        default=1,
        help="epochs per mask update (default: 1)",
    )
    g.add_argument(
        "--drop-rate",
        type=number("--drop-rate", float, 0.0, 1.0),
        default=0.5,
        help="SSAM-D's d0 (default: 0.5)",
    )


def add_cheap_step_arguments(p, train=True):
    """The cheap steps' flags; `tune` (`train=False`) has `--methods` for the step kinds."""
    g = p.add_argument_group("cheap steps")
    g.add_argument(
        "--sam-interval",
        type=number("--sam-interval", int, 1),
        default=1,
        help="a SAM step every N optimizer steps, one pass between (SSAMModel(interval=)); "
        "without --rho the preset rho is scaled for it "
        "(INTERVAL_RHO_SCALE: x1 at N = 2, x2 at N = 5) (default: 1)",
    )
    if train:
        add_step_kind_arguments(g)
    g.add_argument(
        "--alpha",
        type=number("--alpha", float, 0.0),
        default=ALPHA,
        help="LookSAM's alpha (default: %(default)s; the LookSAM paper's 0.7 was chosen for "
        "ViTs at batch 4096 and collapsed training in docs/EVIDENCE.md's regime)",
    )
    g.add_argument(
        "--ascent-momentum",
        type=number("--ascent-momentum", float, 0.0, 1.0, high_open=True),
        default=0.9,
        help="the momentum of the ascent buffer (default: 0.9)",
    )


def add_step_kind_arguments(g):
    """`train`'s choice of step kind: what runs between SAM steps, the ascent, when SAM runs."""
    _closed(
        g.add_argument,
        "--between",
        BETWEEN,
        "sgd",
        "what steps between SAM steps apply (looksam needs --sam-interval > 1 or --trigger)",
    )
    _closed(
        g.add_argument,
        "--ascent",
        ASCENTS,
        "gradient",
        "gradient (SAM) or momentum (Momentum-SAM: one pass per step, e from the momentum "
        "buffer); without --rho the preset rho is scaled x6.7 for momentum "
        "(ASCENT_RHO_SCALE), a starting point from one regime: no safe default exists, "
        "find it with `keras-ssam tune --methods momentum`",
    )
    g.add_argument(
        "--trigger",
        type=float,
        nargs=3,
        default=None,
        metavar=("DELTA", "LAMBDA1", "LAMBDA2"),
        help="AE-SAM gradient-norm trigger (keras_ssam.GradientNormTrigger); T is the run's "
        "number of steps (default: none)",
    )
    g.add_argument(
        "--sam-epochs",
        type=int,
        nargs=2,
        default=None,
        metavar=("START", "STOP"),
        help="SAM steps only in epochs START <= epoch < STOP (from 0), rho 0 (one pass) "
        "outside: keras_ssam.RhoWindow; e.g. the last quarter of 40 epochs is 30 40 "
        "(default: every epoch)",
    )


def add_schedule_arguments(p, epochs="epochs"):
    g = p.add_argument_group("schedule")
    for flag, field, kind, text in (
        ("--epochs", "epochs", int, epochs),
        ("--batch-size", "batch_size", int, "batch size"),
    ):
        g.add_argument(
            flag,
            type=number(flag, kind, 1),
            default=None,
            help=f"{text} (default: preset, {preset_default(field)})",
        )
    g.add_argument(
        "--lr",
        type=number("--lr", float, 0.0),
        default=None,
        help="peak learning rate of the cosine schedule (default: preset, "
        + preset_default("lr")
        + ")",
    )
    g.add_argument(
        "--weight-decay",
        type=number("--weight-decay", float, 0.0),
        default=None,
        help="L2 weight decay (default: preset, SGD: "
        + preset_default("wd_sgd")
        + "; SAM-type: "
        + preset_default("wd_sam")
        + ")",
    )
    _closed(
        g.add_argument,
        "--weight-decay-mode",
        WEIGHT_DECAY_MODES,
        "coupled",
        "coupled (PyTorch SGD's g + wd*w before momentum, the paper's) "
        "or decoupled (Keras' weight_decay=, w -= lr*wd*w)",
    )


def add_run_arguments(p, out, train=True):
    """The run flags; `tune` (`train=False`) runs its trials on one device: no `--distribute`."""
    g = p.add_argument_group("run")
    g.add_argument("--mixed-precision", action="store_true", help="mixed_float16 (default: off)")
    if train:
        _closed(g.add_argument, "--distribute", DISTRIBUTE, "none", "tf.distribute strategy")
    g.add_argument("--out", default=out, help=f"output folder (default: {out})")
    g.add_argument(
        "--deterministic",
        action="store_true",
        help="enable TensorFlow op determinism (bitwise-repeatable runs) (default: off)",
    )
    g.add_argument(
        "--verbose", type=int, default=2, choices=(0, 1, 2), help="Keras fit verbosity (default: 2)"
    )
    return g


def add_train_parser(sub):
    t = sub.add_parser(
        "train",
        help="train a model and write results.json",
        description="Train a model; writes results.json, history, model.keras.",
    )
    add_data_arguments(t)
    add_method_arguments(t)
    add_cheap_step_arguments(t)
    add_schedule_arguments(t)
    g = add_run_arguments(t, "runs/latest")
    g.add_argument(
        "--export", default=None, help="write a TF Serving SavedModel here (default: none)"
    )
    g.add_argument(
        "--checkpoint-dir",
        default=None,
        help="BackupAndRestore directory: a killed run resumes from it (default: none)",
    )
    _closed(
        g.add_argument,
        "--collapse-guard",
        COLLAPSE_GUARD,
        "warn",
        "keras_ssam.CollapseGuard: after a warm-up, training near chance level (a rho or "
        "LookSAM alpha too large) gets one warning (warn), also stops the run (stop), or is "
        "not watched (off); results.json records collapsed_epoch",
    )
    return t


def add_tune_parser(sub):
    t = sub.add_parser(
        "tune",
        help="choose rho per method on a validation split (KerasTuner)",
        description="Grid search of rho (and alpha, interval where they apply) per method on "
        "a validation split carved from the training data; writes tuning.json, tuning.png. "
        "Resumable: rerun with the same --out. Needs `pip install keras-ssam[tune]`.",
    )
    add_data_arguments(t, train=False)
    add_method_arguments(t, train=False)
    add_cheap_step_arguments(t, train=False)
    add_schedule_arguments(t, epochs="epochs of each trial, the budget")
    add_tune_arguments(t)
    # What `train`'s flags would set: the methods choose their own (--methods).
    t.set_defaults(
        optimizer="sam",
        rho=None,
        between="sgd",
        ascent="gradient",
        trigger=None,
        sam_epochs=None,
        test_limit=None,
        distribute="none",
    )
    add_run_arguments(t, "runs/tuning", train=False)
    return t


def add_tune_arguments(t):
    g = t.add_argument_group("search")
    g.add_argument(
        "--methods",
        nargs="+",
        default=["sam"],
        type=choice("--methods", TUNED_METHODS),
        metavar="METHOD",
        help="methods to tune, of "
        + ", ".join(TUNED_METHODS)
        + "; looksam and interval use --sam-interval "
        "(5 when 1), momentum is --ascent momentum (default: sam)",
    )
    g.add_argument(
        "--rho-grid",
        nargs="+",
        type=number("--rho-grid", float, 0.0),
        default=list(RHO_GRID),
        metavar="RHO",
        help=f"rhos to try (default: {' '.join(map(str, RHO_GRID))})",
    )
    g.add_argument(
        "--alpha-grid",
        nargs="+",
        type=number("--alpha-grid", float, 0.0),
        default=None,
        metavar="ALPHA",
        help="LookSAM alphas to try (default: --alpha only)",
    )
    g.add_argument(
        "--trials",
        type=number("--trials", int, 1),
        default=None,
        help="at most this many trials per method (default: the whole grid)",
    )
    g.add_argument(
        "--validation-split",
        type=number("--validation-split", float, 0.05, 0.5),
        default=0.2,
        help="fraction of the training examples held out for "
        "validation (never the test set) (default: 0.2)",
    )
    _closed(
        g.add_argument,
        "--score",
        SCORES,
        "last",
        "validation accuracy of the last epoch (the model a run keeps; under label noise "
        "the best epoch flatters runs that peak early and then memorize) or the best",
    )


def add_analyze_parser(sub):
    a = sub.add_parser("analyze", help="Hessian spectrum, loss landscape, gradient difference")
    a.add_argument("model", help="a .keras file (an SSAMModel or any Keras model)")
    a.add_argument("--dataset", default="digits", help="as train's (default: digits)")
    a.add_argument("--data-dir", default=None, help="tensorflow-datasets data_dir (default: none)")
    _closed(a.add_argument, "--split", SPLITS, "train", "the examples analysed")
    a.add_argument(
        "--num-examples",
        type=number("--num-examples", int, 1),
        default=1000,
        help="examples of the split (default: 1000)",
    )
    a.add_argument(
        "--batch-size", type=number("--batch-size", int, 1), default=128, help="(default: 128)"
    )
    a.add_argument("--seed", type=int, default=0, help="(default: 0)")
    a.add_argument("--out", default="runs/analysis", help="(default: runs/analysis)")
    add_hessian_arguments(a)
    g = a.add_argument_group("loss landscape and gradient difference")
    g.add_argument("--landscape", action="store_true", help="plot the loss landscape")
    g.add_argument("--dims", type=int, default=1, choices=(1, 2), help="(default: 1)")
    g.add_argument(
        "--resolution",
        type=number("--resolution", int, 2),
        default=21,
        help="points per direction (default: 21)",
    )
    g.add_argument(
        "--span",
        type=float,
        nargs=2,
        default=(-1.0, 1.0),
        help="range of each direction (default: -1 1)",
    )
    g.add_argument("--grad-diff", action="store_true", help="the gradient difference")
    g.add_argument(
        "--rho", type=number("--rho", float, 0.0), default=0.05, help="its radius (default: 0.05)"
    )
    return a


def add_hessian_arguments(a):
    g = a.add_argument_group("Hessian spectrum")
    g.add_argument("--hessian", action="store_true", help="the top Hessian eigenvalues")
    g.add_argument("--top-k", type=number("--top-k", int, 1), default=5, help="(default: 5)")
    g.add_argument(
        "--max-iter", type=number("--max-iter", int, 1), default=50, help="(default: 50)"
    )
    g.add_argument(
        "--tol",
        type=float,
        default=1e-3,
        help="stop once each top-k eigenvalue moved by at most this fraction in a step "
        "(default: 0.001)",
    )
    g.add_argument(
        "--trace-samples", type=int, default=0, help="Hutchinson samples of the trace (default: 0)"
    )
    _closed(g.add_argument, "--method", METHODS, "lanczos", "eigenvalue method")
    _closed(
        g.add_argument,
        "--hvp-mode",
        HVP_MODES,
        "forward",
        "Hessian-vector products: forward (faster) or reverse",
    )
    g.add_argument(
        "--hessian-examples",
        type=number("--hessian-examples", int, 1),
        default=None,
        help="use only the first N examples for the Hessian (a mini-batch Hessian; "
        "the cost of every product scales with N) (default: all --num-examples)",
    )


def build_parser():
    """The `keras-ssam` parser: `train`, `tune`, `analyze`."""
    parser = Parser(
        prog="keras-ssam",
        description="Sparse SAM for Keras: train, tune, analyze.",
    )
    parser.add_argument("--version", action="version", version=f"keras-ssam {VERSION}")
    # No abbreviations: `tune --rho 0.1` must not run as `--rho-grid 0.1`.
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_train_parser(sub)
    add_tune_parser(sub)
    add_analyze_parser(sub)
    return parser


def check_cheap_steps(args):
    """The cheap-step flags that depend on each other."""
    trigger = getattr(args, "trigger", None)
    if trigger is not None and args.sam_interval > 1:
        fail("--sam-interval and --trigger both choose the SAM steps: pass one of them.")
    if args.between == "looksam" and args.sam_interval == 1 and trigger is None:
        fail("--between looksam needs --sam-interval > 1 or --trigger.")
    if args.ascent == "momentum" and (
        args.sam_interval > 1 or trigger is not None or args.between != "sgd"
    ):
        fail("--ascent momentum does not combine with --sam-interval, --trigger or --between.")
    if trigger is not None and not 0 < trigger[0] < 1:
        fail(f"--trigger DELTA must be in (0, 1); received {trigger[0]}.")
    if args.sam_epochs is not None and not 0 <= args.sam_epochs[0] < args.sam_epochs[1]:
        fail(f"--sam-epochs needs 0 <= START < STOP; received {args.sam_epochs}.")


def check(args):
    """What the parser alone cannot check; exits with a message naming the flag."""
    folder = args.dataset[len("folder:") :] if args.dataset.startswith("folder:") else None
    if folder is not None and not os.path.isdir(folder):
        fail(f"--dataset folder:{folder}: no such folder.")
    if args.command in ("train", "tune"):
        check_cheap_steps(args)
    if args.command == "analyze" and not (args.hessian or args.landscape or args.grad_diff):
        fail("choose at least one of --hessian, --landscape, --grad-diff.")
    if args.command == "analyze" and not os.path.isfile(args.model):
        fail(f"no model file at {args.model!r}.")
    return args


def parse(argv=None):
    """Parsed and checked arguments (no TensorFlow imported)."""
    return check(build_parser().parse_args(argv))


__all__ = ["build_parser", "check", "parse", "fail", "presets"]
