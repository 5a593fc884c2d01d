"""SSAM-F on KerasHub models: nested (dict) inputs, raw strings, sparse embedding gradients."""

import logging
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
from keras_ssam.masks import fisher_mask  # noqa: E402


def _loop_reference(task, x, y, variables):
    """sum_i (d loss_i / dw)^2 one example at a time, dense, in inference mode."""
    totals = [np.zeros(v.shape, "float32") for v in variables]
    for i in range(len(y)):
        xi = tf.nest.map_structure(lambda a, i=i: a[i : i + 1], x)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(hub_models.loss()(y[i : i + 1], task(xi, training=False)))
        for total, g in zip(totals, tape.gradient(loss, variables)):
            if g is not None:
                total += np.square(tf.convert_to_tensor(g).numpy())
    return totals


def _model(task):
    model = keras_ssam.SSAMModel(task)
    model.compile(optimizer="sgd", loss=hub_models.loss())
    return model


def test_fisher_on_raw_strings_and_on_the_dict_matches_a_loop_reference():
    """Raw strings through the Task's preprocessor, or BERT's dict: the same exact scores.

    One text repeats a word, so the embedding's rows are summed before squaring.
    """
    x, y = hub_models.text_data()
    task = hub_models.bert_classifier(dropout=0.1)
    model = _model(task)
    callback = keras_ssam.FisherMask(x, y, num_samples=8, chunk_size=3, training=False)
    callback.set_model(model)
    got = callback.fisher_scores(x, y)
    features, labels = task.preprocessor(x, y)
    features = {k: np.asarray(v) for k, v in features.items()}
    variables = model.masked_variables
    expected = _loop_reference(task, features, labels, variables)
    for v, a, b in zip(variables, got, expected):
        np.testing.assert_allclose(a.numpy(), b, rtol=2e-4, atol=1e-10, err_msg=v.path)
    assert np.count_nonzero(got[0].numpy().sum(axis=1)) > 5  # the token embedding has rows

    task.preprocessor = None  # the dict itself, given to FisherMask as arrays
    by_dict = keras_ssam.FisherMask(features, np.asarray(labels), chunk_size=5, training=False)
    by_dict.set_model(model)
    drawn_x, drawn_y = by_dict.sample()
    assert set(drawn_x) == set(features) and len(drawn_y) == len(y)
    for a, b in zip(by_dict.fisher_scores(features, np.asarray(labels)), got):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-4, atol=1e-10)


def test_fisher_mask_sets_a_mask_on_a_text_task():
    x, y = hub_models.text_data()
    model = _model(hub_models.bert_classifier())
    callback = keras_ssam.FisherMask(x, y, num_samples=8, sparsity=0.5)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[callback])
    np.testing.assert_allclose(model.mask_density(), 0.5, atol=0.01)


def test_vectorize_is_validated_and_chosen_per_model():
    with pytest.raises(ValueError, match="vectorize"):
        keras_ssam.FisherMask(np.zeros((2, 1)), np.zeros(2), vectorize="yes")
    assert not fisher_mask.vectorizes(hub_models.bert_classifier())
    dense = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert fisher_mask.vectorizes(dense)


@pytest.mark.slow
def test_fisher_pass_on_a_30000_by_128_vocabulary_has_bounded_memory():
    """Peak host memory of the Fisher pass on BERT with a 30,000 x 128 token embedding.

    Densifying each example's embedding gradient would cost chunk_size x 15 MB
    (480 MB for 32 examples); the loop over sparse rows stays near the totals.
    """
    script = textwrap.dedent(
        """
        import resource, numpy as np, keras, keras_hub, keras_ssam
        keras.utils.set_random_seed(0)
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=30000, num_layers=1, num_heads=2, hidden_dim=128,
            intermediate_dim=64, max_sequence_length=16)
        task = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)
        model = keras_ssam.SSAMModel(task)
        model.compile(optimizer="sgd",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        rng = np.random.default_rng(0)
        n = 32
        x = {"token_ids": rng.integers(0, 30000, (n, 16)).astype("int32"),
             "segment_ids": np.zeros((n, 16), "int32"),
             "padding_mask": np.ones((n, 16), "int32")}
        y = (np.arange(n) % 2).astype("int32")
        callback = keras_ssam.FisherMask(x, y, num_samples=n, chunk_size=n)
        callback.set_model(model)
        callback.fisher_scores({k: v[:2] for k, v in x.items()}, y[:2])  # traces once
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scores = callback.fisher_scores(x, y)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows = int(np.count_nonzero(np.asarray(scores[0]).sum(axis=1)))
        print((after - before) / 1024, rows)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    grown_mb, rows = done.stdout.split()[-2:]
    assert float(grown_mb) < 200, grown_mb  # vs 480 MB for dense per-example copies
    assert int(rows) > 400  # 32 x 16 random tokens: the looked-up rows have scores


def test_pfor_while_loop_warning_is_dropped_for_the_fisher_pass_only():
    """pfor's "Conv2DBackpropFilter uses a while_loop. Fix that!" no longer reaches the logs."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = tf.get_logger()
    logger.addHandler(handler)
    try:
        base = keras.Sequential(
            [
                keras.Input((6, 6, 2)),
                keras.layers.Conv2D(3, 3),
                keras.layers.Flatten(),
                keras.layers.Dense(2),
            ]
        )
        model = keras_ssam.SSAMModel(base)
        model.compile(optimizer="sgd", loss=hub_models.loss())
        x = np.random.default_rng(0).normal(size=(4, 6, 6, 2)).astype("float32")
        callback = keras_ssam.FisherMask(x, np.array([0, 1, 0, 1]), chunk_size=4)
        callback.set_model(model)
        callback.fisher_scores(x, np.array([0, 1, 0, 1]))
        assert not [r for r in records if "Fix that" in r.getMessage()]
        assert not logger.filters  # scoped to the call
        logger.warning("Conv2DBackpropFilter uses a while_loop. Fix that!")
        assert [r for r in records if "Fix that" in r.getMessage()]  # the handler sees it
    finally:
        logger.removeHandler(handler)
