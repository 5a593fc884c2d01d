"""Training runs for the resume/determinism tests (run as a subprocess).

    python resume_run.py MODE STRATEGY OUT [BACKUP]
MODE: full (uninterrupted), raise (interrupt by an exception mid-epoch, then
resume in a fresh model), kill (os._exit mid-epoch), resume (fit again on
BACKUP). Writes OUT as .npz: every variable of the model, masks included.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

tf.config.experimental.enable_op_determinism()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ssam  # noqa: E402

EPOCHS, BATCH, CRASH_EPOCH, CRASH_BATCH = 4, 16, 2, 1
rng = np.random.default_rng(0)
X = rng.normal(size=(64, 6, 6, 2)).astype("float32")
Y = rng.integers(0, 3, 64)


class Crash(keras.callbacks.Callback):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == (CRASH_EPOCH, CRASH_BATCH):
            if self.how == "kill":
                os._exit(3)
            raise RuntimeError("interrupted")


def make():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dropout(0.2),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ]
    )
    model = keras_ssam.SSAMModel(inner, rho=0.1)
    steps = EPOCHS * len(Y) // BATCH
    model.compile(
        optimizer=keras.optimizers.SGD(
            keras.optimizers.schedules.CosineDecay(0.1, steps), momentum=0.9
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def mask_callback(strategy):
    if strategy == "fisher":
        return keras_ssam.FisherMask(X, Y, num_samples=8, sparsity=0.5)
    return keras_ssam.DynamicMask(0.5, update_unit="step", update_interval=3)


def fit(strategy, backup=None, crash=None):
    model = make()
    callbacks = [mask_callback(strategy)]
    if backup:
        callbacks.append(keras.callbacks.BackupAndRestore(backup))
    if crash:
        callbacks.append(Crash(crash))
    model.fit(X, Y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks)
    return model


def main():
    mode, strategy, out = sys.argv[1:4]
    backup = sys.argv[4] if len(sys.argv) > 4 else None
    if mode == "raise":
        try:
            fit(strategy, backup, crash="raise")
            raise SystemExit("the crash did not happen")
        except RuntimeError:
            pass
        model = fit(strategy, backup)
    elif mode == "kill":
        fit(strategy, backup, crash="kill")
        raise SystemExit("the kill did not happen")
    else:  # full, or resume after a kill
        model = fit(strategy, backup)
    np.savez(out, *[v.numpy() for v in model.variables])


if __name__ == "__main__":
    main()
