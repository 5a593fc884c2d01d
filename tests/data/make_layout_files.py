"""Writes the saved-file fixtures of `test_saved_layout.py` (run once per layout change).

The files are what an `SSAMModel` saved with the layout of 2026-12 (issue 20):
rho, one mask per float weight, the counters, the mask record, and the seed
states. Later versions add step state; they must still load these files.

    python tests/data/make_layout_files.py
"""

import os

import keras
import numpy as np

import keras_ssam

HERE = os.path.dirname(os.path.abspath(__file__))


def inner():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, activation="relu", name="low"),
            keras.layers.Dropout(0.5, seed=1),
            keras.layers.Dense(2, name="head"),
        ]
    )


def known_values(model):
    """Weights and masks with values a test can recompute."""
    shapes = [tuple(w.shape) for w in model.weights]
    weights = [np.arange(np.prod(s), dtype="float32").reshape(s) / 10 for s in shapes]
    masks = [(np.arange(np.prod(s)) % 2).astype("float32").reshape(s) for s in shapes]
    return weights, masks


def main():
    base = inner()
    ssam = keras_ssam.SSAMModel(base, rho=0.125)
    weights, masks = known_values(base)
    base.set_weights(weights)
    ssam.set_masks(masks)
    ssam.masks_initialized.assign(1)
    ssam.non_finite_steps.assign(3)
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    ssam.save(os.path.join(HERE, "layout-2026-12.keras"))
    ssam.save_weights(os.path.join(HERE, "layout-2026-12.weights.h5"))


if __name__ == "__main__":
    main()
