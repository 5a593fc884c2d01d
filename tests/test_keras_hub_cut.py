"""The reused second pass on KerasHub models: a cut inside the nested backbone."""

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402
import keras_hub_models as hub_models  # noqa: E402

import keras_ssam  # noqa: E402


def _train(reuse, steps_x=None):
    x, y = hub_models.images()
    task = hub_models.resnet_classifier(dropout=0.1)
    model = keras_ssam.SSAMModel(task, rho=0.05, norm_scope="masked", reuse_activations=reuse)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=hub_models.loss())
    mask = keras_ssam.StructuredFisherMask(x, y, num_samples=8, sparsity=0.5)
    model.fit(x, y, batch_size=3, shuffle=False, verbose=0, callbacks=[mask])
    return model, [np.asarray(v) for v in task.trainable_variables]


def test_resnet_task_reuses_the_first_pass_below_a_cut_inside_its_backbone():
    """Where the cut lands (inside `ResNetBackbone`), and three steps equal recomputation."""
    reused, weights = _train(True)
    plan = reused.step_plan()
    assert plan["reuse"], plan["reason"]
    backbone = reused.model.backbone
    assert plan["cut"] in [layer.name for layer in backbone.layers]
    supported = set(plan["support"])
    layers = [layer.name for layer in backbone.layers]
    cut_at = layers.index(plan["cut"])
    below = {w.path for layer in backbone.layers[: cut_at + 1] for w in layer.trainable_weights}
    assert below and not below & supported  # nothing perturbed below the cut
    recomputed, expected = _train(False)
    assert not recomputed.step_plan()["reuse"]
    for a, b in zip(weights, expected):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_bert_task_has_no_single_tensor_cut():
    x, y = hub_models.text_data()
    model = keras_ssam.SSAMModel(hub_models.bert_classifier(), norm_scope="masked")
    model.compile(optimizer="sgd", loss=hub_models.loss())
    mask = keras_ssam.StructuredFisherMask(x, y, num_samples=8, sparsity=0.5)
    model.fit(x, y, batch_size=4, verbose=0, callbacks=[mask])
    plan = model.step_plan()
    assert not plan["reuse"]
    assert "several inputs" in plan["reason"]


def test_vit_task_says_why_it_recomputes_and_trains():
    """ViT slices the class token between backbone and head: no cut is used (yet), clearly."""
    x, y = hub_models.images()
    task = hub_models.vit_classifier()
    model = keras_ssam.SSAMModel(task, norm_scope="masked")
    model.compile(optimizer="sgd", loss=hub_models.loss())
    mask = keras_ssam.StructuredFisherMask(x, y, num_samples=8, sparsity=0.5)
    before = [np.asarray(v) for v in task.trainable_variables]
    model.fit(x, y, batch_size=4, verbose=0, callbacks=[mask])
    plan = model.step_plan()
    assert not plan["reuse"]
    assert "is not alone between two layers" in plan["reason"]
    assert any(
        not np.array_equal(a, np.asarray(v)) for a, v in zip(before, task.trainable_variables)
    )
