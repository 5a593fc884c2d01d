"""The `keras-ssam` console entry: parses first, imports TensorFlow only to run a command.

Importing any `keras_ssam` module imports TensorFlow (the package registers its
Keras classes at import, which `keras.models.load_model` relies on). This
package lies outside it, so `keras-ssam --help`, `--version` and a refused
value answer at once; `keras_ssam.cli` runs the command.
"""

import os

from keras_ssam_cli.parser import VERSION as __version__
from keras_ssam_cli.parser import build_parser, parse


def quiet_tensorflow():
    """Hides TensorFlow's C++ start-up lines, unless the user chose a level."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    """`keras-ssam`: parses and checks `argv`, then runs the command; returns 0."""
    args = parse(argv)
    quiet_tensorflow()
    from keras_ssam.cli import dispatch

    dispatch(args)
    return 0


__all__ = ["__version__", "build_parser", "main", "parse"]
