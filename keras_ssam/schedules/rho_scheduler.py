"""`RhoScheduler`: change SSAM's rho per epoch, like `LearningRateScheduler`."""

import inspect
import numbers

import keras

from keras_ssam.step.arguments import check_rho


def _is_registered_function(fn):
    name = keras.saving.get_registered_name(fn)
    return keras.saving.get_registered_object(name) is fn


def serialize_schedule(schedule, owner="RhoScheduler"):
    """The Keras serialization of a schedule, or a `ValueError` saying why not.

    Serializable: a `keras.optimizers.schedules.LearningRateSchedule` (or any
    object with `get_config` and `from_config`, registered with
    `keras.saving.register_keras_serializable` if it is a custom class) and
    functions registered with `keras.saving.register_keras_serializable`.
    Lambdas and other unregistered functions are not: their code cannot be
    stored safely.
    """
    if inspect.isfunction(schedule) or inspect.ismethod(schedule) or inspect.isbuiltin(schedule):
        serializable = _is_registered_function(schedule)
    else:
        serializable = all(
            callable(getattr(schedule, name, None)) for name in ("get_config", "from_config")
        )
    if not serializable:
        raise ValueError(
            f"{owner}.get_config() cannot serialize schedule={schedule!r}: pass a "
            "`keras.optimizers.schedules.LearningRateSchedule`, an object with `get_config` "
            "and `from_config` (its class registered with "
            "`@keras.saving.register_keras_serializable()`), or a function registered with "
            "`@keras.saving.register_keras_serializable()`."
        )
    return keras.saving.serialize_keras_object(schedule)


@keras.saving.register_keras_serializable(package="keras_ssam")
class RhoScheduler(keras.callbacks.Callback):
    """Sets `SSAMModel.rho` at the start of every epoch from a schedule.

    `rho` lives in a variable of the model, so changing it does not retrace
    the training step. The current value is in the logs as `rho`.

    Serialization: `get_config()` stores the schedule with
    `keras.saving.serialize_keras_object`, so it works for a
    `LearningRateSchedule`, for an object with `get_config` and
    `from_config` whose class is registered with
    `@keras.saving.register_keras_serializable()`, and for a function
    registered the same way; for a lambda or an unregistered
    function it raises a `ValueError` (Keras cannot store code safely).
    `from_config` rebuilds the schedule with
    `keras.saving.deserialize_keras_object`.

    Args:
        schedule: A function `(epoch, rho) -> new rho` (epoch from 0), or a
            `keras.optimizers.schedules.LearningRateSchedule` evaluated at
            the epoch (`rho = schedule(epoch)`, e.g.
            `CosineDecay(0.1, decay_steps=epochs)`).
        verbose: Integer. 1 prints each change. Defaults to `0`.

    Example:

    ```python
    # Foret et al.-style warm-up of rho over the first 5 epochs.
    warmup = keras_ssam.RhoScheduler(lambda epoch, rho: 0.1 * min(1, (epoch + 1) / 5))
    model.fit(x, y, epochs=20, callbacks=[warmup])
    # A serializable schedule: rho decays with a cosine over 20 epochs.
    cosine = keras_ssam.RhoScheduler(keras.optimizers.schedules.CosineDecay(0.1, 20))
    ```
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"`schedule` must be callable; received schedule={schedule!r}.")
        if isinstance(verbose, bool) or not isinstance(verbose, numbers.Integral):
            raise TypeError(f"`verbose` must be an integer; received verbose={verbose!r}.")
        self.schedule = schedule
        self.verbose = verbose

    def rho_at(self, epoch, rho):
        """The rho the schedule gives for `epoch` (from 0) when rho is `rho`."""
        if isinstance(self.schedule, keras.optimizers.schedules.LearningRateSchedule):
            value = self.schedule(epoch)
        else:
            value = self.schedule(epoch, rho)
        if not isinstance(value, numbers.Real):
            value = float(keras.ops.convert_to_numpy(value))
        return check_rho(value)

    def on_epoch_begin(self, epoch, logs=None):
        rho = self.rho_at(epoch, self.model.rho)
        if self.verbose and rho != self.model.rho:
            print(f"\nEpoch {epoch + 1}: RhoScheduler setting rho to {rho}.")
        self.model.rho = rho

    def get_config(self):
        return {"schedule": serialize_schedule(self.schedule), "verbose": self.verbose}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        try:
            config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"RhoScheduler.from_config could not rebuild schedule={config['schedule']!r} "
                "(register the schedule's function or class with "
                f"`@keras.saving.register_keras_serializable()` before loading): {err}"
            ) from err
        return cls(**config)
