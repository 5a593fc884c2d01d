"""The fine-tuning sequence on a KerasHub task: freeze, train the head, unfreeze, recompile.

What persists across `compile()` with a new optimizer: the masks, LookSAM's
and Momentum-SAM's buffers (variables of the `SSAMModel`). What resets: the
optimizer's `iterations`, hence the interval's phase (the first step after
recompiling is a SAM step). Masks of variables that were frozen are set by
the mask callback at the next `fit()` (the trainable set changed).
"""

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402
import keras_hub_models as hub_models  # noqa: E402

import keras_ssam  # noqa: E402


def _compile(model):
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=hub_models.loss())


def _values(variables):
    return [np.asarray(v).copy() for v in variables]


@pytest.mark.parametrize("kind", ["looksam", pytest.param("momentum", marks=pytest.mark.slow)])
def test_freeze_train_head_unfreeze_recompile(kind):
    x, y = hub_models.text_data()
    task = hub_models.bert_classifier()
    if kind == "looksam":
        model = keras_ssam.SSAMModel(task, interval=2, between="looksam")
        buffers = model._looksam
    else:
        model = keras_ssam.SSAMModel(task, ascent="momentum")
        buffers = model._momentum
    head = [id(v) for v in task.trainable_variables if "logits" in v.path]

    task.backbone.trainable = False
    _compile(model)
    fisher = keras_ssam.FisherMask(x, y, num_samples=8, sparsity=0.5)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[fisher])
    assert int(model.optimizer.iterations) == 2
    assert {id(v) for v in model.masked_variables} == set(head)
    head_masks = _values(model.masks)
    kept = _values(buffers)
    assert any(np.any(b != 0) for b in kept)  # phase 1 filled the buffers
    backbone = next(w for w in task.backbone.weights if "kernel" in w.path)

    task.backbone.trainable = True
    _compile(model)  # a new optimizer: Keras 3's rejects variables it was not built with
    assert int(model.optimizer.iterations) == 0  # resets: the interval's phase restarts
    for a, b in zip(_values(buffers), kept):  # persist
        np.testing.assert_array_equal(a, b)
    by_id = {id(v): np.asarray(m) for v, m in zip(model.masked_variables, model.masks)}
    for v, m in zip([v for v in task.trainable_variables if id(v) in head], head_masks):
        np.testing.assert_array_equal(by_id[id(v)], m)  # persist
    assert not model.masks_valid()  # the trainable set changed: a new mask at the next fit

    before = np.asarray(backbone).copy()
    history = model.fit(x[:4], y[:4], batch_size=4, epochs=1, verbose=0, callbacks=[fisher])
    assert model.masks_valid()
    np.testing.assert_allclose(model.mask_density(), 0.5, atol=0.01)
    assert not np.array_equal(np.asarray(backbone), before)  # the backbone trains now
    if kind == "looksam":
        assert history.history["sam_steps"] == [1.0]  # step 0 after recompiling is SAM
