"""SAM-family parity: batch splits, rho schedules, accumulation, clipping."""

import math

import keras
import numpy as np
import pytest
from reference import N, make_data, make_mlp, make_params, mlp_grad, numpy_perturbation

from keras_ssam import LinkedRhoScheduler, RhoScheduler, SSAMModel

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
ONES = [np.ones_like(p) for p in make_params()]


def sam_grad(params, x, y, rho, masks=ONES):
    """grad L(w + e) on one (sub-)batch, e from that batch's own gradient."""
    _, g = mlp_grad(params, x, y)
    e = numpy_perturbation(g, masks, rho)
    _, g2 = mlp_grad([p + ei.astype("float32") for p, ei in zip(params, e)], x, y)
    return g2


def fit(model, x, y, optimizer, batch_size, epochs=1, callbacks=()):
    model.compile(optimizer=optimizer, loss=LOSS)
    return model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=list(callbacks),
    )


@pytest.mark.parametrize("batch,splits", [(24, 2), (10, 3), (2, 3)])
def test_batch_splits_match_hand_written_sub_batches(batch, splits):
    x, y = make_data()
    x, y = x[:batch], y[:batch]
    params = make_params()
    model = SSAMModel(make_mlp(params), rho=0.3, num_batch_splits=splits)
    history = fit(model, x, y, keras.optimizers.SGD(0.1), batch_size=batch)
    # Contiguous sub-batches whose sizes differ by at most one; empty ones
    # (batch < splits) contribute nothing.
    sizes = [batch // splits + (i < batch % splits) for i in range(splits)]
    total = [np.zeros_like(p) for p in params]
    start = 0
    for size in sizes:
        if size:
            part = slice(start, start + size)
            g2 = sam_grad(params, x[part], y[part], 0.3)
            total = [t + size / batch * g for t, g in zip(total, g2)]
        start += size
    for got, p, g in zip(model.model.get_weights(), params, total):
        np.testing.assert_allclose(got, p - 0.1 * g, atol=1e-6, rtol=0)
    assert np.isfinite(history.history["loss"][0])


def test_splits_differ_from_whole_batch():
    x, y = make_data()
    params = make_params()
    whole, split = (SSAMModel(make_mlp(params), rho=0.3, num_batch_splits=k) for k in (1, 4))
    for m in (whole, split):
        fit(m, x, y, keras.optimizers.SGD(0.1), batch_size=N)
    gap = max(np.abs(a - b).max() for a, b in zip(whole.get_weights(), split.get_weights()))
    assert gap > 1e-5


def test_rho_scheduler_changes_rho_without_retracing():
    x, y = make_data()
    params = make_params()
    model = SSAMModel(make_mlp(params), rho=0.05)
    traces = []
    step = model.train_step
    model.train_step = lambda data: (traces.append(1), step(data))[1]
    rhos = [0.1, 0.4, 0.0]
    history = fit(
        model,
        x,
        y,
        keras.optimizers.SGD(0.1),
        batch_size=N,
        epochs=3,
        callbacks=[RhoScheduler(lambda epoch, rho: rhos[epoch])],
    )
    assert len(traces) == 1
    np.testing.assert_allclose(history.history["rho"], rhos, rtol=1e-6)
    expected = params
    for rho in rhos:
        g2 = sam_grad(expected, x, y, rho)
        expected = [p - 0.1 * g for p, g in zip(expected, g2)]
    for got, want in zip(model.model.get_weights(), expected):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_linked_rho_follows_the_learning_rate():
    x, y = make_data()
    model = SSAMModel(make_mlp(make_params()), rho=1.0)
    schedule = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=6)
    seen = []
    linked = LinkedRhoScheduler(rho_max=0.2, rho_min=0.02, lr_min=0.0)
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda b, logs: seen.append(model.rho)
    )
    fit(
        model,
        x,
        y,
        keras.optimizers.SGD(schedule),
        batch_size=8,
        epochs=2,
        callbacks=[linked, probe],
    )
    for step, rho in enumerate(seen):
        lr = 0.1 * 0.5 * (1 + math.cos(math.pi * step / 6))
        assert rho == pytest.approx(0.02 + 0.18 * lr / 0.1, rel=1e-5)
    assert seen[0] == pytest.approx(0.2) and seen[-1] < seen[0]


def test_gradient_accumulation_uses_each_micro_batch_perturbation():
    x, y = make_data()
    params = make_params()
    model = SSAMModel(make_mlp(params), rho=0.3)
    fit(model, x, y, keras.optimizers.SGD(0.1, gradient_accumulation_steps=3), batch_size=8)
    # Three micro-batches at the same w, each with its own ascent step; one
    # update with the mean of their perturbed gradients.
    g2s = [sam_grad(params, x[i : i + 8], y[i : i + 8], 0.3) for i in (0, 8, 16)]
    for got, p, *gs in zip(model.model.get_weights(), params, *g2s):
        np.testing.assert_allclose(got, p - 0.1 * sum(gs) / 3, atol=1e-6, rtol=0)


def test_clipping_applies_to_the_final_gradient_only():
    x, y = make_data()
    params = make_params()
    model = SSAMModel(make_mlp(params), rho=0.3)
    fit(model, x, y, keras.optimizers.SGD(0.1, global_clipnorm=0.05), batch_size=N)
    g2 = sam_grad(params, x, y, 0.3)  # e from the unclipped g
    norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in g2))
    assert norm > 0.05  # the clip is active
    for got, p, g in zip(model.model.get_weights(), params, g2):
        np.testing.assert_allclose(got, p - 0.1 * g * 0.05 / norm, atol=1e-6, rtol=0)


class TestBadInput:
    def test_num_batch_splits(self):
        with pytest.raises(ValueError, match="num_batch_splits=0"):
            SSAMModel(make_mlp(make_params()), num_batch_splits=0)

    def test_schedule_must_be_callable_and_return_valid_rho(self):
        with pytest.raises(TypeError, match="schedule="):
            RhoScheduler(0.1)
        model = SSAMModel(make_mlp(make_params()), rho=0.1)
        x, y = make_data()
        with pytest.raises(ValueError, match="rho=-1"):
            fit(model, x, y, "sgd", 8, callbacks=[RhoScheduler(lambda e, r: -1)])
        assert model.rho == 0.1

    def test_linked_bounds(self):
        with pytest.raises(ValueError, match="rho_min"):
            LinkedRhoScheduler(rho_max=0.1, rho_min=0.2)
