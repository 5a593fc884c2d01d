"""Resume, determinism, non-finite steps, mismatched files, atomic saves."""

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from reference import make_data, make_mlp, make_params

from keras_ssam import SSAMModel

HERE = os.path.dirname(__file__)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def run(*args, check=True):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, "resume_run.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def load(path):
    data = np.load(path)
    return [data[k] for k in data.files]


def assert_bitwise(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fisher", "dynamic"])
def test_resume_after_exception_equals_uninterrupted_run(tmp_path, strategy):
    run("full", strategy, str(tmp_path / "a.npz"))
    run("full", strategy, str(tmp_path / "b.npz"))
    run("raise", strategy, str(tmp_path / "c.npz"), str(tmp_path / "backup"))
    full = load(tmp_path / "a.npz")
    assert_bitwise(full, load(tmp_path / "b.npz"))  # determinism: same seed, same bits
    assert_bitwise(full, load(tmp_path / "c.npz"))  # resumed == uninterrupted


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    run("full", "fisher", str(tmp_path / "a.npz"))
    killed = run("kill", "fisher", str(tmp_path / "x.npz"), str(tmp_path / "backup"), check=False)
    assert killed.returncode == 3 and not (tmp_path / "x.npz").exists()
    run("resume", "fisher", str(tmp_path / "b.npz"), str(tmp_path / "backup"))
    assert_bitwise(load(tmp_path / "a.npz"), load(tmp_path / "b.npz"))


def _nan_data():
    x, y = make_data()
    # Poisons the second batch of 8 through its sample weight. A NaN input
    # does not reach the loss everywhere: on an AVX-512 CPU, graph-mode
    # TensorFlow logged a finite loss for it (eager and XLA did not).
    weights = np.ones(len(y), "float32")
    weights[10] = np.nan
    return x, y, weights


@pytest.mark.parametrize("mode", ["skip", "stop"])
def test_non_finite_step_warns_and_skips_or_stops(mode):
    x, y, weights = _nan_data()
    model = SSAMModel(make_mlp(make_params()), rho=0.1, non_finite=mode)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS)
    seen = []
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: seen.append(
            [w.copy() for w in model.model.get_weights()]
        )
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(
            x,
            y,
            sample_weight=weights,
            batch_size=8,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=[probe],
        )
    assert any("non-finite" in str(w.message) for w in caught)
    assert int(model.non_finite_steps.numpy()) == (1 if mode == "stop" else 2)
    assert_bitwise(seen[0], seen[1])  # the poisoned step changed nothing
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    assert len(seen) == (2 if mode == "stop" else 6)


def test_terminate_on_nan_still_works():
    x, y, weights = _nan_data()
    model = SSAMModel(make_mlp(make_params()), rho=0.1)
    model.compile(optimizer="sgd", loss=LOSS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = model.fit(
            x,
            y,
            sample_weight=weights,
            batch_size=8,
            epochs=3,
            shuffle=False,
            verbose=0,
            callbacks=[keras.callbacks.TerminateOnNaN()],
        )
    assert len(history.history.get("loss", [])) <= 1
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_loading_state_with_mismatched_masks_fails_clearly(tmp_path):
    source = SSAMModel(make_mlp(make_params()))
    path = str(tmp_path / "m.weights.h5")
    source.save_weights(path)
    inner = make_mlp(make_params())
    inner.add(keras.layers.Dense(2))  # two variables more: two masks more
    target = SSAMModel(inner)
    before = [m.numpy().copy() for m in target.masks]
    with pytest.raises(ValueError, match="SSAM variables"):
        target.load_weights(path)
    assert_bitwise(before, [m.numpy() for m in target.masks])


def test_saves_are_atomic(tmp_path, monkeypatch):
    model = SSAMModel(make_mlp(make_params()))
    path = tmp_path / "m.weights.h5"
    model.save_weights(str(path))
    good = path.read_bytes()

    def broken(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(keras.Model, "save_weights", broken)
    with pytest.raises(KeyboardInterrupt):
        model.save_weights(str(path))
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["m.weights.h5"]


def test_bad_non_finite_choice():
    with pytest.raises(ValueError, match="non_finite='ignore'"):
        SSAMModel(make_mlp(make_params()), non_finite="ignore")


def test_tf_train_checkpoint_carries_masks_and_state(tmp_path):
    import tensorflow as tf

    source = SSAMModel(make_mlp(make_params()), rho=0.3)
    rng = np.random.default_rng(0)
    masks = [(rng.random(m.shape) < 0.5).astype("float32") for m in source.masks]
    source.set_masks(masks)
    source.masks_initialized.assign(1)
    path = tf.train.Checkpoint(model=source).save(str(tmp_path / "ckpt"))
    target = SSAMModel(make_mlp(make_params()))
    tf.train.Checkpoint(model=target).restore(path).assert_existing_objects_matched()
    assert_bitwise(masks, [m.numpy() for m in target.masks])
    assert target.rho == pytest.approx(0.3) and int(target.masks_initialized.numpy()) == 1
