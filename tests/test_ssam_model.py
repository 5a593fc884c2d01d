"""SSAMModel as a Keras model: BN, mixed precision, saving, export, bad input."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from reference import C, D, H, N, make_data, make_mlp, make_params, random_masks, reference_sgd_step

from keras_ssam import SSAMModel

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def bn_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((D,)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(momentum=0.5),
            keras.layers.ReLU(),
            keras.layers.Dense(C),
        ]
    )


def test_batchnorm_statistics_come_from_the_unperturbed_pass_only():
    x, y = make_data()
    plain, inner = bn_model(), bn_model()
    ssam = SSAMModel(inner, rho=0.5)
    for model in (plain, ssam):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
        model.fit(x, y, batch_size=N, epochs=1, verbose=0)
    bn_plain, bn_ssam = plain.layers[1], inner.layers[1]
    before = bn_model().layers[1]
    # The statistics moved (momentum 0.5), and moved exactly once.
    assert np.abs(bn_plain.moving_mean.numpy() - before.moving_mean.numpy()).max() > 1e-3
    np.testing.assert_array_equal(bn_ssam.moving_mean.numpy(), bn_plain.moving_mean.numpy())
    np.testing.assert_array_equal(bn_ssam.moving_variance.numpy(), bn_plain.moving_variance.numpy())
    # ...while the weights did get the SAM update, not the plain one.
    assert np.abs(inner.layers[0].kernel.numpy() - plain.layers[0].kernel.numpy()).max() > 1e-5


def test_mixed_precision_step_matches_float32_reference():
    x, y = make_data()
    params = make_params()
    masks = random_masks(params)
    keras.config.set_dtype_policy("mixed_float16")
    # e is scale-invariant except through epsilon: a large epsilon makes a
    # 2**15-scaled gradient give a visibly different (longer) e.
    model = SSAMModel(make_mlp(params), rho=0.3, norm_scope="masked", epsilon=0.5)
    model.set_masks(masks)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(x, y, batch_size=N, epochs=1, verbose=0)
    expected, _, loss, loss2 = reference_sgd_step(
        params, x, y, masks, rho=0.3, lr=0.1, norm_scope="masked", epsilon=0.5
    )
    for got, want in zip(model.model.get_weights(), expected):
        np.testing.assert_allclose(got, want, atol=2e-3, rtol=0)
    # The ascent used unscaled gradients: with a scaled one, e would be about
    # rho * g / ||g||, and the sharpness several times larger.
    np.testing.assert_allclose(history.history["sharpness"][0], loss2 - loss, rtol=0.05, atol=2e-3)


def test_mixed_precision_non_finite_first_pass_skips_step():
    x, y = make_data()
    params = make_params()
    keras.config.set_dtype_policy("mixed_float16")
    model = SSAMModel(make_mlp(params), rho=0.1)
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.1, momentum=0.9), initial_scale=2.0**40
    )
    model.compile(optimizer=optimizer, loss=LOSS)
    model.fit(x, y, batch_size=N, epochs=1, verbose=0)
    for got, want in zip(model.model.get_weights(), params):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_equal(float(optimizer.dynamic_scale.numpy()), 2.0**39)


def test_non_finite_first_pass_skips_step_for_plain_optimizer():
    x, y = make_data()
    x[3, 0] = np.nan
    params = make_params()
    model = SSAMModel(make_mlp(params), rho=0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS)
    model.fit(x, y, batch_size=N, epochs=1, verbose=0)
    for got, want in zip(model.model.get_weights(), params):
        np.testing.assert_array_equal(got, want)
    for m in model.masks:
        np.testing.assert_array_equal(m.numpy(), 1.0)


def _trained_model(tmp_path):
    x, y = make_data()
    params = make_params()
    model = SSAMModel(
        make_mlp(params),
        rho=0.2,
        norm_scope="masked",
        adaptive=True,
        eta=0.02,
        perturbation="local",
        epsilon=1e-10,
        name="my_ssam",
    )
    model.set_masks(random_masks(params))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model, x, y


def test_save_and_load_keras_file_round_trips_masks_and_training(tmp_path):
    model, x, y = _trained_model(tmp_path)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, SSAMModel)
    for attr in ("rho", "norm_scope", "adaptive", "eta", "perturbation", "epsilon", "name"):
        assert getattr(loaded, attr) == getattr(model, attr), attr
    for a, b in zip(model.masks, loaded.masks):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert 0.3 < loaded.mask_density() < 0.7
    # Continuing to train gives the same weights: optimizer slots survived.
    for m in (model, loaded):
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_weights_file_and_model_checkpoint_carry_masks(tmp_path):
    model, x, y = _trained_model(tmp_path)
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    at_save = [w.copy() for w in model.get_weights()]
    fresh = SSAMModel(make_mlp(make_params(9)))
    fresh.load_weights(path)
    ckpt = str(tmp_path / "best.keras")
    model.fit(x, y, epochs=1, verbose=0, callbacks=[keras.callbacks.ModelCheckpoint(ckpt)])
    from_callback = keras.models.load_model(ckpt)
    # Each copy holds the state of its own moment: the weights file that of the
    # save, the checkpoint that after the further epoch (which moved the weights).
    assert max(np.abs(a - b).max() for a, b in zip(at_save, model.get_weights())) > 1e-4
    for other, weights in ((fresh, at_save), (from_callback, model.get_weights())):
        for a, b in zip(model.masks, other.masks):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        assert other.rho == model.rho
        for a, b in zip(weights, other.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_inputs_outputs_constructor_builds_a_functional_inner_model():
    inputs = keras.Input((D,))
    outputs = keras.layers.Dense(C)(keras.layers.Dense(H, activation="relu")(inputs))
    model = SSAMModel(inputs=inputs, outputs=outputs, rho=0.3)
    params = make_params()
    model.model.set_weights(params)
    x, y = make_data()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    model.fit(x, y, batch_size=N, epochs=1, verbose=0)
    expected, *_ = reference_sgd_step(
        params, x, y, [np.ones_like(p) for p in params], rho=0.3, lr=0.1
    )
    for got, want in zip(model.model.get_weights(), expected):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(7, activation="relu")
        self.bn = keras.layers.BatchNormalization()
        self.out = keras.layers.Dense(C)

    def call(self, x, training=None):
        return self.out(self.bn(self.hidden(x), training=training))


def _build(kind, seed):
    keras.utils.set_random_seed(seed)
    if kind == "subclassed":
        model = Subclassed()
        model(np.zeros((1, D), "float32"))
        return model
    if kind == "functional":
        inputs = keras.Input((D,))
        return keras.Model(inputs, keras.layers.Dense(C)(inputs))
    if kind == "sequential":
        return bn_model(seed)
    return keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=C
    )


@pytest.mark.parametrize(
    "kind",
    # A keras.applications ResNet takes half a minute on 2 cores.
    [
        "functional",
        "sequential",
        "subclassed",
        pytest.param("applications", marks=pytest.mark.slow),
    ],
)
def test_wraps_every_model_kind_zero_mask_equals_plain(kind):
    rng = np.random.default_rng(0)
    shape = (16, 32, 32, 3) if kind == "applications" else (16, D)
    x = rng.normal(size=shape).astype("float32")
    y = rng.integers(0, C, size=16)
    plain, inner = _build(kind, 0), _build(kind, 0)
    ssam = SSAMModel(inner, rho=0.5)
    ssam.set_masks([np.zeros(m.shape) for m in ssam.masks])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=kind != "applications")
    for model in (plain, ssam):
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=loss)
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    # A deep BN network accumulates float32 noise from differently fused
    # graphs.
    tol = 1e-4 if kind == "applications" else 1e-6
    for a, b in zip(plain.get_weights(), inner.get_weights()):
        np.testing.assert_allclose(a, b, atol=tol, rtol=tol)
    # A dense mask with the same rho moves the weights elsewhere, by far more than
    # float noise does. Measured with e forced to 0 (plain SGD), that noise is 0 for the
    # small models but grows to 3e-2 in MobileNetV2 in one step; the dense step moves
    # them by 5e-3 to 2e-2 and MobileNetV2 by 4.6.
    ssam.set_masks([np.ones(m.shape) for m in ssam.masks])
    plain.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0)
    ssam.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0)
    moved = [np.abs(a - b).max() for a, b in zip(plain.get_weights(), inner.get_weights())]
    assert max(moved) > (0.5 if kind == "applications" else 1e-3), max(moved)


def test_export_serves_inner_model_without_keras_ssam(tmp_path):
    x, _ = make_data()
    inner = bn_model()
    model = SSAMModel(inner, rho=0.1)
    model.set_masks([np.zeros(m.shape) for m in model.masks])
    export_dir = str(tmp_path / "serving" / "1")
    model.export(export_dir, verbose=False)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({export_dir!r})
        fn = loaded.signatures["serving_default"]
        out = list(fn(tf.constant(np.load({str(tmp_path / "x.npy")!r}))).values())[0]
        np.save({str(tmp_path / "y.npy")!r}, out.numpy())
        names = [v.name for v in loaded.variables]
        assert not any("mask" in n or "rho" in n for n in names), names
        assert not any(m.startswith("keras_ssam") for m in sys.modules)
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path)
    served = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(served, model.predict(x, verbose=0), atol=1e-5)


class TestBadInput:
    def _model(self):
        return make_mlp(make_params())

    @pytest.mark.parametrize(
        "rho,error",
        [
            (-0.1, ValueError),
            (float("nan"), ValueError),
            (float("inf"), ValueError),
            ("0.1", TypeError),
            (True, TypeError),
        ],
    )
    def test_bad_rho(self, rho, error):
        with pytest.raises(error, match="rho="):
            SSAMModel(self._model(), rho=rho)

    @pytest.mark.parametrize("arg", ["norm_scope", "perturbation"])
    def test_bad_choices(self, arg):
        with pytest.raises(ValueError, match=f"{arg}='bogus'"):
            SSAMModel(self._model(), **{arg: "bogus"})

    def test_non_model(self):
        with pytest.raises(TypeError, match="model="):
            SSAMModel(keras.layers.Dense(3))

    def test_no_trainable_variables(self):
        model = self._model()
        model.trainable = False
        with pytest.raises(ValueError, match="no trainable variables"):
            SSAMModel(model)

    @pytest.mark.parametrize(
        "arg,value",
        [
            ("eta", -1.0),
            ("epsilon", float("nan")),
            ("adaptive", "yes"),
            ("coupled_weight_decay", -1e-4),
            ("coupled_weight_decay", "5e-4"),
            ("reuse_activations", 1),
        ],
    )
    def test_bad_scalars(self, arg, value):
        with pytest.raises((ValueError, TypeError), match=f"{arg}="):
            SSAMModel(self._model(), **{arg: value})

    def test_rho_setter_rejects_and_keeps_value(self):
        model = SSAMModel(self._model(), rho=0.1)
        with pytest.raises(ValueError, match="rho=-1"):
            model.rho = -1
        assert model.rho == 0.1

    @pytest.mark.parametrize("bad", ["length", "shape", "values"])
    def test_bad_masks_leave_masks_intact(self, bad):
        model = SSAMModel(self._model())
        masks = [np.zeros(m.shape) for m in model.masks]
        if bad == "length":
            masks = masks[:-1]
        elif bad == "shape":
            masks[-1] = np.zeros((C + 1,))
        else:
            masks[-1] = np.full((C,), 0.5)
        with pytest.raises(ValueError, match="masks"):
            model.set_masks(masks)
        for m in model.masks:
            np.testing.assert_array_equal(m.numpy(), 1.0)
