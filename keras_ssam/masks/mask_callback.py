"""`MaskCallback`: the interface every SSAM mask strategy shares."""

import math
import numbers
import time

import keras
import numpy as np
import tensorflow as tf

from keras_ssam.masks import mask_ops

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
    mask of the `SSAMModel` (the masks of the currently trainable variables,
    `model.masks`). The base class computes the first mask before the first
    training step, recomputes it every `update_interval` epochs or steps,
    assigns it with `SSAMModel.set_masks`, and adds to the epoch logs
    `mask_density`, `mask_changed` (entries that differ from the previous
    mask) and `mask_seconds` (time spent in updates during the epoch).

    When it runs: when the first epoch of `fit()` begins (after every
    callback's `on_train_begin`, so after a `BackupAndRestore` restore) a new
    mask is computed unless the model holds valid masks for its current
    trainable set (restored, or kept from an earlier `fit()`); updates due
    at an epoch run in `on_epoch_begin`, before the epoch's first batch is
    read. With `update_unit="step"` the update index is the training step:
    `optimizer.iterations` read once per epoch (when it begins) plus Keras'
    batch index, with no host synchronization in between. Updates are due at the steps that are
    multiples of `update_interval`; with `steps_per_execution > 1` Keras
    runs callbacks only between executions, so an update due inside an
    execution runs at the first execution boundary at or after it (one
    update even if several were due), with the boundary's step as index.

    Args:
        sparsity: Float in `[0, 1)`. Fraction of entries *not* perturbed;
            exactly `round((1 - sparsity) * N)` (halves rounded up) of the
            `N` trainable entries are perturbed. Defaults to `0.5`.
        update_interval: Integer >= 1, or `None` for a mask computed once.
            Defaults to `1`.
        update_unit: `"epoch"` or `"step"`. Defaults to `"epoch"`.
        seed: Integer seed of the strategy's randomness; every random draw
            is keyed by `(seed, index)` of the update, so a resumed run
            repeats the uninterrupted one. Defaults to `0`.
    """

    # Whether an update is also due at index 0 (SSAM-D updates at epoch 0).
    _update_at_zero = False

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
        self.history = []
        self.index = 0
        self._first_epoch = False
        self._epoch_log = {}
        self._epoch = 0
        self._epoch_start_step = None  # step of batch 0 of this epoch
        self._last_boundary = None  # step of the previous execution boundary

    # The one method a strategy must provide.
    def compute_mask(self):
        """Returns the new masks: a list of 0/1 tensors shaped like `model.masks`."""
        raise NotImplementedError

    @property
    def num_entries(self):
        """Number of entries of the currently trainable variables."""
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

    def _masks_valid(self):
        valid = getattr(self.model, "masks_valid", None)
        if valid is not None:
            return bool(valid())
        return int(keras.ops.convert_to_numpy(self.model.masks_initialized)) != 0

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
        self.history.append(dict(log, index=self.index))
        self._epoch_log["mask_density"] = log["mask_density"]
        self._epoch_log["mask_changed"] = (
            self._epoch_log.get("mask_changed", 0) + log["mask_changed"]
        )
        self._epoch_log["mask_seconds"] = (
            self._epoch_log.get("mask_seconds", 0.0) + log["mask_seconds"]
        )
        return log

    def _due(self, index):
        if self.update_interval is None or index % self.update_interval:
            return False
        return index > 0 or self._update_at_zero

    def _due_in(self, after, upto):
        """The largest due index in `(after, upto]`, or `None`."""
        if self.update_interval is None or upto <= after:
            return None
        last = upto - upto % self.update_interval
        if last <= after or not self._due(last):
            return None
        return last

    def _last_execution_length(self):
        """Steps of the last execution of an epoch, when `fit()` knows them."""
        steps = (self.params or {}).get("steps")
        per_execution = int(getattr(self.model, "steps_per_execution", 1) or 1)
        if not steps:
            return None
        return (int(steps) - 1) % per_execution + 1

    # Keras hooks.
    def on_train_begin(self, logs=None):
        self._check_model()
        self._epoch_log = {}
        # The first mask is computed when the first epoch begins, not here: a
        # `BackupAndRestore` listed after this callback restores the masks in
        # its own `on_train_begin`, and a restored mask must not be recomputed.
        self._first_epoch = True
        self._epoch_start_step = None
        self._last_boundary = None

    def on_update_due(self, index):
        """Called when an update is due at epoch or step `index`."""
        self.update_mask(index)

    def on_epoch_begin(self, epoch, logs=None):
        # Before the epoch's training iterator exists: a strategy that reads
        # the training stream (FisherMask) does not interleave with it.
        self._epoch = epoch
        step = None
        if self.update_unit == "step":
            step = self._read_epoch_start()
        if self._first_epoch:
            self._first_epoch = False
            # Masks restored from a backup (or kept from an earlier fit()) stay,
            # unless the trainable set changed since they were set.
            if not self._masks_valid():
                self.update_mask(epoch if step is None else step)
        if self.update_unit == "epoch" and self._due(epoch):
            self.on_update_due(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if self.update_unit != "step":
            return
        step = self._epoch_start_step + batch  # no host sync
        due = self._due_in(self._last_boundary, step)
        self._last_boundary = step
        if due is not None:
            self.on_update_due(step)

    def _read_epoch_start(self):
        """The step of the epoch's batch 0: one read of `iterations` per epoch."""
        # Restored with the optimizer on resume; the only host sync.
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self._epoch_start_step = step
        # The previous execution boundary (the start of the previous epoch's
        # last execution), by arithmetic, so that a resumed run, whose
        # callback has no memory of it, makes the same decisions.
        last = self._last_execution_length()
        if last is not None:
            self._last_boundary = step - last
        elif self._last_boundary is None:
            self._last_boundary = step - 1
        return step

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self._epoch_log)
            logs.setdefault("mask_changed", 0)
            logs.setdefault("mask_seconds", 0.0)
            logs.setdefault("mask_density", self.model.mask_density())
        self._epoch_log = {}

    # Serialization.
    def get_config(self):
        """Every `__init__` argument, so that `from_config` rebuilds the callback."""
        return {
            "sparsity": self.sparsity,
            "update_interval": self.update_interval,
            "update_unit": self.update_unit,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
