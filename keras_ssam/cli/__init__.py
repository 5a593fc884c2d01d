"""`keras-ssam train`, `tune` and `analyze`: the paper's experiments from the shell.

The parser, presets and choices live in `keras_ssam_cli` (outside this
package, so that `keras-ssam --help` does not import TensorFlow); this package
runs the commands and re-exports them, so `keras_ssam.cli.PRESETS`,
`INTERVAL_RHO_SCALE`, `ASCENT_RHO_SCALE`, `build_parser` and `main` keep working.
"""

from keras_ssam.cli.analyze import analyze
from keras_ssam.cli.train import build, epoch_callbacks, preset_key, resolve, train
from keras_ssam.cli.tune import tune
from keras_ssam_cli.parser import build_parser, fail, parse
from keras_ssam_cli.presets import (
    ALPHA,
    ASCENT_RHO_SCALE,
    ASCENTS,
    BETWEEN,
    DISTRIBUTE,
    HVP_MODES,
    INTERVAL_RHO_SCALE,
    METHODS,
    MODEL_PRESETS,
    MODELS,
    OPTIMIZERS,
    PRESETS,
    VGG11_BN_CIFAR10_COMMAND,
    WEIGHT_DECAY_MODES,
    interval_rho_scale,
)

COMMANDS = {"train": train, "tune": tune, "analyze": analyze}


def dispatch(args):
    """Runs the command of parsed `args`; returns its results."""
    from keras_ssam.experiments.data import DatasetError

    try:
        return COMMANDS[args.command](args)
    except DatasetError as err:
        fail(str(err))


def run(argv=None):
    """Parses `argv`, runs the command and returns its results (`main` is the console entry)."""
    return dispatch(parse(argv))


def main(argv=None):
    """The console entry (`keras_ssam_cli.main` parses before importing TensorFlow)."""
    run(argv)
    return 0


__all__ = [
    "ALPHA",
    "ASCENT_RHO_SCALE",
    "ASCENTS",
    "BETWEEN",
    "COMMANDS",
    "DISTRIBUTE",
    "HVP_MODES",
    "INTERVAL_RHO_SCALE",
    "METHODS",
    "MODEL_PRESETS",
    "MODELS",
    "OPTIMIZERS",
    "PRESETS",
    "VGG11_BN_CIFAR10_COMMAND",
    "WEIGHT_DECAY_MODES",
    "analyze",
    "build",
    "build_parser",
    "dispatch",
    "epoch_callbacks",
    "interval_rho_scale",
    "main",
    "preset_key",
    "resolve",
    "run",
    "train",
    "tune",
]
