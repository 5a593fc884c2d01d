"""Steps that skip the second pass: interval, LookSAM between, gradient-norm trigger, rho 0.

Issue 21. Each behaviour is pinned against a hand-written reference (NumPy
on the MLP, raw TF ops on the BatchNorm CNN) or plain Keras training, and the
number of passes is counted at run time by a layer that increments a counter
each time it runs in training mode (graph op counts cannot see which branch
of a `tf.cond` ran).
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import (
    D,
    PassCounter,
    batches_of,
    counted_mlp,
    make_data,
    make_params,
    mlp_grad,
    momentum_reference,
    numpy_perturbation,
)
from reference_cnn import BN_MOMENTUM, LOSS, B, cnn, data, keras_params, reference_step, top_masks

import keras_ssam
from keras_ssam import GradientNormTrigger, SSAMModel


def fit_mlp(params, x, y, steps, momentum=0.9, **kwargs):
    inner, counter = counted_mlp(params)
    ssam = SSAMModel(inner, **kwargs)
    ssam.compile(optimizer=keras.optimizers.SGD(0.1, momentum=momentum), loss=LOSS)
    history = ssam.fit(x, y, batch_size=len(x) // steps, epochs=1, shuffle=False, verbose=0)
    return ssam, int(counter.runs.numpy()), history


@pytest.mark.parametrize("interval,sam_steps", [(3, {0, 3}), (2, {0, 2, 4}), (1, set(range(6)))])
def test_interval_takes_sam_steps_at_multiples_and_sgd_between(interval, sam_steps):
    x, y = make_data()  # 24 examples: 6 batches of 4
    params = make_params()
    ssam, runs, history = fit_mlp(params, x, y, 6, rho=0.4, interval=interval)
    want = momentum_reference(params, batches_of(x, y, 4), 0.4, 0.1, 0.9, sam_steps)
    for got, w in zip(ssam.model.get_weights(), want):
        np.testing.assert_allclose(got, w, atol=1e-5, rtol=0)
    assert runs == 6 + len(sam_steps)  # one forward per step, two on SAM steps
    assert history.history["sam_steps"][0] == pytest.approx(len(sam_steps) / 6)


def test_looksam_between_steps_matches_reference():
    x, y = make_data()
    params = make_params()
    ssam, runs, _ = fit_mlp(params, x, y, 6, rho=0.4, interval=3, between="looksam", alpha=0.7)
    batches = batches_of(x, y, 4)
    want = momentum_reference(params, batches, 0.4, 0.1, 0.9, {0, 3}, "looksam", 0.7)
    for got, w in zip(ssam.model.get_weights(), want):
        np.testing.assert_allclose(got, w, atol=1e-5, rtol=0)
    assert runs == 8
    # And it is not plain interval SAM: the alpha term moved the weights.
    plain = momentum_reference(params, batches, 0.4, 0.1, 0.9, {0, 3})
    assert max(np.abs(a - b).max() for a, b in zip(want, plain)) > 1e-3


def trigger_reference(norms, delta, lambda1, lambda2, total):
    """AE-SAM's decisions and estimates on a sequence of squared norms (NumPy)."""
    mean = variance = 0.0
    decisions, states = [], []
    for t, n in enumerate(norms):
        mean = delta * mean + (1 - delta) * n
        variance = delta * variance + (1 - delta) * (n - mean) ** 2
        c = min(t / total, 1.0) * lambda1 + (1 - min(t / total, 1.0)) * lambda2
        decisions.append(bool(n >= mean + c * np.sqrt(variance)))
        states.append((mean, variance))
    return decisions, states


def test_trigger_decisions_and_estimates_on_a_hand_made_sequence():
    trigger = GradientNormTrigger(0.8, -0.5, 1.0, 6)
    norms = [4.0, 1.0, 9.0, 2.0, 2.5, 16.0, 0.5, 3.0]
    want, states = trigger_reference(norms, 0.8, -0.5, 1.0, 6)
    assert True in want and False in want  # the sequence exercises both branches
    mean = variance = tf.constant(0.0)
    for t, n in enumerate(norms):
        sam, mean, variance = trigger.decide(tf.constant(n), mean, variance, tf.constant(t))
        assert bool(sam) == want[t], t
        np.testing.assert_allclose([float(mean), float(variance)], states[t], rtol=1e-6)


