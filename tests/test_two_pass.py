"""Structured masks: the pruned first pass and the reused second pass are exact."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import numpy_perturbation
from reference_cnn import (
    BN_MOMENTUM,
    LOSS,
    B,
    C,
    cnn,
    data,
    keras_params,
    reference_step,
    top_masks,
)

from keras_ssam import SSAMModel, StructuredFisherMask
from keras_ssam.masks import mask_distribution
from keras_ssam.step import plan as two_pass


@pytest.mark.parametrize(
    "reuse,structure", [(True, None), (False, None), (True, "dict"), (True, "list")]
)
def test_structured_step_matches_tape_reference(reuse, structure):
    """A single output, bare or in a dict or list of one, keeps the reused pass."""
    x, y = data()
    inner = cnn(structure=structure)
    params = keras_params(inner)
    bn = {w.path: w.numpy() for w in inner.weights if "moving" in w.path}
    ssam = SSAMModel(inner, rho=0.3, norm_scope="masked", reuse_activations=reuse)
    masks = top_masks(inner)
    ssam.set_masks(masks)
    loss = {"logits": LOSS} if structure == "dict" else [LOSS] if structure == "list" else LOSS
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    assert ssam.step_plan()["reuse"] is reuse
    ssam.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    # The reference's parameter order equals the model's trainable order here.
    want, stats = reference_step(params, x, y, masks, 0.3, 0.1)
    for got, w in zip(keras_params(inner), want):
        np.testing.assert_allclose(got, w, atol=1e-5, rtol=0)
    moved = {w.path: w.numpy() for w in inner.weights if "moving" in w.path}
    for i, (mean, var) in enumerate(stats):
        for key, batch in ((f"bn{i}/moving_mean", mean), (f"bn{i}/moving_variance", var)):
            expect = bn[key] * BN_MOMENTUM + batch * (1 - BN_MOMENTUM)
            np.testing.assert_allclose(moved[key], expect, atol=1e-5, rtol=0)


def _train(reuse, dropout=False, steps=3, **kwargs):
    x, y = data(B * steps)
    inner = cnn(dropout=dropout)
    ssam = SSAMModel(inner, rho=0.3, norm_scope="masked", reuse_activations=reuse, **kwargs)
    ssam.set_masks(top_masks(inner))
    ssam.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS)
    ssam.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    return ssam


@pytest.mark.parametrize("case", ["dropout", "mixed_float16", "coupled_decay", "splits"])
def test_reuse_equals_recompute(case):
    kwargs = {}
    if case == "mixed_float16":
        keras.config.set_dtype_policy("mixed_float16")
    if case == "coupled_decay":
        kwargs["coupled_weight_decay"] = 0.01
    if case == "splits":
        kwargs["num_batch_splits"] = 2
    runs = [_train(reuse, dropout=case == "dropout", **kwargs) for reuse in (True, False)]
    assert runs[0].step_plan()["reuse"] and not runs[1].step_plan()["reuse"]
    for a, b in zip(runs[0].model.get_weights(), runs[1].model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    start = cnn(dropout=case == "dropout").get_weights()
    assert max(np.abs(a - b).max() for a, b in zip(runs[0].model.get_weights(), start)) > 1e-3


# ------------------------------------------------------------------ what is saved
def _op_counts(ssam):
    """Conv2D forward and weight-gradient ops that the traced step runs on a SAM step.

    Graph construction may emit gradient ops nobody uses; the runtime prunes
    every op that no output or stateful op depends on, so only ops reachable
    backwards from those are counted. A step that may be a one-pass step
    holds pass 2 in a `tf.cond`: its SAM branch (`then_branch`) is counted too.
    """
    x, y = data()
    fn = tf.function(ssam.train_step)
    spec = (tf.TensorSpec(x.shape), tf.TensorSpec(y.shape, "int32"))
    graph = fn.get_concrete_function(spec).graph
    library = {f.signature.name: f for f in graph.as_graph_def().library.function}
    todo = [t.op for t in graph.outputs] + list(graph.control_outputs)
    seen = set()
    while todo:
        op = todo.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        todo += [t.op for t in op.inputs] + list(op.control_inputs)
    types = [graph.get_operation_by_name(name).type for name in seen]
    for name in seen:
        op = graph.get_operation_by_name(name)
        if op.type in ("If", "StatelessIf"):
            types += _function_op_types(library, op.get_attr("then_branch").name)
    return types.count("Conv2D"), types.count("Conv2DBackpropFilter")


def _function_op_types(library, name):
    """Types of the ops of a library function that its outputs depend on."""
    function = library[name]
    nodes = {n.name: n for n in function.node_def}
    todo = [v.split(":")[0] for v in list(function.ret.values())]
    todo += list(function.control_ret.values())
    seen, types = set(), []
    while todo:
        node = nodes.get(todo.pop().lstrip("^"))
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        types.append(node.op)
        todo += [i.split(":")[0] for i in node.input]
    return types


@pytest.mark.parametrize(
    "reuse,norm_scope,want",
    [
        # SAM: 2 passes x 2 convs forward and weight-gradient.
        (True, "all", (4, 4)),
        # Pruned pass 1 (conv1 only), full pass 2: 4 forward, 1 + 2 filter grads.
        (False, "masked", (4, 3)),
        # Pruned pass 1 and pass 2 above the cut: conv0 runs forward once.
        (True, "masked", (3, 3)),
    ],
)
def test_structured_mask_removes_work_from_the_traced_step(reuse, norm_scope, want):
    inner = cnn()
    ssam = SSAMModel(inner, rho=0.3, norm_scope=norm_scope, reuse_activations=reuse)
    ssam.set_masks(top_masks(inner))
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    ssam.fit(*data(), batch_size=B, epochs=1, verbose=0)
    assert _op_counts(ssam) == want


@pytest.mark.parametrize("norm_scope", ["all", "masked"])
def test_all_zero_mask_is_one_pass_plain_training(norm_scope):
    """e = 0 exactly: the step is plain Keras training, at plain training's cost."""
    x, y = data(B * 3)
    plain, inner = cnn(dropout=True), cnn(dropout=True)
    ssam = SSAMModel(inner, rho=0.3, norm_scope=norm_scope, coupled_weight_decay=0.0)
    ssam.set_masks([np.zeros(v.shape, "float32") for v in inner.trainable_variables])
    for model in (plain, ssam):
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS)
        model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(plain.get_weights(), inner.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    assert _op_counts(ssam) == (2, 2)  # one forward and one backward per conv


def test_step_is_retraced_only_when_the_support_changes():
    x, y = data(B * 2)
    inner = cnn()
    ssam = SSAMModel(inner, rho=0.3, norm_scope="masked")
    masks = top_masks(inner)
    ssam.set_masks(masks)
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    ssam.fit(x, y, batch_size=B, epochs=2, verbose=0)
    traces = ssam.traces
    ssam.set_masks(top_masks(inner, rng_seed=7))  # same support, other entries
    ssam.fit(x, y, batch_size=B, epochs=1, verbose=0)
    assert ssam.traces == traces
    ssam.set_masks([np.ones_like(m) for m in masks])  # support grows: stage 1 too
    assert not ssam.step_plan()["reuse"]
    ssam.fit(x, y, batch_size=B, epochs=1, verbose=0)
    assert ssam.traces == traces + 1


def test_restored_masks_with_a_wider_support_are_used(tmp_path):
    """Masks loaded after the step was traced: the support follows them."""
    x, y = data()
    inner = cnn()
    ssam = SSAMModel(inner, rho=0.3, norm_scope="masked")
    ssam.set_masks(top_masks(inner))
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    ssam.fit(x, y, batch_size=B, epochs=1, verbose=0)
    dense = SSAMModel(cnn(), rho=0.3, norm_scope="masked")
    path = str(tmp_path / "dense.weights.h5")
    dense.save_weights(path)  # all-ones masks
    ssam.load_weights(path)
    ssam.fit(x, y, batch_size=B, epochs=1, verbose=0)
    assert len(ssam.step_plan()["support"]) == len(ssam.trainable_variables)
    twin = SSAMModel(cnn(), rho=0.3, norm_scope="masked")
    twin.load_weights(path)
    twin.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    twin.fit(x, y, batch_size=B, epochs=1, verbose=0)
    for a, b in zip(ssam.model.get_weights(), twin.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


# -------------------------------------------------------------------- the cut
def test_cut_is_the_highest_single_tensor_below_the_support():
    inner = cnn()
    variables = inner.trainable_variables
    head = [v for v in variables if v.path.startswith("head")]
    lower, upper, reason = two_pass.find_cut(inner, head, variables)
    assert reason == ""
    assert [layer.name for layer in upper.layers][1:] == ["head"]
    stage2 = [v for v in variables if v.path.startswith(("conv1", "bn1", "head"))]
    lower, upper, _ = two_pass.find_cut(inner, stage2, variables)
    assert lower.layers[-1].name == "relu0"
    everything = two_pass.find_cut(inner, variables, variables)
    assert everything[0] is None and "no single-tensor cut" in everything[2]


def test_sequential_model_has_cuts_too():
    inner = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(7, activation="relu"), keras.layers.Dense(C)]
    )
    variables = inner.trainable_variables
    lower, upper, reason = two_pass.find_cut(inner, variables[2:], variables)
    assert reason == "" and [layer.name for layer in lower.layers][-1] == inner.layers[0].name


