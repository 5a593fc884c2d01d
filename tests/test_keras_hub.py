"""`SSAMModel(task)` for KerasHub Tasks: preprocessing in fit/evaluate/predict, saving, export."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402
import keras_hub_models as hub_models  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_ssam  # noqa: E402
from keras_ssam.hub import TaskSSAMModel, task_ssam_model  # noqa: E402


def _compiled(task, **kwargs):
    model = keras_ssam.SSAMModel(task, rho=0.05, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=hub_models.loss())
    return model


def _weights(model):
    return [np.asarray(v) for v in model.model.trainable_variables]


def test_wrapping_a_task_returns_the_task_model():
    task = hub_models.bert_classifier()
    model = keras_ssam.SSAMModel(task)
    assert type(model) is TaskSSAMModel
    assert model.model is task
    plain = keras_ssam.SSAMModel(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    assert type(plain) is keras_ssam.SSAMModel


@pytest.mark.parametrize("family", ["text", "image"])
def test_fit_on_raw_inputs_equals_fit_on_preprocessed_inputs(family):
    """Two SAM steps on raw strings / raw images = the same steps on `preprocessor(x)` by hand."""
    if family == "text":
        build, (x, y) = hub_models.bert_classifier, hub_models.text_data()
    else:
        build, (x, y) = hub_models.resnet_classifier, hub_models.images()
    raw = _compiled(build())
    initial = _weights(raw)
    raw.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    task = build()
    by_hand = keras.ops.convert_to_numpy if family == "image" else (lambda v: v)
    xp, yp = task.preprocessor(x, y)
    task.preprocessor = None  # the reference feeds the preprocessed batches itself
    manual = _compiled(task)
    manual.fit(
        tf.nest.map_structure(by_hand, xp), yp, batch_size=4, epochs=1, shuffle=False, verbose=0
    )
    for a, b in zip(_weights(raw), _weights(manual)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(initial[-1], _weights(raw)[-1])  # the steps moved the head


def test_evaluate_predict_and_on_batch_take_raw_strings():
    x, y = hub_models.text_data()
    task = hub_models.bert_classifier()
    model = _compiled(task)
    expected = task.predict(x, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-6)
    np.testing.assert_allclose(model.predict_on_batch(x), expected, rtol=1e-5, atol=1e-6)
    logits = keras.ops.convert_to_numpy(task(task.preprocessor(x)))
    reference = float(np.mean(hub_models.loss()(y, logits)))
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0), reference, rtol=1e-5)
    np.testing.assert_allclose(model.test_on_batch(x, y), reference, rtol=1e-5)
    before = _weights(model)
    logs = model.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], reference, rtol=1e-5)
    assert any(not np.allclose(a, b) for a, b in zip(before, _weights(model)))


def test_strings_without_a_preprocessor_raise_a_clear_error():
    x, y = hub_models.text_data()
    task = hub_models.bert_classifier()
    task.preprocessor = None
    model = _compiled(task)
    with pytest.raises(ValueError, match="no preprocessor"):
        model.fit(x, y, batch_size=4, verbose=0)
    with pytest.raises(ValueError, match="no preprocessor"):
        model.train_on_batch(x, y)


def test_save_and_load_keep_the_preprocessor(tmp_path):
    x, y = hub_models.text_data()
    model = _compiled(hub_models.bert_classifier(), norm_scope="masked")
    model.fit(x, y, batch_size=4, verbose=0)
    path = str(tmp_path / "task.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is TaskSSAMModel
    assert loaded.norm_scope == "masked"
    assert loaded.model.preprocessor is not None
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_export_serves_the_task_on_preprocessed_inputs(tmp_path):
    x, _ = hub_models.text_data()
    task = hub_models.bert_classifier()
    model = _compiled(task)
    path = str(tmp_path / "served")
    model.export(path, verbose=False)
    served = tf.saved_model.load(path)
    features = {k: tf.cast(v, "int32") for k, v in task.preprocessor(x).items()}
    np.testing.assert_allclose(
        served.serve(features).numpy(), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_mixed_float16_backbone_is_loss_scaled():
    task = hub_models.bert_classifier(dtype="mixed_float16")
    model = _compiled(task)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    plain = _compiled(hub_models.bert_classifier())
    assert not isinstance(plain.optimizer, keras.optimizers.LossScaleOptimizer)


def test_the_pipeline_methods_taken_from_keras_hub_are_still_its_methods():
    """Fails when keras-hub changes `PipelineModel` (then re-check `keras_ssam.hub`, re-pin)."""
    pipeline = task_ssam_model.PipelineModel
    own = {name for name, value in vars(pipeline).items() if callable(value)}
    assert own == {"__init__", "__call__", "preprocess_samples"} | set(
        task_ssam_model.PIPELINE_METHODS
    )
    for name in task_ssam_model.PIPELINE_METHODS:
        assert getattr(TaskSSAMModel, name).__code__ is vars(pipeline)[name].__code__


def test_the_core_does_not_import_keras_hub_and_loads_a_task_model(tmp_path):
    """A fresh process: `import keras_ssam` leaves keras_hub out; a saved task model loads."""
    x, y = hub_models.text_data()
    model = _compiled(hub_models.bert_classifier())
    path = str(tmp_path / "task.keras")
    model.save(path)
    expected = model.predict(x, verbose=0)
    np.save(tmp_path / "expected.npy", expected)
    script = textwrap.dedent(
        f"""
        import sys
        import keras, numpy as np
        import keras_ssam
        plain = keras_ssam.SSAMModel(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
        assert "keras_hub" not in sys.modules, "the core imported keras_hub"
        loaded = keras.models.load_model({path!r})
        print(type(loaded).__name__)
        texts = np.array({list(x)!r})
        np.testing.assert_allclose(loaded.predict(texts, verbose=0),
                                   np.load({str(tmp_path / "expected.npy")!r}), rtol=1e-6)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "TaskSSAMModel"
