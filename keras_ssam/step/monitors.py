"""Callbacks that `SSAMModel.fit()` adds: non-finite step reports and support refreshes."""

import warnings

import keras


class NonFiniteMonitor(keras.callbacks.Callback):
    """Warns about skipped non-finite steps; stops fit() if asked to.

    With `non_finite="skip"` the counter is read once per epoch: a read per
    batch would stall asynchronous dispatch on accelerators. `"stop"` must
    stop after the batch, so it reads every batch.
    """

    def on_train_begin(self, logs=None):
        self._seen = read_int(self.model.non_finite_steps)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.model.non_finite == "stop":
            self._check(f"at batch {batch} of epoch {self._epoch}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(f"in epoch {epoch}")

    def _check(self, where):
        count = read_int(self.model.non_finite_steps)
        if count == self._seen:
            return
        new, self._seen = count - self._seen, count
        action = "stopping training" if self.model.non_finite == "stop" else "skipped"
        warnings.warn(
            f"SSAMModel: {new} step(s) with a non-finite loss or gradient {where} (or, "
            "under XLA, masks changed without `refresh_support()`); "
            f"{action} with weights, masks and optimizer state unchanged "
            f"({count} such steps so far).",
            RuntimeWarning,
            stacklevel=2,
        )
        if self.model.non_finite == "stop":
            self.model.stop_training = True


class SupportGuard(keras.callbacks.Callback):
    """Re-derives the support at each epoch and before the first step.

    `BackupAndRestore` restores masks in `on_train_begin` and a mask callback
    sets the first mask at the first batch, both after `fit()` traced the
    step; a callback may also load masks during `fit()`. A support left stale
    could leave perturbed entries out of `e` (the step would then stop with
    an error; this keeps it from getting there).
    """

    def on_train_begin(self, logs=None):
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        self.model._refresh_support()

    def on_train_batch_begin(self, batch, logs=None):
        if self._first:
            self._first = False
            self.model._refresh_support()


def read_int(variable):
    """Reads a counter on the host (a device sync)."""
    return int(keras.ops.convert_to_numpy(variable))
