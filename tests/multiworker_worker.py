"""One worker of a 2-worker MultiWorkerMirroredStrategy SSAM-F run (see test).

Without TF_CONFIG it runs the same training in a single process (no strategy).

    multiworker_worker.py OUT [EPOCHS [BACKUP_DIR [KILL_AT_EPOCH]]]

With BACKUP_DIR, training runs under `keras.callbacks.BackupAndRestore` with
one backup folder per worker (BACKUP_DIR/worker-INDEX); with KILL_AT_EPOCH,
worker 1 SIGKILLs itself at the second batch of that (0-based) epoch.
"""

import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

# Without TF_CONFIG: the same run in one process, the reference for the test.
single = "TF_CONFIG" not in os.environ
strategy = tf.distribute.get_strategy() if single else tf.distribute.MultiWorkerMirroredStrategy()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ssam  # noqa: E402

out = sys.argv[1]
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
backup = sys.argv[3] if len(sys.argv) > 3 else None
kill_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
task = 0 if single else json.loads(os.environ["TF_CONFIG"])["task"]["index"]
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 5)).astype("float32")
y = rng.integers(0, 3, 64).astype("int64")
with strategy.scope():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(7, activation="relu"), keras.layers.Dense(3)]
    )
    model = keras_ssam.SSAMModel(inner, rho=0.2)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
fisher = keras_ssam.FisherMask(x, y, num_samples=16, sparsity=0.6)
callbacks = [fisher]
if backup:
    callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(backup, f"worker-{task}")))


class Probe(keras.callbacks.Callback):
    """Records the epochs this process runs; worker 1 may kill itself."""

    epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.epochs.append(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if task == 1 and self.epoch == kill_at and batch == 1:
            print("KILLED", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


callbacks.append(Probe())
model.fit(data, epochs=epochs, verbose=0, callbacks=callbacks)
np.savez(os.path.join(out, f"worker{task}.npz"), *[v.numpy() for v in model.variables])
print("EPOCHS", *Probe.epochs)
print("DONE", task, fisher.updates)