def test_several_outputs_fall_back_and_say_why(caplog):
    """Two outputs: no reused pass (a clean fallback with one log line), still exact."""
    keras.utils.set_random_seed(0)
    base = cnn()
    aux = keras.layers.Dense(2, name="aux")(base.get_layer("head").input)
    inner = keras.Model(base.inputs, [base.outputs[0], aux])
    ssam = SSAMModel(inner, rho=0.3, norm_scope="masked")
    masks = top_masks(inner)
    ssam.set_masks(masks)
    plan = ssam.step_plan()
    assert not plan["reuse"] and "several inputs or outputs" in plan["reason"]
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss=[LOSS, LOSS], loss_weights=[1.0, 0.0])
    x, y = data()
    params = keras_params(inner)
    with caplog.at_level(logging.WARNING, logger="keras_ssam"):
        ssam.fit(x, (y, y % 2), batch_size=B, epochs=1, shuffle=False, verbose=0)
    said = [r.message for r in caplog.records if "recomputed from the inputs" in r.message]
    assert len(said) == 1 and "several inputs or outputs" in said[0]
    # aux has weight 0 in the loss and no gradient: the rest is the one-output reference.
    aux_masks = [
        m for v, m in zip(inner.trainable_variables, masks) if not v.path.startswith("aux")
    ]
    want, _ = reference_step(params, x, y, aux_masks, 0.3, 0.1)
    for got, w in zip(keras_params(inner), want):
        np.testing.assert_allclose(got, w, atol=1e-5, rtol=0)


