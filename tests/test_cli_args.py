"""`keras-ssam analyze` checks its choices before it loads a model or data."""

import keras
import numpy as np
import pytest

from keras_ssam import analysis, cli
from keras_ssam.experiments import data


@pytest.fixture
def nothing_loads(monkeypatch, tmp_path):
    """A model file, and loaders that fail the test when called."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model or dataset was loaded before the arguments were checked")

    monkeypatch.setattr(keras.models, "load_model", refuse)
    monkeypatch.setattr(data, "load", refuse)
    path = tmp_path / "model.keras"
    path.write_bytes(b"")
    return str(path)


@pytest.mark.parametrize(
    "flag,value",
    [("--method", "lanczo"), ("--method", "Lanczos"), ("--hvp-mode", "backward")],
)
def test_analyze_rejects_a_typo_before_loading_anything(nothing_loads, flag, value):
    with pytest.raises(SystemExit) as raised:
        cli.run(["analyze", nothing_loads, "--hessian", flag, value])
    message = str(raised.value)
    assert f"{flag} must be one of" in message and f"received {value!r}" in message


@pytest.mark.parametrize("method", cli.METHODS)
@pytest.mark.parametrize("hvp_mode", cli.HVP_MODES)
def test_analyze_accepts_every_listed_choice(nothing_loads, method, hvp_mode):
    # The checks pass, and the run goes on to load the model (refused here).
    with pytest.raises(AssertionError, match="was loaded"):
        cli.run(["analyze", nothing_loads, "--hessian", "--method", method,
                 "--hvp-mode", hvp_mode])  # fmt: skip


@pytest.mark.parametrize("method", cli.METHODS)
@pytest.mark.parametrize("hvp_mode", cli.HVP_MODES)
def test_listed_choices_are_what_hessian_eigenvalues_runs(method, hvp_mode):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(4, 3)).astype("float32"), np.array([0, 1, 0, 1])
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    result = analysis.hessian_eigenvalues(
        model, (x, y), top_k=1, max_iter=2, verbose=0, method=method, hvp_mode=hvp_mode
    )
    assert len(result["eigenvalues"]) == 1


@pytest.mark.parametrize("argument", ["method", "hvp_mode"])
def test_a_value_the_cli_refuses_is_refused_by_hessian_eigenvalues(argument):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(loss="mse")
    data_ = (np.zeros((2, 3), "float32"), np.zeros((2, 2), "float32"))
    with pytest.raises(ValueError, match=f"received {argument}='other'"):
        analysis.hessian_eigenvalues(model, data_, verbose=0, **{argument: "other"})


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--sam-interval", "0"], "--sam-interval must be >= 1; received 0."),
        (["--between", "look"], "--between must be one of sgd, looksam; received 'look'."),
        (["--between", "looksam"], "--between looksam needs --sam-interval > 1 or --trigger."),
        (["--sam-interval", "2", "--alpha", "-1"], "--alpha must be >= 0; received -1.0."),
        (["--sam-interval", "2", "--trigger", "0.9", "0", "1"], "pass one of them"),
        (["--trigger", "1.5", "0", "1"], "--trigger DELTA must be in (0, 1); received 1.5."),
        (["--ascent", "mom"], "--ascent must be one of gradient, momentum; received 'mom'."),
        (["--ascent", "momentum", "--ascent-momentum", "1"], "must be in [0, 1); received 1.0."),
        (["--ascent", "momentum", "--sam-interval", "2"], "does not combine"),
        (["--sam-epochs", "5", "5"], "--sam-epochs needs 0 <= START < STOP; received [5, 5]."),
        (["--sam-epochs", "-1", "3"], "--sam-epochs needs 0 <= START < STOP; received [-1, 3]."),
    ],
)
def test_train_rejects_bad_step_kind_flags_before_loading_anything(monkeypatch, argv, message):
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the arguments were checked")

    monkeypatch.setattr(data, "load", refuse)
    with pytest.raises(SystemExit) as raised:
        cli.run(["train", "--dataset", "digits", *argv])
    assert message in str(raised.value)
