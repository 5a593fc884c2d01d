"""The `keras-ssam` console entry: parses first, imports TensorFlow only to run a command.

Importing any `keras_ssam` module imports TensorFlow (the package registers its
Keras classes at import, which `keras.models.load_model` relies on). This
package lies outside it, so `keras-ssam --help`, `--version` and a refused
value answer at once; `keras_ssam.cli` runs the command.
"""

import os
import sys
import tempfile

from keras_ssam_cli.parser import VERSION as __version__
from keras_ssam_cli.parser import build_parser, parse


def quiet_tensorflow():
    """Hides TensorFlow's C++ start-up lines, unless the user chose a log level.

    `TF_CPP_MIN_LOG_LEVEL` quiets TensorFlow's own logging, but TensorFlow 2.21
    writes its start-up lines (oneDNN, CUDA drivers) through absl before that
    level applies, twice per import, and more when it looks for devices: they are
    captured while TensorFlow is imported and its devices listed, and shown only if
    that fails. `TF_CPP_MIN_LOG_LEVEL=0` shows everything.
    """
    chosen = "TF_CPP_MIN_LOG_LEVEL" in os.environ
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if chosen or "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow

            # Device start-up writes through absl too (on a machine without a GPU:
            # "failed call to cuInit"); done here, it is captured with the rest.
            tensorflow.config.list_physical_devices()
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def main(argv=None):
    """`keras-ssam`: parses and checks `argv`, then runs the command; returns 0."""
    args = parse(argv)
    quiet_tensorflow()
    from keras_ssam.cli import dispatch

    dispatch(args)
    return 0


__all__ = ["__version__", "build_parser", "main", "parse"]
