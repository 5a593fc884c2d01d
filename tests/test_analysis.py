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
    want = np.abs(g_sam - g) / np.abs(g)
    np.testing.assert_allclose(result["ratio"], want, rtol=1e-3)
    # The histogram is that of log10(r), 50 bins, recomputed from the analytic ratios
    # (the nearest log10(r) lies 1.2e-3 from a bin edge; a 1e-3 relative error in r
    # moves log10(r) by 4.4e-4 at most).
    hist, edges = np.histogram(np.log10(want), bins=50)
    np.testing.assert_array_equal(result["hist"], hist)
    np.testing.assert_allclose(result["bin_edges"], edges, rtol=1e-3, atol=1e-4)


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

    from keras_ssam import cli
    from keras_ssam.experiments import data, models

    saved = str(tmp_path / "model.keras")
    _, _, info = data.load("digits")
    net = SSAMModel(models.small_cnn(10, info.input_shape))
    net.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.save(saved)
    out = tmp_path / "analysis"
    cli.run(
        [
            "analyze",
            saved,
            "--dataset",
            "digits",
            "--num-examples",
            "64",
            "--batch-size",
            "32",
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
            "--rho",
            "0.07",
            "--out",
            str(out),
        ]
    )
    saved_report = json.loads((out / "analysis.json").read_text())
    assert len(saved_report["hessian"]["eigenvalues"]) == 2
    assert len(saved_report["hessian"]["iterations"]) == 2  # power: one count per eigenvalue
    assert np.asarray(saved_report["landscape"]["loss"]).shape == (3, 3)
    # The gradient-difference summary is that of the ratios on the requested
    # examples at the requested rho, recomputed here from the ratios themselves.
    train_ds, _, _ = data.load("digits", None, 32, 0, augment=False, train_limit=64)
    loaded = keras.models.load_model(saved)
    ratio = analysis.gradient_difference(loaded, train_ds, rho=0.07)["ratio"]
    assert ratio.size == sum(int(np.prod(v.shape)) for v in net.model.trainable_variables)
    summary = saved_report["gradient_difference"]
    assert summary["median"] == pytest.approx(np.median(ratio), rel=1e-3)
    assert summary["p90"] == pytest.approx(np.percentile(ratio, 90), rel=1e-3)
    assert summary["fraction_above_1"] == pytest.approx(np.mean(ratio > 1), abs=1e-3)
    hist, _ = np.histogram(np.log10(ratio + 1e-12), bins=50)
    assert np.abs(np.asarray(summary["hist"]) - hist).sum() <= 4  # float order of the batches
    other = analysis.gradient_difference(loaded, train_ds, rho=0.2)["median"]
    assert abs(other - summary["median"]) > 10 * abs(summary["median"] - np.median(ratio))
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


# --- The loss is the mean over examples, whatever form it is given in -------------------------
# A linear model without bias, W of shape (d_in, d_out), flattened row-major
# (entry (j, k) at j * d_out + k, as `np.ravel` of the kernel):
# MSE: L = 1/(n d_out) sum_i s_i ||x_i W - y_i||^2, so H = 2/(n d_out) X^T S X (x) I.
# Softmax cross-entropy: H = 1/n sum_i s_i (x_i x_i^T) (x) (diag(p_i) - p_i p_i^T).

D_IN, D_OUT, EXAMPLES = 5, 3, 40


def linear(units=D_OUT, activation=None, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((D_IN,)), keras.layers.Dense(units, activation=activation, use_bias=False)]
    )


def regression_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(EXAMPLES, D_IN)).astype("float32")
    y = rng.normal(size=(EXAMPLES, D_OUT)).astype("float32")
    return x, y


def mse_hessian(x, weights=None):
    x = x.astype("float64")
    s = np.ones(len(x)) if weights is None else np.asarray(weights, "float64")
    return np.kron(2.0 / (len(x) * D_OUT) * x.T @ (s[:, None] * x), np.eye(D_OUT))


def softmax_hessian(x, kernel, weights=None):
    x, kernel = x.astype("float64"), kernel.astype("float64")
    z = x @ kernel
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    s = np.ones(len(x)) if weights is None else np.asarray(weights, "float64")
    blocks = [
        si * np.kron(np.outer(xi, xi), np.diag(pi) - np.outer(pi, pi))
        for xi, pi, si in zip(x, p, s)
    ]
    return np.sum(blocks, axis=0) / len(x)


def per_example_mse(y_true, y_pred):
    return tf.reduce_mean(tf.square(y_pred - y_true), axis=-1)


def batch_mean_mse(y_true, y_pred):
    return tf.reduce_mean(tf.square(y_pred - y_true))


