"""Momentum-SAM: the ascent from a momentum buffer, one forward-backward per step (issue 22).

The NumPy reference transcribes MarlonBecker/MSAM `optimizer/msam.py`: the
buffer `v <- mu * v + d_p` (PyTorch's convention, zero at the start) and the
perturbation `p - rho * v / ||v||`, here evaluated on tensors while the
weights follow the compiled Keras optimizer on the gradient at `w + e`.
"""

import os

import keras
import numpy as np
import pytest
from reference import (
    PassCounter,
    batches_of,
    counted_mlp,
    make_data,
    make_params,
    mlp_grad,
    random_masks,
)
from reference_cnn import LOSS, B, cnn, data

from keras_ssam import GradientNormTrigger, SSAMModel

RHO, MU, LR, WD = 0.5, 0.8, 0.1, 0.01


def msam_reference(params, batches, masks, rho, mu, lr, steps, wd=0.0, epsilon=1e-7):
    """MSAM's ascent, Keras momentum SGD (0.9) with a cosine learning rate, float64."""
    w = [p.astype(np.float64) for p in params]
    v = [np.zeros_like(p) for p in w]
    velocity = [np.zeros_like(p) for p in w]
    for t, (x, y) in enumerate(batches):
        norm = np.sqrt(sum(np.sum(b**2) for b in v))  # norm_scope="all"
        e = [-rho * m * b / (norm + epsilon) for m, b in zip(masks, v)]
        _, g = mlp_grad([(p + ei).astype(np.float32) for p, ei in zip(w, e)], x, y)
        g = [a.astype(np.float64) for a in g]
        v = [mu * b + a + wd * p for b, a, p in zip(v, g, w)]
        rate = 0.5 * lr * (1 + np.cos(np.pi * min(t, steps) / steps))
        velocity = [0.9 * u - rate * (a + wd * p) for u, a, p in zip(velocity, g, w)]
        w = [p + u for p, u in zip(w, velocity)]
    return w, v


def momentum_model(params, masks=None, **kwargs):
    inner, counter = counted_mlp(params)
    model = SSAMModel(inner, rho=RHO, ascent="momentum", momentum=MU, **kwargs)
    if masks is not None:
        model.set_masks(masks)
    schedule = keras.optimizers.schedules.CosineDecay(LR, 6)
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9), loss=LOSS)
    return model, counter


@pytest.mark.parametrize("wd", [0.0, WD])
def test_six_steps_match_the_msam_reference(wd):
    x, y = make_data()  # 6 batches of 4
    params = make_params()
    masks = random_masks(params)
    model, counter = momentum_model(params, masks, coupled_weight_decay=wd)
    history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    want, buffer = msam_reference(params, batches_of(x, y, 4), masks, RHO, MU, LR, 6, wd)
    for got, w in zip(model.model.get_weights(), want):
        np.testing.assert_allclose(got, w, atol=1e-5, rtol=0)
    saved = [v.numpy() for v in model.weights if v.name.startswith("momentum_")]
    for got, b in zip(saved, buffer):
        np.testing.assert_allclose(got, b, atol=1e-5, rtol=1e-5)
    assert int(counter.runs.numpy()) == 6  # one forward (and backward) per step
    assert history.history["sam_steps"][0] == pytest.approx(5 / 6)  # not the first step


def test_the_ascent_moved_the_weights():
    """Not plain SGD: rho changes the result (the reference is sensitive to the sign too)."""
    x, y = make_data()
    params = make_params()
    masks = [np.ones_like(p) for p in params]
    batches = batches_of(x, y, 4)
    up, _ = msam_reference(params, batches, masks, RHO, MU, LR, 6)
    down, _ = msam_reference(params, batches, masks, -RHO, MU, LR, 6)
    flat, _ = msam_reference(params, batches, masks, 0.0, MU, LR, 6)
    assert min(max(np.abs(a - b).max() for a, b in zip(up, other)) for other in (down, flat)) > 1e-3


