"""`MaskCallback`: the interface every SSAM mask strategy shares."""

import math
import numbers
import time

import keras
import numpy as np
import tensorflow as tf

from keras_ssam import mask_ops

UNITS = ("epoch", "step")


def check_sparsity(sparsity):
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"`sparsity` must be a float; received sparsity={sparsity!r}.")
    if not math.isfinite(sparsity) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"`sparsity` must be in [0, 1); received sparsity={sparsity!r}.")
    return float(sparsity)


def check_positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1; received {name}={value!r}.")
    return int(value)


class MaskCallback(keras.callbacks.Callback):
    """Base class of the mask strategies: when to update, and how to log it.

    A strategy implements `compute_mask()`, returning one binary tensor per
    mask of the `SSAMModel`. The base class computes the first mask before
    the first training step, recomputes it every `update_interval` epochs or
    steps, assigns it with `SSAMModel.set_masks`, and adds to the epoch logs
    `mask_density`, `mask_changed` (entries that differ from the previous
    mask) and `mask_seconds` (time spent in updates during the epoch).

    Args:
        sparsity: Float in `[0, 1)`. Fraction of entries *not* perturbed;
            exactly `round((1 - sparsity) * N)` of the `N` trainable entries
            are perturbed. Defaults to `0.5`.
        update_interval: Integer >= 1, or `None` for a mask computed once.
            Defaults to `1`.
        update_unit: `"epoch"` or `"step"`. Defaults to `"epoch"`.
        seed: Integer seed of the strategy's randomness. Defaults to `0`.
    """

    def __init__(self, sparsity=0.5, update_interval=1, update_unit="epoch", seed=0):
        super().__init__()
        self.sparsity = check_sparsity(sparsity)
        self.update_interval = check_positive_int(
            "update_interval", update_interval, allow_none=True
        )
        if update_unit not in UNITS:
            raise ValueError(
                f"`update_unit` must be one of {UNITS}; received update_unit={update_unit!r}."
            )
        self.update_unit = update_unit
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"`seed` must be an integer; received seed={seed!r}.")
        self.seed = int(seed)
        self.updates = 0
        self._first_batch = False
        self.history = []
        self._epoch_log = {}
        self._epoch = 0
        self.index = 0

    # The one method a strategy must provide.
    def compute_mask(self):
        """Returns the new masks: a list of 0/1 tensors shaped like `model.masks`."""
        raise NotImplementedError

    @property
    def num_entries(self):
        return sum(int(np.prod(m.shape)) for m in self.model.masks)

    @property
    def k(self):
        """Number of perturbed entries."""
        return mask_ops.num_perturbed(self.sparsity, self.num_entries)

    def _check_model(self):
        from keras_ssam.ssam_model import SSAMModel

        if not isinstance(self.model, SSAMModel):
            raise TypeError(
                f"{type(self).__name__} needs a `keras_ssam.SSAMModel`; received "
                f"model of type {type(self.model).__name__}."
            )

    def update_mask(self, index=0):
        """Computes and assigns a new mask now; returns the update's log.

        `index` is the epoch (or step) of the update; strategies derive their
        randomness from `(seed, index)` so that a resumed run repeats it.
        """
        start = time.perf_counter()
        self.index = index
        old = mask_ops.flatten(self.model.masks)
        new = self.compute_mask()
        self.model.set_masks(new)
        self.model.masks_initialized.assign(1)
        return self._record(old, start)

    def _record(self, old, start):
        new = mask_ops.flatten(self.model.masks)
        log = {
            "mask_density": float(tf.reduce_mean(new)),
            "mask_changed": int(tf.reduce_sum(tf.abs(new - old))),
            "mask_seconds": time.perf_counter() - start,
        }
        self.updates += 1
        self.history.append(log)
        self._epoch_log["mask_density"] = log["mask_density"]
        self._epoch_log["mask_changed"] = (
            self._epoch_log.get("mask_changed", 0) + log["mask_changed"]
        )
        self._epoch_log["mask_seconds"] = (
            self._epoch_log.get("mask_seconds", 0.0) + log["mask_seconds"]
        )
        return log

    def _due(self, index):
        return self.update_interval is not None and index > 0 and index % self.update_interval == 0

    def _global_step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    # Keras hooks.
    def on_train_begin(self, logs=None):
        self._check_model()
        self._epoch_log = {}
        # The first mask is computed before the first step, not here: a
        # `BackupAndRestore` listed after this callback restores the masks in
        # its own `on_train_begin`, and a restored mask must not be recomputed.
        self._first_batch = True

    def on_update_due(self, index):
        """Called when an update is due at epoch or step `index`."""
        self.update_mask(index)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self.update_unit == "epoch" and self._due(epoch):
            self.on_update_due(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if self._first_batch:
            self._first_batch = False
            # Masks restored from a backup (or kept from an earlier fit()) stay.
            if int(keras.ops.convert_to_numpy(self.model.masks_initialized)) == 0:
                self.update_mask(0)
        if self.update_unit == "step":
            step = self._global_step()  # restored with the optimizer on resume
            if self._due(step):
                self.on_update_due(step)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self._epoch_log)
            logs.setdefault("mask_changed", 0)
            logs.setdefault("mask_seconds", 0.0)
            logs.setdefault("mask_density", self.model.mask_density())
        self._epoch_log = {}
