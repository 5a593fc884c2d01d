"""`LinkedRhoScheduler`: rho follows the learning rate (GSAM, Zhuang et al. 2022)."""

import math
import numbers

import keras

from keras_ssam.step.arguments import check_rho


@keras.saving.register_keras_serializable(package="keras_ssam")
class LinkedRhoScheduler(keras.callbacks.Callback):
    """Ties rho to the current learning rate before every training step.

    `rho_t = rho_min + (rho_max - rho_min) * (lr_t - lr_min) / (lr_max - lr_min)`
    as in GSAM (Zhuang et al. 2022, Sec. 5.1), with `lr_t` read from the
    compiled optimizer (a learning-rate schedule is evaluated at the current
    iteration). `rho` is a model variable: no retracing.

    Args:
        rho_max: Float. rho at `lr_max`.
        rho_min: Float. rho at `lr_min`. Defaults to `0.0`.
        lr_max: Float. Defaults to the learning rate at the first step
            (measured once, at the first `fit`; from then on `lr_max` and
            `get_config()` hold the measured value).
        lr_min: Float. Defaults to `0.0`.

    `get_config()` returns every argument; `from_config` rebuilds the
    callback.

    Example:

    ```python
    lr = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=10_000)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=...)
    model.fit(x, y, callbacks=[keras_ssam.LinkedRhoScheduler(0.1, 0.01)])
    ```

    Reference:
        - [Zhuang et al., 2022](https://arxiv.org/abs/2203.08065)
    """

    def __init__(self, rho_max, rho_min=0.0, lr_max=None, lr_min=0.0):
        super().__init__()
        self.rho_max = check_rho(rho_max)
        self.rho_min = check_rho(rho_min)
        if self.rho_min > self.rho_max:
            raise ValueError(
                f"`rho_min` must be <= `rho_max`; received rho_min={rho_min!r}, "
                f"rho_max={rho_max!r}."
            )
        for name, value in (("lr_max", lr_max), ("lr_min", lr_min)):
            if value is None and name == "lr_max":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"`{name}` must be a float; received {name}={value!r}.")
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"`{name}` must be a finite number >= 0; received {name}={value!r}."
                )
        if lr_max is not None and lr_max < lr_min:
            raise ValueError(
                f"`lr_min` must be <= `lr_max`; received lr_min={lr_min!r}, lr_max={lr_max!r}."
            )
        self.lr_max = None if lr_max is None else float(lr_max)
        self.lr_min = float(lr_min)

    def current_lr(self):
        optimizer = self.model.optimizer
        lr = optimizer.learning_rate
        if callable(lr):
            lr = lr(optimizer.iterations)
        return float(keras.ops.convert_to_numpy(lr))

    def rho_for(self, lr):
        if self.lr_max is None or self.lr_max == self.lr_min:
            return self.rho_max
        frac = (lr - self.lr_min) / (self.lr_max - self.lr_min)
        return self.rho_min + (self.rho_max - self.rho_min) * min(max(frac, 0.0), 1.0)

    def on_train_begin(self, logs=None):
        if self.lr_max is None:
            self.lr_max = self.current_lr()

    def on_train_batch_begin(self, batch, logs=None):
        self.model.rho = self.rho_for(self.current_lr())

    def get_config(self):
        return {
            "rho_max": self.rho_max,
            "rho_min": self.rho_min,
            "lr_max": self.lr_max,
            "lr_min": self.lr_min,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
