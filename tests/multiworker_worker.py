"""One worker of a 2-worker MultiWorkerMirroredStrategy SSAM-F run (see test)."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ssam  # noqa: E402

out = sys.argv[1]
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
model.fit(data, epochs=3, verbose=0, callbacks=[fisher])
task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
np.savez(os.path.join(out, f"worker{task}.npz"), *[v.numpy() for v in model.variables])
print("DONE", task, fisher.updates)