@pytest.mark.parametrize("kind", ["batchnorm_dropout", "activity"])
def test_rho_zero_is_plain_keras_training(kind):
    """The only pass writes back BatchNorm statistics and seed states and keeps add_loss."""
    x, y = data(B * 3)
    if kind == "activity":
        from test_added_losses import build

        x = x.reshape(len(x), -1)[:, :4]

        def make():
            return build("activity")
    else:

        def make():
            return cnn(dropout=True)

    plain, inner = make(), make()
    ssam = SSAMModel(inner, rho=0.0, ascent="momentum")
    for model in (plain, ssam):
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS)
        model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(plain.get_weights(), inner.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_batchnorm_statistics_are_those_of_a_plain_pass_at_w_plus_e():
    x, y = data(B * 2)
    inner = cnn()
    ssam = SSAMModel(inner, rho=RHO, ascent="momentum")
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    ssam.train_on_batch(x[:B], y[:B])  # fills the buffer (a plain SGD step)
    # One buffer per float weight of the wrapped model, in `inner.weights` order
    # (the frozen ones, here BatchNorm's statistics, stay zero).
    buffers = [v.numpy() for v in ssam.weights if v.name.startswith("momentum_")]
    by_path = dict(zip([w.path for w in inner.weights], buffers))
    norm = np.sqrt(sum(np.sum(b**2) for b in buffers))
    assert norm > 0
    twin = cnn()
    twin.set_weights(inner.get_weights())
    for v in twin.trainable_variables:
        v.assign(v.numpy() - RHO * by_path[v.path] / (norm + 1e-7))
    twin(x[B:], training=True)  # a plain pass at w + e updates its statistics
    ssam.train_on_batch(x[B:], y[B:])
    stats = {w.path: w.numpy() for w in inner.weights if "moving" in w.path}
    want = {w.path: w.numpy() for w in twin.weights if "moving" in w.path}
    assert stats.keys() == want.keys() and len(stats) == 4
    for key in stats:
        np.testing.assert_allclose(stats[key], want[key], atol=1e-5, rtol=1e-5)


def test_resume_is_bitwise(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5)).astype("float32")
    y = rng.integers(0, 3, 32).astype("int32")
    params = make_params()
    whole, _ = momentum_model(params)
    whole.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    first, _ = momentum_model(params)
    first.fit(x[:12], y[:12], batch_size=4, epochs=1, shuffle=False, verbose=0)
    path = os.path.join(tmp_path, "mid.keras")
    first.save(path)
    resumed = keras.saving.load_model(path)
    resumed.fit(x[12:], y[12:], batch_size=4, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


class TestBadArguments:
    def model(self):
        return counted_mlp(make_params())[0]

    def test_ascent(self):
        with pytest.raises(ValueError, match="ascent='momentumm'"):
            SSAMModel(self.model(), ascent="momentumm")

    @pytest.mark.parametrize("value", [1.0, -0.1])
    def test_momentum(self, value):
        with pytest.raises(ValueError, match=f"momentum={value!r}"):
            SSAMModel(self.model(), ascent="momentum", momentum=value)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"interval": 2},
            {"trigger": GradientNormTrigger(0.9, 0, 1, 10)},
            {"interval": 2, "between": "looksam"},
            {"num_batch_splits": 2},
        ],
    )
    def test_combinations_that_are_not_defined(self, kwargs):
        with pytest.raises(ValueError, match="does not combine"):
            SSAMModel(self.model(), ascent="momentum", **kwargs)


def test_pass_counter_is_exported():
    # PassCounter is shared with test_cheap_steps; this module relies on it counting.
    assert PassCounter().runs.numpy() == 0


def test_a_skipped_step_keeps_the_momentum_buffer():
    """A non-finite step changes neither the weights nor the ascent's buffer."""
    x, y = make_data()
    x_bad = x[:12].copy()
    x_bad[9, 0] = np.nan  # the third batch of 4

    def after(xs, ys):
        model, _ = momentum_model(make_params())
        model.fit(xs, ys, batch_size=4, epochs=1, shuffle=False, verbose=0)
        return model

    skipped, clean = after(x_bad, y[:12]), after(x[:8], y[:8])  # clean: the two steps before
    assert int(skipped.non_finite_steps.numpy()) == 1
    want = [b.numpy() for b in clean._momentum]
    assert any(np.abs(w).max() > 0 for w in want)
    for got, w in zip((b.numpy() for b in skipped._momentum), want):
        np.testing.assert_array_equal(got, w)
