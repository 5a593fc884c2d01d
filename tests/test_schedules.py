"""`RhoScheduler` and `LinkedRhoScheduler`: configs, serialization, behaviour."""

import inspect
import math
import types

import keras
import pytest

from keras_ssam import LinkedRhoScheduler, RhoScheduler


@keras.saving.register_keras_serializable(package="keras_ssam_tests")
def halve_after_two(epoch, rho):
    return rho if epoch < 2 else rho / 2


@keras.saving.register_keras_serializable(package="keras_ssam_tests")
class StepRho:
    """A serializable `(epoch, rho)` schedule object."""

    def __init__(self, values):
        self.values = list(values)

    def __call__(self, epoch, rho):
        return self.values[min(epoch, len(self.values) - 1)]

    def get_config(self):
        return {"values": self.values}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def unregistered(epoch, rho):
    return rho


def arguments(cls):
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def epoch_rhos(scheduler, epochs=6, rho=0.3):
    """The rho at the start of each epoch, on a stand-in for the model."""
    model = types.SimpleNamespace(rho=rho)
    scheduler.set_model(model)
    seen = []
    for epoch in range(epochs):
        scheduler.on_epoch_begin(epoch)
        seen.append(model.rho)
    return seen


def step_rhos(scheduler, steps=8):
    """The rho before each step under a cosine learning rate from 0.1 over 8 steps."""
    optimizer = keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.1, 8))
    model = types.SimpleNamespace(rho=None, optimizer=optimizer)
    scheduler.set_model(model)
    scheduler.on_train_begin()
    seen = []
    for step in range(steps):
        optimizer.iterations.assign(step)
        scheduler.on_train_batch_begin(step)
        seen.append(model.rho)
    return seen


def cosine(step, total, top=0.1):
    return top * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def round_trip(callback):
    """Through Keras' own serialization, as a saved config would go."""
    config = keras.saving.serialize_keras_object(callback)
    return keras.saving.deserialize_keras_object(config)


@pytest.mark.parametrize(
    "callback",
    [
        RhoScheduler(keras.optimizers.schedules.CosineDecay(0.1, 4), verbose=1),
        LinkedRhoScheduler(0.2, rho_min=0.02, lr_max=0.1, lr_min=0.01),
    ],
    ids=["RhoScheduler", "LinkedRhoScheduler"],
)
def test_config_covers_every_argument_and_the_class_is_registered(callback):
    cls = type(callback)
    assert set(callback.get_config()) == arguments(cls)
    assert keras.saving.get_registered_name(cls) == f"keras_ssam>{cls.__name__}"
    assert keras.saving.get_registered_object(f"keras_ssam>{cls.__name__}") is cls
    clone = cls.from_config(callback.get_config())
    assert type(clone) is cls and clone is not callback


@pytest.mark.parametrize(
    "schedule, want",
    [
        (keras.optimizers.schedules.CosineDecay(0.1, 4), [cosine(e, 4) for e in range(6)]),
        (halve_after_two, [0.3, 0.3, 0.15, 0.075, 0.0375, 0.01875]),
        (StepRho([0.05, 0.1, 0.2]), [0.05, 0.1, 0.2, 0.2, 0.2, 0.2]),
    ],
    ids=["LearningRateSchedule", "registered function", "registered object"],
)
def test_rho_scheduler_round_trip_keeps_the_schedule(schedule, want):
    original = RhoScheduler(schedule, verbose=1)
    for copy in (RhoScheduler.from_config(original.get_config()), round_trip(original)):
        assert copy.verbose == 1 and copy.schedule is not None
        assert epoch_rhos(copy) == pytest.approx(want, rel=1e-6)
    assert epoch_rhos(original) == pytest.approx(want, rel=1e-6)


def test_rho_scheduler_refuses_to_serialize_code():
    for schedule in (lambda epoch, rho: 0.1, unregistered):
        scheduler = RhoScheduler(schedule)
        assert epoch_rhos(scheduler, epochs=1) == [
            pytest.approx(0.1 if schedule.__name__ == "<lambda>" else 0.3)
        ]
        with pytest.raises(ValueError, match="cannot serialize schedule=<function"):
            scheduler.get_config()
    config = RhoScheduler(halve_after_two).get_config()
    config["schedule"] = dict(config["schedule"], config="keras_ssam_tests>no_such_schedule")
    with pytest.raises(ValueError, match="could not rebuild schedule="):
        RhoScheduler.from_config(config)


def test_linked_rho_scheduler_round_trip_keeps_the_link():
    original = LinkedRhoScheduler(0.2, rho_min=0.02, lr_max=0.1, lr_min=0.01)
    # rho_t = rho_min + (rho_max - rho_min) (lr_t - lr_min) / (lr_max - lr_min), clipped.
    want = [0.02 + 0.18 * max(cosine(s, 8) - 0.01, 0.0) / 0.09 for s in range(8)]
    for copy in (LinkedRhoScheduler.from_config(original.get_config()), round_trip(original)):
        assert copy.get_config() == original.get_config()
        assert step_rhos(copy) == pytest.approx(want, rel=1e-5)
    assert step_rhos(original) == pytest.approx(want, rel=1e-5)
    # lr_max left to the first step: measured at train begin, then part of the config.
    measured = LinkedRhoScheduler(0.2)
    assert measured.get_config()["lr_max"] is None
    assert step_rhos(measured) == pytest.approx(
        [0.2 * cosine(s, 8) / 0.1 for s in range(8)], rel=1e-5
    )
    assert measured.get_config()["lr_max"] == pytest.approx(0.1)


class TestBadInput:
    def test_rho_scheduler(self):
        with pytest.raises(TypeError, match="schedule=0.1"):
            RhoScheduler(0.1)
        with pytest.raises(TypeError, match="verbose='yes'"):
            RhoScheduler(halve_after_two, verbose="yes")

    def test_linked_rho_scheduler(self):
        with pytest.raises(TypeError, match="lr_max='0.1'"):
            LinkedRhoScheduler(0.1, lr_max="0.1")
        with pytest.raises(ValueError, match="lr_min=-1"):
            LinkedRhoScheduler(0.1, lr_min=-1)
        with pytest.raises(ValueError, match="lr_min=0.2, lr_max=0.1"):
            LinkedRhoScheduler(0.1, lr_max=0.1, lr_min=0.2)