MSE_FORMS = {
    "string": "mse",
    "long string": "mean_squared_error",
    "Loss": keras.losses.MeanSquaredError(),
    "Loss, reduction='sum'": keras.losses.MeanSquaredError(reduction="sum"),
    "keras function": keras.losses.mean_squared_error,
    "per-example function": per_example_mse,
    "batch-mean function": batch_mean_mse,
}


def assert_hvp(model, data, hessian, **kwargs):
    rng = np.random.default_rng(7)
    kernel_shape = tuple(model.trainable_variables[0].shape)
    v = rng.normal(size=kernel_shape).astype("float32")
    hv = analysis.hessian_vector_product(model, data, [v], batch_size=16, **kwargs)
    # 40 examples in batches of 16: 16, 16, 8 (unequal batches are weighted right).
    np.testing.assert_allclose(hv[0].numpy().ravel(), hessian @ v.ravel(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("form", list(MSE_FORMS))
@pytest.mark.parametrize("where", ["compiled", "argument"])
def test_hessian_of_linear_mse_is_exact_for_every_loss_form(form, where):
    x, y = regression_data()
    model = linear()
    if where == "compiled":
        model.compile(optimizer="sgd", loss=MSE_FORMS[form])
        kwargs = {}
    else:
        kwargs = {"loss": MSE_FORMS[form]}
    assert_hvp(model, (x, y), mse_hessian(x), **kwargs)


def test_top_eigenvalues_of_linear_mse_with_a_string_loss_wrapped_in_ssam():
    x, y = regression_data()
    model = SSAMModel(linear())
    model.compile(optimizer="sgd", loss="mse")
    want = np.sort(np.linalg.eigvalsh(mse_hessian(x)))[::-1]
    assert want[0] == pytest.approx(want[D_OUT - 1]) and want[D_OUT] < 0.9 * want[0]
    common = dict(top_k=2, tol=0.0, batch_size=16, verbose=0)
    # Power iteration with deflation finds the D_OUT-fold top eigenvalue twice.
    power = analysis.hessian_eigenvalues(model, (x, y), max_iter=300, **common)
    np.testing.assert_allclose(power["eigenvalues"], want[:2], rtol=1e-4)
    # Lanczos sees each distinct eigenvalue once and stops at the invariant
    # subspace (5 distinct values) instead of turning rounding noise into
    # a basis vector (which gave a Ritz value 3.5 % above the true maximum).
    lanczos = analysis.hessian_eigenvalues(
        model, (x, y), max_iter=D_IN * D_OUT, method="lanczos", **common
    )
    np.testing.assert_allclose(lanczos["eigenvalues"], [want[0], want[D_OUT]], rtol=1e-4)
    assert lanczos["iterations"] == [D_IN]


@pytest.mark.parametrize(
    "loss",
    [
        "sparse_categorical_crossentropy",
        keras.losses.SparseCategoricalCrossentropy(),
        keras.losses.SparseCategoricalCrossentropy(reduction="sum"),
    ],
    ids=["string", "Loss", "Loss-sum"],
)
def test_hessian_of_softmax_cross_entropy_is_exact(loss):
    x, _ = regression_data()
    labels = np.random.default_rng(1).integers(0, D_OUT, EXAMPLES)
    model = linear(activation="softmax")
    model.compile(optimizer="sgd", loss=loss)
    hessian = softmax_hessian(x, model.trainable_variables[0].numpy())
    assert_hvp(model, (x, labels), hessian)


def test_hessian_with_sample_weights_for_arrays_and_datasets():
    x, y = regression_data()
    weights = np.random.default_rng(2).uniform(0.0, 3.0, EXAMPLES).astype("float32")
    model = linear()
    model.compile(optimizer="sgd", loss="mse")
    hessian = mse_hessian(x, weights)
    assert_hvp(model, (x, y, weights), hessian)
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(16)
    assert_hvp(model, dataset, hessian)
    labels = np.random.default_rng(1).integers(0, D_OUT, EXAMPLES)
    classifier = linear(activation="softmax")
    classifier.compile(loss=keras.losses.SparseCategoricalCrossentropy())
    kernel = classifier.trainable_variables[0].numpy()
    assert_hvp(classifier, (x, labels, weights), softmax_hessian(x, kernel, weights))


def test_sample_weights_with_a_batch_mean_loss_raise():
    x, y = regression_data()
    with pytest.raises(ValueError, match="one value per example"):
        analysis.hessian_vector_product(
            linear(), (x, y, np.ones(EXAMPLES)), [np.ones((D_IN, D_OUT))], loss=batch_mean_mse
        )


def landscape_reference(model, x, y, result, loss_fn):
    """The loss at every grid point, from NumPy."""
    weights = [w.numpy().astype("float64") for w in model.trainable_variables]
    out = np.zeros(result["loss"].shape)
    for index in np.ndindex(*out.shape):
        p = [
            w + sum(result["coords"][i] * d[k] for i, d in zip(index, result["directions"]))
            for k, w in enumerate(weights)
        ]
        pred = x.astype("float64") @ p[0] + (p[1] if len(p) > 1 else 0.0)
        out[index] = loss_fn(pred)
    return out


@pytest.mark.parametrize("units", [1, D_OUT])
def test_landscape_of_a_regression_model_has_loss_and_no_accuracy(units):
    x, y = regression_data()
    y = y[:, :units]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((D_IN,)), keras.layers.Dense(units)])
    model.compile(optimizer="sgd", loss="mse")
    result = analysis.loss_landscape(
        model, (x, y), resolution=3, span=(-0.5, 0.5), dims=2, batch_size=16,
        filter_normalized=False, verbose=0,
    )  # fmt: skip
    want = landscape_reference(model, x, y, result, lambda p: np.mean((p - y) ** 2))
    np.testing.assert_allclose(result["loss"], want, rtol=1e-5)
    assert result["accuracy"] is None


