"""The SSAM step against independent references (NumPy + a bare tape)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import (
    N,
    make_data,
    make_mlp,
    make_params,
    numpy_perturbation,
    random_masks,
    reference_sgd_step,
)

from keras_ssam import SSAMModel, sparse_perturbation


def fit_one_step(model, x, y, lr=0.1, **fit_kwargs):
    model.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model.fit(x, y, batch_size=N, epochs=1, shuffle=False, verbose=0, **fit_kwargs)


@pytest.mark.parametrize(
    "norm_scope,adaptive,l2",
    [
        ("all", False, 0.0),
        ("masked", False, 0.0),
        ("all", True, 0.0),
        ("masked", True, 0.0),
        ("all", False, 0.01),
    ],
)
def test_one_step_matches_reference(norm_scope, adaptive, l2):
    x, y = make_data()
    params = make_params()
    masks = random_masks(params)
    model = SSAMModel(
        make_mlp(params, l2), rho=0.3, norm_scope=norm_scope, adaptive=adaptive, eta=0.05
    )
    model.set_masks(masks)
    history = fit_one_step(model, x, y)

    expected, _, loss, loss2 = reference_sgd_step(
        params,
        x,
        y,
        masks,
        rho=0.3,
        lr=0.1,
        l2=l2,
        norm_scope=norm_scope,
        adaptive=adaptive,
        eta=0.05,
    )
    for got, want in zip(model.model.get_weights(), expected):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    # Logs: loss is the unperturbed L(w); sharpness is L(w+e) - L(w).
    np.testing.assert_allclose(history.history["loss"][0], loss, rtol=1e-5)
    np.testing.assert_allclose(history.history["sharpness"][0], loss2 - loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        history.history["mask_density"][0],
        sum(m.sum() for m in masks) / sum(m.size for m in masks),
        rtol=1e-6,
    )


def test_all_ones_mask_is_dense_sam():
    x, y = make_data()
    params = make_params()
    model = SSAMModel(make_mlp(params), rho=0.2)  # masks start all ones
    fit_one_step(model, x, y)
    ones = [np.ones_like(p) for p in params]
    expected, *_ = reference_sgd_step(params, x, y, ones, rho=0.2, lr=0.1)
    for got, want in zip(model.model.get_weights(), expected):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    # Dense SAM moves differently from plain SGD: the test can tell them apart.
    plain, *_ = reference_sgd_step(params, x, y, ones, rho=0.0, lr=0.1)
    assert max(np.abs(a - b).max() for a, b in zip(expected, plain)) > 1e-4


@pytest.mark.parametrize("case", ["zero_mask", "rho_zero"])
@pytest.mark.parametrize(
    "optimizer_fn",
    [
        lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        lambda: keras.optimizers.AdamW(0.01, weight_decay=0.01),
    ],
    ids=["sgd_momentum", "adamw"],
)
def test_degenerate_cases_equal_base_optimizer(case, optimizer_fn):
    x, y = make_data()
    params = make_params()
    plain = make_mlp(params, l2=0.01)
    if case == "zero_mask":
        ssam = SSAMModel(make_mlp(params, l2=0.01), rho=0.5)
        ssam.set_masks([np.zeros_like(p) for p in params])
    else:
        ssam = SSAMModel(make_mlp(params, l2=0.01), rho=0.0)
    logs = []
    for model in (plain, ssam):
        model.compile(
            optimizer=optimizer_fn(),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        logs.append(model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history)
    for a, b in zip(plain.get_weights(), ssam.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    # The unperturbed pass feeds the logs: identical to the plain model's.
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(logs[0][key], logs[1][key], rtol=1e-6)


@pytest.mark.parametrize(
    "option",
    ["sample_weight", "class_weight", "steps_per_execution", "jit_compile"],
)
def test_compile_and_fit_options_match_plain_training(option):
    """rho=0 must reproduce plain Keras training under each option."""
    x, y = make_data()
    params = make_params()
    rng = np.random.default_rng(5)
    fit_kwargs, compile_kwargs = {}, {}
    if option == "sample_weight":
        fit_kwargs["sample_weight"] = rng.random(N).astype("float32")
    elif option == "class_weight":
        fit_kwargs["class_weight"] = {0: 0.2, 1: 1.0, 2: 3.0}
    elif option == "steps_per_execution":
        compile_kwargs["steps_per_execution"] = 2
    else:
        compile_kwargs["jit_compile"] = True
    plain = make_mlp(params, l2=0.01)
    ssam = SSAMModel(make_mlp(params, l2=0.01), rho=0.0)
    for model in (plain, ssam):
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            **compile_kwargs,
        )
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, **fit_kwargs)
    for a, b in zip(plain.get_weights(), ssam.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_weighted_step_with_rho_matches_reference():
    """sample_weight reaches both passes: compare with a weighted reference."""
    x, y = make_data()
    params = make_params()
    sw = np.random.default_rng(3).random(N).astype("float32")
    model = SSAMModel(make_mlp(params), rho=0.3)
    fit_one_step(model, x, y, sample_weight=sw)

    def grad(p):
        p = [tf.constant(v) for v in p]
        with tf.GradientTape() as tape:
            tape.watch(p)
            logits = tf.nn.relu(x @ p[0] + p[1]) @ p[2] + p[3]
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
            loss = tf.reduce_sum(ce * sw) / N  # Keras' "sum_over_batch_size"
        return [g.numpy() for g in tape.gradient(loss, p)]

    e = numpy_perturbation(grad(params), [np.ones_like(p) for p in params], 0.3)
    g2 = grad([p + ei.astype("float32") for p, ei in zip(params, e)])
    for got, p, g in zip(model.model.get_weights(), params, g2):
        np.testing.assert_allclose(got, p - 0.1 * g, atol=1e-6, rtol=0)


def test_jit_compile_step_matches_reference():
    x, y = make_data()
    params = make_params()
    masks = random_masks(params)
    model = SSAMModel(make_mlp(params), rho=0.3, norm_scope="masked")
    model.set_masks(masks)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    model.fit(x, y, batch_size=N, epochs=1, shuffle=False, verbose=0)
    expected, *_ = reference_sgd_step(params, x, y, masks, rho=0.3, lr=0.1, norm_scope="masked")
    for got, want in zip(model.model.get_weights(), expected):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


class TestPerturbationNorms:
    def setup_method(self):
        rng = np.random.default_rng(7)
        self.grads = [rng.normal(size=s).astype("float32") for s in [(4, 6), (6,)]]
        self.masks = [(rng.random(g.shape) < 0.3).astype("float32") for g in self.grads]

    def _e(self, **kwargs):
        return [
            t.numpy()
            for t in sparse_perturbation(
                [tf.constant(g) for g in self.grads],
                [tf.constant(m) for m in self.masks],
                0.07,
                **kwargs,
            )
        ]

    @staticmethod
    def _norm(e):
        return float(np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in e)))

    def test_all_scope_norm_is_the_masked_share_of_rho(self):
        # ||e|| = rho * ||m * g|| / ||g|| (up to epsilon), computed here directly.
        e = self._e(norm_scope="all")
        g = np.concatenate([v.ravel() for v in self.grads]).astype(np.float64)
        m = np.concatenate([v.ravel() for v in self.masks])
        share = np.linalg.norm(m * g) / np.linalg.norm(g)
        assert 0.2 < share < 0.8  # a mask that really removes part of the norm
        np.testing.assert_allclose(self._norm(e), 0.07 * share, rtol=1e-5)
        want = numpy_perturbation(self.grads, self.masks, 0.07)
        for a, b in zip(e, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)

    def test_masked_scope_norm_equals_rho(self):
        np.testing.assert_allclose(self._norm(self._e(norm_scope="masked")), 0.07, rtol=1e-6)

    def test_zero_where_mask_is_zero(self):
        for scope in ("all", "masked"):
            for e, m in zip(self._e(norm_scope=scope), self.masks):
                assert np.all(e[m == 0] == 0.0)
                assert np.all(e[m == 1] != 0.0)

    def test_adaptive_matches_numpy(self):
        rng = np.random.default_rng(8)
        weights = [rng.normal(size=g.shape).astype("float32") for g in self.grads]
        e = self._e(
            adaptive=True, variables=[tf.constant(w) for w in weights], eta=0.1, norm_scope="masked"
        )
        want = numpy_perturbation(
            self.grads,
            self.masks,
            0.07,
            weights=weights,
            adaptive=True,
            eta=0.1,
            norm_scope="masked",
        )
        for a, b in zip(e, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)

    def test_bad_norm_scope(self):
        with pytest.raises(ValueError, match="norm_scope='l1'"):
            self._e(norm_scope="l1")
