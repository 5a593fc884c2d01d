"""`RhoScheduler`: change SSAM's rho per epoch, like `LearningRateScheduler`."""

import keras

from keras_ssam.ssam_model import check_rho


class RhoScheduler(keras.callbacks.Callback):
    """Sets `SSAMModel.rho` at the start of every epoch from a schedule.

    `rho` lives in a variable of the model, so changing it does not retrace
    the training step. The current value is in the logs as `rho`.

    Args:
        schedule: A function `(epoch, rho) -> new rho` (epoch from 0).
        verbose: Integer. 1 prints each change. Defaults to `0`.

    Example:

    ```python
    # Foret et al.-style warm-up of rho over the first 5 epochs.
    warmup = keras_ssam.RhoScheduler(lambda epoch, rho: 0.1 * min(1, (epoch + 1) / 5))
    model.fit(x, y, epochs=20, callbacks=[warmup])
    ```
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"`schedule` must be callable; received schedule={schedule!r}.")
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        rho = check_rho(self.schedule(epoch, self.model.rho))
        if self.verbose and rho != self.model.rho:
            print(f"\nEpoch {epoch + 1}: RhoScheduler setting rho to {rho}.")
        self.model.rho = rho
