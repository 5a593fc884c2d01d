"""Runs `keras-ssam train` on digits, optionally crashing mid-epoch (for test_cli)."""

import importlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402

from keras_ssam import cli  # noqa: E402

# The module, not `cli.train` (the package re-exports the function under that name).
train_command = importlib.import_module("keras_ssam.cli.train")

out, checkpoint, crash = sys.argv[1], sys.argv[2], sys.argv[3] == "crash"
add_callbacks = train_command.epoch_callbacks


class Crash(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if crash and (self.epoch, batch) == (2, 3):
            os._exit(3)  # as abrupt as a kill


# `train` looks the name up in its own module (keras_ssam/cli/train.py).
train_command.epoch_callbacks = lambda path: add_callbacks(path) + [Crash()]
argv = [
    "train",
    "--dataset",
    "digits",
    "--optimizer",
    sys.argv[4],
    "--epochs",
    "4",
    "--deterministic",
    "--verbose",
    "0",
    "--out",
    out,
]
if checkpoint != "-":
    argv += ["--checkpoint-dir", checkpoint]
cli.run(argv)
