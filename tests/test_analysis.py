"""Analysis tools against an explicit quadratic loss 1/2 w^T A w."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssam import SSAMModel, analysis

N = 6


class Quadratic(keras.layers.Layer):
    """Outputs 1/2 w^T A w for every example; a (N, 1) kernel as the weight."""

    def __init__(self, a, **kwargs):
        super().__init__(**kwargs)
        self.a = tf.constant(a, "float32")

    def build(self, input_shape):
        self.w = self.add_weight(shape=(self.a.shape[0], 1), initializer="ones")

    def call(self, x):
        value = 0.5 * tf.reduce_sum(self.w * tf.matmul(self.a, self.w))
        return tf.zeros([tf.shape(x)[0], 1]) + value


def output_loss(y_true, y_pred):
    return tf.reduce_mean(y_pred)


def quadratic(seed=0, spectrum=(9.0, 5.0, 3.0, 2.0, 1.0, 0.5)):
    rng = np.random.default_rng(seed)
    n = len(spectrum)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = q @ np.diag(spectrum) @ q.T
    inputs = keras.Input((1,))
    model = keras.Model(inputs, Quadratic(a)(inputs))
    model.layers[1].w.assign(rng.normal(size=(n, 1)))
    return model, a


def data(n=10):
    return np.zeros((n, 1), "float32"), np.zeros((n, 1), "float32")


@pytest.mark.parametrize("hvp_mode", ["forward", "reverse"])
def test_hessian_vector_product_is_a_v(hvp_mode):
    model, a = quadratic()
    v = np.random.default_rng(1).normal(size=(N, 1)).astype("float32")
    hv = analysis.hessian_vector_product(model, data(), [v], loss=output_loss, hvp_mode=hvp_mode)
    np.testing.assert_allclose(hv[0].numpy(), a @ v, rtol=1e-4, atol=1e-5)


def test_eigenvalues_match_numpy():
    model, a = quadratic()
    result = analysis.hessian_eigenvalues(
        model,
        data(),
        top_k=4,
        max_iter=500,
        tol=1e-9,
        trace_samples=200,
        loss=output_loss,
        verbose=0,
    )
    want = np.sort(np.linalg.eigvalsh(a))[::-1][:4]
    np.testing.assert_allclose(result["eigenvalues"], want, rtol=1e-3)
    assert result["ratio"] == pytest.approx(want[0] / want[3], rel=1e-3)
    assert result["trace"] == pytest.approx(np.trace(a), rel=0.15)  # Monte Carlo


def test_landscape_matches_analytic_values():
    model, a = quadratic()
    w = model.layers[1].w.numpy()
    for dims in (1, 2):
        result = analysis.loss_landscape(
            model, data(), resolution=5, span=(-0.5, 0.5), dims=dims, loss=output_loss, verbose=0
        )
        d = [r[0] for r in result["directions"]]
        c = result["coords"]
        for index in np.ndindex(*result["loss"].shape):
            p = w + sum(c[i] * di for i, di in zip(index, d))
            assert result["loss"][index] == pytest.approx(0.5 * (p.T @ a @ p).item(), rel=1e-4)
        # Filter normalization: the single filter of d has the norm of w.
        np.testing.assert_allclose(np.linalg.norm(d[0]), np.linalg.norm(w), rtol=1e-5)


def test_gradient_difference_on_quadratic():
    model, a = quadratic()
    w = model.layers[1].w.numpy().ravel()
    result = analysis.gradient_difference(model, data(), rho=0.1, loss=output_loss)
    g = a @ w
    g_sam = a @ (w + 0.1 * g / np.linalg.norm(g))
    np.testing.assert_allclose(result["ratio"], np.abs(g_sam - g) / np.abs(g), rtol=1e-3)
    assert result["hist"].sum() == N


def bn_classifier():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dense(3),
        ]
    )
    model.compile(
        optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)).astype("float32"), rng.integers(0, 3, 40)
    model.fit(x, y, epochs=1, verbose=0)  # moving statistics away from init
    return model, x, y


def test_analysis_leaves_weights_and_bn_statistics_bit_identical():
    model, x, y = bn_classifier()
    wrapped = SSAMModel(model)
    before = [v.numpy().copy() for v in model.variables]
    analysis.hessian_eigenvalues(wrapped, (x, y), top_k=2, max_iter=5, verbose=0)
    analysis.loss_landscape(model, (x, y), resolution=3, dims=2, verbose=0)
    analysis.gradient_difference(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(16))
    for b, v in zip(before, model.variables):
        np.testing.assert_array_equal(b, v.numpy())


def test_forward_over_reverse_equals_double_backprop_with_batchnorm():
    model, x, y = bn_classifier()
    rng = np.random.default_rng(3)
    v = [rng.normal(size=w.shape).astype("float32") for w in model.trainable_variables]
    fwd = analysis.hessian_vector_product(model, (x, y), v, batch_size=16, hvp_mode="forward")
    rev = analysis.hessian_vector_product(model, (x, y), v, batch_size=16, hvp_mode="reverse")
    for a, b in zip(fwd, rev):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
    assert max(float(np.abs(a).max()) for a in fwd) > 1e-3  # a real, non-zero curvature


def test_landscape_accuracy_is_counted():
    model, x, y = bn_classifier()
    result = analysis.loss_landscape(model, (x, y), resolution=3, span=(0.0, 0.0 + 1e-9), verbose=0)
    logits = model.predict(x, verbose=0)
    want = float(np.mean(np.argmax(logits, -1) == y))
    np.testing.assert_allclose(result["accuracy"], want, atol=1e-6)


class TestBadInput:
    def test_bad_arguments(self):
        model, x, y = bn_classifier()
        with pytest.raises(ValueError, match="top_k=0"):
            analysis.hessian_eigenvalues(model, (x, y), top_k=0)
        with pytest.raises(ValueError, match="resolution=1"):
            analysis.loss_landscape(model, (x, y), resolution=1)
        with pytest.raises(ValueError, match="dims=3"):
            analysis.loss_landscape(model, (x, y), dims=3)
        with pytest.raises(ValueError, match="empty"):
            analysis.gradient_difference(model, (x[:0], y[:0]))
        with pytest.raises(TypeError, match="model="):
            analysis.gradient_difference("model.keras", (x, y))
        with pytest.raises(ValueError, match="hvp_mode='jvp'"):
            analysis.hessian_eigenvalues(model, (x, y), hvp_mode="jvp")
        with pytest.raises(ValueError, match="tol=-0.1"):
            analysis.hessian_eigenvalues(model, (x, y), tol=-0.1)


def test_analyze_cli_writes_json_and_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    import json

    from keras_ssam import cli, data, models

    saved = str(tmp_path / "model.keras")
    _, _, info = data.load("digits")
    net = SSAMModel(models.small_cnn(10, info.input_shape))
    net.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.save(saved)
    out = tmp_path / "analysis"
    report = cli.run(
        [
            "analyze",
            saved,
            "--dataset",
            "digits",
            "--num-examples",
            "64",
            "--hessian",
            "--top-k",
            "2",
            "--max-iter",
            "3",
            "--method",
            "power",
            "--hessian-examples",
            "32",
            "--landscape",
            "--resolution",
            "3",
            "--dims",
            "2",
            "--grad-diff",
            "--out",
            str(out),
        ]
    )
    saved_report = json.loads((out / "analysis.json").read_text())
    assert len(saved_report["hessian"]["eigenvalues"]) == 2
    assert len(saved_report["hessian"]["iterations"]) == 2  # power: one count per eigenvalue
    assert np.asarray(saved_report["landscape"]["loss"]).shape == (3, 3)
    assert report["gradient_difference"]["median"] >= 0
    for name in ("eigenvalues.png", "landscape_2d.png", "grad_diff.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_analyze_cli_needs_an_analysis(tmp_path):
    from keras_ssam import cli

    with pytest.raises(SystemExit, match="at least one"):
        cli.run(["analyze", str(tmp_path / "m.keras")])


def test_lanczos_matches_numpy_with_few_products():
    model, a = quadratic()
    result = analysis.hessian_eigenvalues(
        model, data(), top_k=3, max_iter=N, tol=0.0, method="lanczos", loss=output_loss, verbose=0
    )
    want = np.sort(np.linalg.eigvalsh(a))[::-1][:3]
    np.testing.assert_allclose(result["eigenvalues"], want, rtol=1e-3)
    assert result["iterations"] == [N]  # N products for an exact answer in N dimensions
    with pytest.raises(ValueError, match="method='qr'"):
        analysis.hessian_eigenvalues(model, data(), method="qr", loss=output_loss)


def test_lanczos_stops_when_the_top_ritz_values_settle():
    # 200 dimensions, a clear top-3 above a bulk: converged long before 200 products.
    spectrum = np.concatenate([[50.0, 30.0, 20.0], np.linspace(0.1, 2.0, 197)])
    model, a = quadratic(seed=2, spectrum=spectrum)
    result = analysis.hessian_eigenvalues(
        model,
        data(),
        top_k=3,
        max_iter=200,
        tol=1e-6,
        method="lanczos",
        loss=output_loss,
        verbose=0,
    )
    np.testing.assert_allclose(result["eigenvalues"], [50.0, 30.0, 20.0], rtol=1e-3)
    assert result["iterations"][0] < 40
