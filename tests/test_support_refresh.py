"""Masks changed behind the step's back never give a silent wrong step (issue 19, D2).

The traced step computes first-pass gradients only on the support read when
it was traced. Each way masks can change is tried after a step traced with
half the variables in the support; the next step must equal dense SAM (the
NumPy reference), or stop with an error naming `refresh_support()`.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import make_data, make_mlp, make_params, reference_sgd_step

from keras_ssam import SSAMModel

LR, RHO = 0.1, 0.3
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def half_support(params):
    """Masks of ones on the second layer only: the support is 2 of 4 variables."""
    return [np.zeros_like(params[0]), np.zeros_like(params[1])] + [
        np.ones_like(p) for p in params[2:]
    ]


def traced_on_half(params, x, y):
    """A model whose step was traced (and run once) with `half_support` masks."""
    ssam = SSAMModel(make_mlp(params), rho=RHO, norm_scope="masked")
    ssam.set_masks(half_support(params))
    ssam.compile(optimizer=keras.optimizers.SGD(LR), loss=LOSS)
    ssam.train_on_batch(x, y)
    assert len(ssam.step_plan()["support"]) == 2
    return ssam


def dense_step(ssam, x, y):
    """The reference: dense SAM (every mask one) from the model's current weights."""
    params = ssam.model.get_weights()
    ones = [np.ones_like(p) for p in params]
    new, *_ = reference_sgd_step(params, x, y, ones, RHO, LR, norm_scope="masked")
    return new


def assert_weights(ssam, want):
    for got, w in zip(ssam.model.get_weights(), want):
        np.testing.assert_allclose(got, w, atol=1e-5, rtol=0)


def test_direct_assign_stops_with_an_error_then_refresh_gives_dense_sam():
    x, y = make_data()
    ssam = traced_on_half(make_params(), x, y)
    before = ssam.model.get_weights()
    for m in ssam.masks:
        m.assign(tf.ones(m.shape))
    with pytest.raises(tf.errors.InvalidArgumentError, match="refresh_support"):
        ssam.train_on_batch(x, y)
    for got, w in zip(ssam.model.get_weights(), before):
        np.testing.assert_array_equal(got, w)  # the refused step changed nothing
    ssam.refresh_support()
    assert len(ssam.step_plan()["support"]) == 4
    want = dense_step(ssam, x, y)
    ssam.train_on_batch(x, y)
    assert_weights(ssam, want)


def test_checkpoint_read_then_refresh_gives_dense_sam(tmp_path):
    x, y = make_data()
    params = make_params()
    dense = SSAMModel(make_mlp(params), rho=RHO, norm_scope="masked")
    path = tf.train.Checkpoint(model=dense).write(str(tmp_path / "ckpt"))
    ssam = traced_on_half(params, x, y)
    tf.train.Checkpoint(model=ssam).read(path).expect_partial()
    assert ssam.mask_density() == 1.0
    with pytest.raises(tf.errors.InvalidArgumentError, match="refresh_support"):
        ssam.train_on_batch(x, y)
    ssam.refresh_support()
    want = dense_step(ssam, x, y)
    ssam.train_on_batch(x, y)
    assert_weights(ssam, want)


@pytest.mark.parametrize("how", ["load_weights", "set_weights"])
def test_keras_load_paths_refresh_the_support(tmp_path, how):
    x, y = make_data()
    params = make_params()
    dense = SSAMModel(make_mlp(params), rho=RHO, norm_scope="masked")
    path = str(tmp_path / "dense.weights.h5")
    dense.save_weights(path)
    ssam = traced_on_half(params, x, y)
    if how == "load_weights":
        ssam.load_weights(path)
    else:
        ssam.set_weights(dense.get_weights())
    assert ssam.mask_density() == 1.0
    want = dense_step(ssam, x, y)
    ssam.train_on_batch(x, y)  # no error: the support was refreshed
    assert_weights(ssam, want)


class LoadAt(keras.callbacks.Callback):
    def __init__(self, path, batch):
        super().__init__()
        self.path, self.batch = path, batch

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.batch:
            self.model.load_weights(self.path)


def test_load_weights_in_a_callback_during_fit(tmp_path):
    """Loaded at batch 1 of the only epoch: batches 1-2 are dense SAM from the file."""
    x, y = make_data()
    params = make_params(seed=4)
    dense = SSAMModel(make_mlp(params), rho=RHO, norm_scope="masked")
    path = str(tmp_path / "dense.weights.h5")
    dense.save_weights(path)
    ssam = SSAMModel(make_mlp(make_params()), rho=RHO, norm_scope="masked")
    ssam.set_masks(half_support(make_params()))
    ssam.compile(optimizer=keras.optimizers.SGD(LR), loss=LOSS)
    ssam.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[LoadAt(path, 1)])
    want = params
    ones = [np.ones_like(p) for p in params]
    for start in (8, 16):
        xb, yb = x[start : start + 8], y[start : start + 8]
        want, *_ = reference_sgd_step(want, xb, yb, ones, RHO, LR, norm_scope="masked")
    assert_weights(ssam, want)


def test_masks_changed_between_epochs_are_used(tmp_path):
    """A callback assigning masks directly at an epoch's end: the next epoch refreshes."""
    x, y = make_data()
    params = make_params()

    class Densify(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch > 0:
                return
            self.params = self.model.model.get_weights()
            for m in self.model.masks:
                m.assign(tf.ones(m.shape))

    ssam = SSAMModel(make_mlp(params), rho=RHO, norm_scope="masked")
    ssam.set_masks(half_support(params))
    ssam.compile(optimizer=keras.optimizers.SGD(LR), loss=LOSS)
    densify = Densify()
    ssam.fit(x, y, batch_size=24, epochs=2, shuffle=False, verbose=0, callbacks=[densify])
    ones = [np.ones_like(p) for p in params]
    want, *_ = reference_sgd_step(densify.params, x, y, ones, RHO, LR, norm_scope="masked")
    assert_weights(ssam, want)


def test_under_xla_a_stale_support_skips_the_step():
    """XLA compiles `Assert` away: the step is skipped (and counted), never wrong."""
    x, y = make_data()
    params = make_params()
    ssam = SSAMModel(make_mlp(params), rho=RHO, norm_scope="masked")
    ssam.set_masks(half_support(params))
    ssam.compile(optimizer=keras.optimizers.SGD(LR), loss=LOSS, jit_compile=True)
    ssam.train_on_batch(x, y)
    before = ssam.model.get_weights()
    for m in ssam.masks:
        m.assign(tf.ones(m.shape))
    ssam.train_on_batch(x, y)
    for got, w in zip(ssam.model.get_weights(), before):
        np.testing.assert_array_equal(got, w)
    assert int(ssam.non_finite_steps.numpy()) == 1
