"""`RhoWindow`: SAM steps only inside a window of epochs, one-pass SGD steps outside (issue 23)."""

import keras
import numpy as np
import pytest
from reference import batches_of, counted_mlp, make_data, make_params, momentum_reference

import keras_ssam
from keras_ssam import RhoScheduler, RhoWindow, SSAMModel


@pytest.mark.parametrize("window,sam_epochs", [((1, 2), {1}), ((0, 1), {0}), ((2, 9), {2})])
def test_fit_takes_sam_steps_inside_the_window_only(window, sam_epochs):
    """3 epochs x 2 steps against NumPy momentum SGD with SAM on the window's steps,
    and the forward passes counted: 2 per SAM step, 1 per other step."""
    x, y = make_data()  # 24 examples: 2 batches of 12 per epoch
    params = make_params()
    inner, counter = counted_mlp(params)
    model = SSAMModel(inner, rho=0.4)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=keras_loss())
    history = model.fit(
        x,
        y,
        batch_size=12,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=[RhoScheduler(RhoWindow(0.4, *window))],
    )
    sam_steps = {2 * e + i for e in sam_epochs for i in range(2)}
    want = momentum_reference(params, batches_of(x, y, 12) * 3, 0.4, 0.1, 0.9, sam_steps)
    for got, w in zip(model.model.get_weights(), want):
        np.testing.assert_allclose(got, w, atol=1e-5, rtol=0)
    assert int(counter.runs.numpy()) == 6 + len(sam_steps)
    assert history.history["sam_steps"] == [float(e in sam_epochs) for e in range(3)]
    assert history.history["rho"] == pytest.approx([0.4 * (e in sam_epochs) for e in range(3)])


def keras_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_schedule_values_and_config_round_trip():
    window = RhoWindow(0.3, 30, 40)
    assert [window(e, 0.3) for e in (0, 29, 30, 39, 40)] == [0.0, 0.0, 0.3, 0.3, 0.0]
    callback = RhoScheduler(window)
    rebuilt = RhoScheduler.from_config(callback.get_config())
    assert isinstance(rebuilt.schedule, RhoWindow)
    assert rebuilt.schedule.get_config() == {"rho": 0.3, "start_epoch": 30, "stop_epoch": 40}
    assert keras_ssam.RhoWindow is RhoWindow


@pytest.mark.parametrize(
    "args,error,match",
    [
        ((0.1, 3, 3), ValueError, "start_epoch=3, stop_epoch=3"),
        ((0.1, -1, 3), ValueError, "start_epoch=-1"),
        ((0.1, 0, 2.5), ValueError, "stop_epoch=2.5"),
        ((0.1, True, 3), ValueError, "start_epoch=True"),
        ((-0.1, 0, 3), ValueError, "rho"),
    ],
)
def test_bad_arguments_name_the_value(args, error, match):
    with pytest.raises(error, match=match):
        RhoWindow(*args)