def test_landscape_accuracy_with_one_hot_and_float_labels_and_weights():
    x, _ = regression_data()
    labels = np.random.default_rng(1).integers(0, D_OUT, EXAMPLES)
    weights = np.random.default_rng(2).uniform(0.0, 3.0, EXAMPLES).astype("float32")
    model = linear()  # logits
    logits = x @ model.trainable_variables[0].numpy()
    hits = np.argmax(logits, -1) == labels
    assert 0.2 < hits.mean() < 0.8  # a real test of the counting
    span = dict(resolution=2, span=(0.0, 1e-9), batch_size=16, verbose=0)
    one_hot = np.eye(D_OUT, dtype="float32")[labels]
    cce = keras.losses.CategoricalCrossentropy(from_logits=True)
    result = analysis.loss_landscape(model, (x, one_hot), loss=cce, **span)
    np.testing.assert_allclose(result["accuracy"], hits.mean(), atol=1e-6)
    z = logits - logits.max(-1, keepdims=True)
    nll = np.log(np.exp(z).sum(-1)) - z[np.arange(EXAMPLES), labels]
    np.testing.assert_allclose(result["loss"], nll.mean(), rtol=1e-5)
    scce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    column = labels[:, None].astype("float32")
    result = analysis.loss_landscape(model, (x, column, weights), loss=scce, **span)
    np.testing.assert_allclose(result["accuracy"], np.sum(weights * hits) / weights.sum(), 1e-6)
    np.testing.assert_allclose(result["loss"], np.sum(weights * nll) / EXAMPLES, rtol=1e-5)
    # Soft targets are not labels: no accuracy.
    soft = np.full((EXAMPLES, D_OUT), 1.0 / D_OUT, "float32")
    assert analysis.loss_landscape(model, (x, soft), loss=cce, **span)["accuracy"] is None


PLOTS_LEAVE_MATPLOTLIB_ALONE = """
import sys

import matplotlib
import numpy as np

from keras_ssam.analysis import plots

import matplotlib.pyplot as plt  # already imported by TensorFlow: its state must not change

mine = plt.figure(num=7)
out = sys.argv[1]
line = {"coords": np.linspace(-1, 1, 5), "loss": np.arange(5.0), "accuracy": None}
plane = {"coords": np.linspace(-1, 1, 3), "loss": np.arange(9.0).reshape(3, 3)}
written = [
    plots.plot_landscape(line, out + "/line.png"),
    plots.plot_landscape(dict(line, accuracy=np.full(5, 0.5)), out + "/line_acc.png"),
    plots.plot_landscape(dict(plane, accuracy=None), out + "/plane.png"),
    plots.plot_eigenvalues({"eigenvalues": [3.0, 2.0], "ratio": 1.5}, out + "/eig.png"),
    plots.plot_gradient_difference(
        {"bin_edges": np.linspace(-3, 1, 5), "hist": np.array([1, 2, 3, 4]), "median": 0.1},
        out + "/diff.png",
    ),
]
print(matplotlib.get_backend(), plt.get_fignums() == [7] and plt.gcf() is mine, len(written))
"""


def test_plots_leave_the_matplotlib_backend_and_pyplot_alone(tmp_path):
    pytest.importorskip("matplotlib")
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", PLOTS_LEAVE_MATPLOTLIB_ALONE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, MPLBACKEND="svg", TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # The backend the caller chose is still set, pyplot's figures are the caller's.
    assert out.stdout.split()[-3:] == ["svg", "True", "5"]
    for name in ("line", "line_acc", "plane", "eig", "diff"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
