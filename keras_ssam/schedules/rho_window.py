"""`RhoWindow`: SAM for a window of epochs only, rho 0 (SGD steps) outside it."""

import numbers

import keras

from keras_ssam.step.arguments import check_rho


@keras.saving.register_keras_serializable(package="keras_ssam")
class RhoWindow:
    """A rho schedule for `RhoScheduler`: `rho` inside `[start_epoch, stop_epoch)`, else 0.

    With `rho == 0` a step of `SSAMModel` is one forward-backward pass
    whenever pass 1 computes every gradient (dense and entry-wise masks, or
    any mask with `interval`/`trigger`), so a window buys SAM's second pass
    only for part of training: late (`start_epoch = 0.75 * epochs`) or early
    (`stop_epoch = 0.25 * epochs`). A plain function would do the same, but
    this class can be saved with the callback (`get_config`).

    Args:
        rho: Float >= 0. The radius inside the window.
        start_epoch: Integer >= 0. The first epoch (from 0) with SAM steps.
        stop_epoch: Integer > `start_epoch`. The first epoch after the window.

    Example:

    ```python
    # SAM in the last 10 of 40 epochs, SGD steps before.
    late = keras_ssam.RhoScheduler(keras_ssam.RhoWindow(0.3, 30, 40))
    model.fit(x, y, epochs=40, callbacks=[late])
    ```
    """

    def __init__(self, rho, start_epoch, stop_epoch):
        for name, value in (("start_epoch", start_epoch), ("stop_epoch", stop_epoch)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"`{name}` must be an integer >= 0; received {name}={value!r}.")
        if stop_epoch <= start_epoch:
            raise ValueError(
                "`stop_epoch` must be greater than `start_epoch`; received "
                f"start_epoch={start_epoch!r}, stop_epoch={stop_epoch!r}."
            )
        self.rho = check_rho(rho)
        self.start_epoch = int(start_epoch)
        self.stop_epoch = int(stop_epoch)

    def __call__(self, epoch, rho=None):
        return self.rho if self.start_epoch <= epoch < self.stop_epoch else 0.0

    def get_config(self):
        return {"rho": self.rho, "start_epoch": self.start_epoch, "stop_epoch": self.stop_epoch}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"RhoWindow({args})"