def test_trigger_in_the_model_decides_from_the_gradient_norm():
    """Decisions and estimates after 6 steps equal the reference run on the same gradients."""
    x, y = make_data()
    params = make_params()
    trigger = GradientNormTrigger(0.6, 0.0, 0.6, 6)
    ssam, runs, history = fit_mlp(params, x, y, 6, momentum=0.0, rho=0.4, trigger=trigger)
    # Reference: plain SGD or SAM per the decision on ||g||^2 at w.
    ref = [p.astype(np.float64) for p in params]
    mean = variance = 0.0
    decisions = []
    for t, (xb, yb) in enumerate(batches_of(x, y, 4)):
        _, g = mlp_grad([p.astype(np.float32) for p in ref], xb, yb)
        n = sum(float(np.sum(a.astype(np.float64) ** 2)) for a in g)
        mean = 0.6 * mean + 0.4 * n
        variance = 0.6 * variance + 0.4 * (n - mean) ** 2
        c = (t / 6) * 0.0 + (1 - t / 6) * 0.6
        sam = n >= mean + c * np.sqrt(variance)
        decisions.append(sam)
        if sam:
            e = numpy_perturbation(g, [np.ones_like(p) for p in ref], 0.4)
            _, g = mlp_grad([(p + ei).astype(np.float32) for p, ei in zip(ref, e)], xb, yb)
        ref = [p - 0.1 * a for p, a in zip(ref, g)]
    assert True in decisions and False in decisions
    assert runs == 6 + sum(decisions)
    for got, w in zip(ssam.model.get_weights(), ref):
        np.testing.assert_allclose(got, w, atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        [ssam.trigger_mean.numpy(), ssam.trigger_variance.numpy()], [mean, variance], rtol=1e-4
    )
    assert history.history["sam_steps"][0] == pytest.approx(sum(decisions) / 6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"interval": 3},
        {"interval": 2, "between": "looksam"},
        {"trigger": GradientNormTrigger(0.9, 0.0, 0.0, 6)},
    ],
    ids=["sam", "interval", "looksam", "trigger"],
)
def test_rho_zero_is_plain_keras_training_in_one_pass(kwargs):
    """BatchNorm and Dropout: every step equals plain `fit`, at one forward per step."""
    x, y = data(B * 3)
    plain = cnn(dropout=True)
    inner = cnn(dropout=True)
    counter = PassCounter()
    counted = keras.Model(inner.inputs, counter(inner.outputs[0]))
    ssam = SSAMModel(counted, rho=0.0, **kwargs)
    for model in (plain, ssam):
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS)
        model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(plain.get_weights(), inner.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    assert int(counter.runs.numpy()) == 6


def test_interval_with_a_structured_mask_matches_the_tape_reference():
    """BatchNorm CNN, masked norm, reused pass on SAM steps, full pass 1 on every step."""
    x, y = data(B * 4)
    inner = cnn()
    params = keras_params(inner)
    masks = top_masks(inner)
    ssam = SSAMModel(inner, rho=0.3, norm_scope="masked", interval=2)
    ssam.set_masks(masks)
    assert ssam.step_plan()["reuse"]
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    ssam.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    stats = None
    bn = {w.path: w.numpy() for w in cnn().weights if "moving" in w.path}
    for step in range(4):
        xb, yb = x[step * B : (step + 1) * B], y[step * B : (step + 1) * B]
        params, stats = reference_step(params, xb, yb, masks, 0.3 if step % 2 == 0 else 0.0, 0.1)
        for i, (mean, var) in enumerate(stats):
            for key, batch in ((f"bn{i}/moving_mean", mean), (f"bn{i}/moving_variance", var)):
                bn[key] = bn[key] * BN_MOMENTUM + batch * (1 - BN_MOMENTUM)
    for got, w in zip(keras_params(inner), params):
        np.testing.assert_allclose(got, w, atol=1e-5, rtol=0)
    moved = {w.path: w.numpy() for w in inner.weights if "moving" in w.path}
    for key, value in bn.items():
        np.testing.assert_allclose(moved[key], value, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs",
    [{"interval": 3}, {"interval": 3, "between": "looksam"}],
    ids=["interval", "looksam"],
)
def test_resume_mid_interval_is_bitwise(tmp_path, kwargs):
    """4 steps, save, load, 5 more: the same weights as 9 steps in one go."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(36, D)).astype("float32")
    y = rng.integers(0, 3, 36).astype("int32")
    params = make_params()

    def fresh():
        inner, _ = counted_mlp(params)
        model = SSAMModel(inner, rho=0.4, **kwargs)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS)
        return model

    whole = fresh()
    whole.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    first = fresh()
    first.fit(x[:16], y[:16], batch_size=4, epochs=1, shuffle=False, verbose=0)
    path = os.path.join(tmp_path, "mid.keras")
    first.save(path)
    resumed = keras.saving.load_model(path)
    assert int(resumed.optimizer.iterations.numpy()) == 4  # mid-interval (3 divides 3, 6)
    resumed.fit(x[16:], y[16:], batch_size=4, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_config_round_trip_and_state_only_when_on():
    trigger = GradientNormTrigger(0.9, -1.0, 1.0, 100)
    model = SSAMModel(
        counted_mlp(make_params())[0], interval=1, trigger=trigger, between="looksam", alpha=0.3
    )
    clone = SSAMModel.from_config(model.get_config())
    assert clone.trigger.get_config() == trigger.get_config()
    assert (clone.interval, clone.between, clone.alpha) == (1, "looksam", 0.3)
    plain = SSAMModel(counted_mlp(make_params())[0])
    extra = len(model.weights) - len(plain.weights)
    assert extra == len(plain.masks) + 2  # one LookSAM buffer per weight, mean and variance


def test_looksam_alpha_default_is_the_measured_one_everywhere():
    # docs/EVIDENCE.md: the paper's 0.7 collapsed training in the evidence
    # regime, 0.1 kept 91 % of SAM's gain; SSAMModel and the recipes (the CLI's
    # and the benchmarks' builder) must agree on it.
    from keras_ssam.experiments import recipes
    from keras_ssam_cli import parser

    direct = SSAMModel(counted_mlp(make_params())[0], interval=5, between="looksam")
    built = recipes.build("sam", counted_mlp(make_params())[0], 0.1, interval=5, between="looksam")
    cli = parser.build_parser().parse_args(["train"])
    assert direct.alpha == built.model.alpha == cli.alpha == 0.1


class TestBadArguments:
    def model(self):
        return counted_mlp(make_params())[0]

    @pytest.mark.parametrize("value", [0, -1, 2.5, True])
    def test_interval(self, value):
        with pytest.raises(ValueError, match=f"interval={value!r}"):
            SSAMModel(self.model(), interval=value)

    def test_between(self):
        with pytest.raises(ValueError, match="between='look'"):
            SSAMModel(self.model(), interval=2, between="look")

    def test_alpha(self):
        with pytest.raises(ValueError, match="alpha=-0.1"):
            SSAMModel(self.model(), interval=2, between="looksam", alpha=-0.1)

    def test_looksam_needs_steps_between(self):
        with pytest.raises(ValueError, match="interval=1 and trigger=None"):
            SSAMModel(self.model(), between="looksam")

    def test_interval_and_trigger_together(self):
        with pytest.raises(ValueError, match="interval=2 and trigger="):
            SSAMModel(self.model(), interval=2, trigger=GradientNormTrigger(0.9, 0, 1, 10))

    def test_trigger_type(self):
        with pytest.raises(TypeError, match="trigger='ae-sam'"):
            SSAMModel(self.model(), trigger="ae-sam")

    @pytest.mark.parametrize(
        "args,match",
        [
            ((1.0, 0, 1, 10), "delta=1.0"),
            ((0.9, float("nan"), 1, 10), "lambda1=nan"),
            ((0.9, 0, 1, 0), "total_steps=0"),
            ((0.9, 0, "1", 10), "lambda2='1'"),
        ],
    )
    def test_trigger_arguments(self, args, match):
        with pytest.raises((ValueError, TypeError), match=match):
            GradientNormTrigger(*args)


def test_public_name():
    assert keras_ssam.GradientNormTrigger is GradientNormTrigger


def test_trigger_estimates_skip_a_non_finite_step():
    x, y = make_data()
    x_bad = x[:8].copy()
    x_bad[5, 0] = np.nan  # the second batch of 4
    params = make_params()
    models = []
    for xs, ys in ((x_bad, y[:8]), (x[:4], y[:4])):
        trigger = GradientNormTrigger(0.6, 0.0, 0.6, 6)
        model, _, _ = fit_mlp(params, xs, ys, len(xs) // 4, momentum=0.0, rho=0.4, trigger=trigger)
        models.append(model)
    skipped, one_step = models
    assert int(skipped.non_finite_steps.numpy()) == 1
    for name in ("trigger_mean", "trigger_variance"):
        assert getattr(skipped, name).numpy() == getattr(one_step, name).numpy() > 0