class TwoOutputs(keras.layers.Layer):
    """`(2 x, x + 1)`: a layer with two output tensors."""

    def call(self, x):
        return 2.0 * x, x + 1.0


def test_a_layer_with_two_outputs_is_not_a_cut():
    """One of its outputs unused above: the cut is the single tensor below it."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    h = keras.layers.Dense(4, activation="relu", name="low")(inputs)
    doubled, _ = TwoOutputs(name="two")(h)
    inner = keras.Model(inputs, keras.layers.Dense(C, name="head")(doubled))
    params = [v.numpy() for v in inner.trainable_variables]
    masks = [np.zeros_like(params[0]), np.zeros_like(params[1])]
    masks += [np.ones_like(params[2]), np.ones_like(params[3])]
    ssam = SSAMModel(inner, rho=0.3, norm_scope="masked")
    ssam.set_masks(masks)
    assert ssam.step_plan()["reuse"] and ssam.step_plan()["cut"] == "low"
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(B, 5)).astype("float32"), rng.integers(0, C, B).astype("int32")
    ssam.fit(x, y, batch_size=B, epochs=1, verbose=0)

    def grad(p):
        p = [tf.constant(v) for v in p]
        with tf.GradientTape() as tape:
            tape.watch(p)
            logits = 2.0 * tf.nn.relu(x @ p[0] + p[1]) @ p[2] + p[3]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        return [g.numpy() for g in tape.gradient(loss, p)]

    e = numpy_perturbation(grad(params), masks, 0.3, norm_scope="masked")
    g2 = grad([p + ei.astype("float32") for p, ei in zip(params, e)])
    for got, p, g in zip(inner.trainable_variables, params, g2):
        np.testing.assert_allclose(got.numpy(), p - 0.1 * g, atol=1e-5, rtol=0)


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.a = keras.layers.Dense(4, activation="relu")
        self.b = keras.layers.Dense(C)

    def call(self, x):
        return self.b(self.a(x))


def test_subclassed_model_falls_back_and_says_why(caplog):
    x = np.random.default_rng(0).normal(size=(B, 5)).astype("float32")
    y = np.arange(B) % C
    inner = Subclassed()
    inner(x)
    ssam = SSAMModel(inner, rho=0.3, norm_scope="masked")
    ssam.set_masks([np.zeros((5, 4)), np.zeros(4), np.ones((4, C)), np.ones(C)])
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    with caplog.at_level(logging.WARNING, logger="keras_ssam"):
        ssam.fit(x, y, batch_size=B, epochs=2, verbose=0)
    said = [r.message for r in caplog.records if "recomputed from the inputs" in r.message]
    assert len(said) == 1 and "not functional" in said[0]


# --------------------------------------------------------- the structured mask
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_structured_fisher_mask_is_top_closed_with_exact_density(sparsity):
    x, y = data(32)
    inner = cnn()
    ssam = SSAMModel(inner, rho=0.3, norm_scope="masked")
    ssam.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    callback = StructuredFisherMask(x, y, sparsity=sparsity, num_samples=16)
    callback.set_model(ssam)
    callback.update_mask(0)
    masks = [m.numpy() for m in ssam.masks]
    sizes = [m.size for m in masks]
    k = int(np.floor((1 - sparsity) * sum(sizes) + 0.5))
    assert sum(int(m.sum()) for m in masks) == k
    used = [i for i, m in enumerate(masks) if m.any()]
    start = used[0]
    assert used == list(range(start, len(masks)))  # everything from a cut point up
    assert sum(sizes[start + 1 :]) < k <= sum(sizes[start:])  # and the smallest such set
    # Inside the support, the ones sit on the largest Fisher scores.
    scores = np.concatenate([s.numpy().ravel() for s in callback.fisher_scores(*_draw(callback))])
    flat = np.concatenate([m.ravel() for m in masks])
    inside = np.arange(flat.size) >= sum(sizes[:start])
    assert scores[inside & (flat == 1)].min() >= scores[inside & (flat == 0)].max()


def _draw(callback):
    return callback.sample()


def test_mask_distribution_reports_per_variable_fractions():
    inner = cnn()
    ssam = SSAMModel(inner, rho=0.3)
    masks = top_masks(inner)
    ssam.set_masks(masks)
    rows = mask_distribution(ssam)
    assert [r["variable"] for r in rows] == [v.path for v in inner.trainable_variables]
    for row, m in zip(rows, masks):
        assert row["perturbed"] == int(m.sum()) and row["entries"] == m.size
        assert row["fraction"] == pytest.approx(m.mean())


def test_structured_mask_rejects_an_unknown_budget():
    x, y = data()
    with pytest.raises(ValueError, match="budget='flops'"):
        StructuredFisherMask(x, y, budget="flops")
