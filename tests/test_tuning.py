"""Rho search on KerasTuner (issue 29): the grid point chosen, resuming, `--rho-from`."""

import json
import re

import keras
import numpy as np
import pytest

from keras_ssam import cli, tuning
from keras_ssam.experiments import data


def row(trial, rho, last, best, alpha=None, interval=None):
    return {
        "method": "sam",
        "trial": trial,
        "rho": rho,
        "alpha": alpha,
        "interval": interval,
        "val_accuracy_last": last,
        "val_accuracy_best": best,
        "best_epoch": 0,
        "loss_last": 1.0,
    }


def test_chosen_scores_the_last_or_the_best_epoch_and_breaks_ties_to_the_smaller_rho():
    # The second run peaks early and then memorizes: best-epoch scoring prefers it.
    rows = [row("0", 0.1, 0.80, 0.82), row("1", 0.3, 0.60, 0.90), row("2", 0.03, 0.80, 0.81)]
    assert tuning.chosen(rows, "last")["rho"] == 0.03
    assert tuning.chosen(rows, "best")["rho"] == 0.3
    assert tuning.chosen([], "last") is None


def tiny_task():
    train, validation, info = data.load(
        "digits", batch_size=64, seed=0, validation_split=0.2, train_limit=600
    )

    def build_base():
        layers = [keras.layers.Flatten(), keras.layers.Dense(32, "relu"), keras.layers.Dense(10)]
        return keras.Sequential([keras.Input(info.input_shape), *layers])

    return build_base, info, train, validation


class Counting(tuning.RhoHyperModel):
    fits = 0

    def fit(self, *args, **kwargs):
        Counting.fits += 1
        return super().fit(*args, **kwargs)


@pytest.mark.parametrize("method", ["sam", pytest.param("momentum", marks=pytest.mark.slow)])
def test_search_avoids_the_rho_that_breaks_training_and_resumes(tmp_path, method):
    # rho 1e4 throws every ascent off the data (chance); 0.02 and 0.05 train alike.
    build_base, info, train, validation = tiny_task()
    grid = [0.02, 0.05, 1e4]

    def search(trials):
        model = Counting(method, build_base, info, train, validation, 3, 0.1, grid)
        return tuning.search_method(model, str(tmp_path), "last", trials)

    Counting.fits = 0
    assert len(search(trials=1)) == 1 and Counting.fits == 1
    rows = search(trials=None)  # resumes: only the two remaining grid points train
    assert Counting.fits == 3 and sorted(r["rho"] for r in rows) == grid
    by_rho = {r["rho"]: r["val_accuracy_last"] for r in rows}
    assert min(by_rho[0.02], by_rho[0.05]) > by_rho[1e4] + 0.3
    assert tuning.chosen(rows)["rho"] in (0.02, 0.05)
    assert search(trials=None) == rows and Counting.fits == 3  # nothing left to train


def test_trials_are_seeded_alike():
    # KerasTuner clears the session before each build: each trial seeds itself.
    build_base, info, train, validation = tiny_task()
    model = tuning.RhoHyperModel("sam", build_base, info, train, validation, 1, 0.1, [0.05])
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    first = [np.asarray(w) for w in model.build(hp).weights]
    keras.backend.clear_session()
    keras.utils.set_random_seed(123)
    second = [np.asarray(w) for w in model.build(hp).weights]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def tuning_file(tmp_path, method="momentum", **context):
    result = {
        "context": dict(dict(dataset="digits", model="small_cnn", label_noise=0.4), **context),
        "score": "last",
        "epochs": 3,
        "methods": {
            method: {"trials": [row("0", 0.15, 0.5, 0.6)], "chosen": row("0", 0.15, 0.5, 0.6)}
        },
    }
    tuning.write(result, str(tmp_path))
    return str(tmp_path / "tuning.json")


def train_args(*argv):
    return cli.resolve(cli.parse(["train", "--label-noise", "0.4", *argv]))


def test_rho_from_takes_the_chosen_rho_of_the_same_method_and_data(tmp_path):
    path = tuning_file(tmp_path)
    assert train_args("--optimizer", "sam", "--ascent", "momentum", "--rho-from", path).rho == 0.15
    text = (tmp_path / "tuning.txt").read_text()
    assert "momentum" in text and "0.15" in text and " *" in text


@pytest.mark.parametrize(
    "argv,context,message",
    [
        (["--optimizer", "sam"], {}, "tuned momentum, not sam"),
        (["--optimizer", "ssam-f", "--ascent", "momentum"], {}, "not ssam-f+momentum"),
        (
            ["--optimizer", "sam", "--ascent", "momentum"],
            {"dataset": "cifar10"},
            "tuned with --dataset cifar10, this run has digits",
        ),
        (
            ["--optimizer", "sam", "--ascent", "momentum"],
            {"label_noise": 0.0},
            "tuned with --label-noise 0.0, this run has 0.4",
        ),
        (
            ["--optimizer", "sam", "--ascent", "momentum", "--rho", "0.1"],
            {},
            "--rho and --rho-from both set rho",
        ),
    ],
)
def test_rho_from_refuses_a_file_for_another_method_or_data(tmp_path, argv, context, message):
    path = tuning_file(tmp_path, **context)
    with pytest.raises(SystemExit, match=re.escape(message)):
        train_args(*argv, "--rho-from", path)


def test_rho_from_refuses_another_looksam_alpha(tmp_path):
    pick = row("0", 0.2, 0.5, 0.6, alpha=0.1, interval=5)
    result = {
        "context": {"dataset": "digits", "model": "small_cnn", "label_noise": 0.4},
        "score": "last",
        "methods": {"looksam": {"trials": [pick], "chosen": pick}},
    }
    (tmp_path / "tuning.json").write_text(json.dumps(result))
    looksam = ["--optimizer", "sam", "--sam-interval", "5", "--between", "looksam"]
    path = str(tmp_path / "tuning.json")
    assert train_args(*looksam, "--rho-from", path).rho == 0.2
    with pytest.raises(SystemExit, match="chosen at --alpha 0.1; pass --alpha 0.1"):
        train_args(*looksam, "--alpha", "0.7", "--rho-from", path)


@pytest.mark.slow  # two CLI runs; the search itself is in the default run above
def test_tune_command_writes_the_result_train_reads(tmp_path):
    out = tmp_path / "tune"
    result = cli.run(
        [
            "tune",
            "--methods",
            "sam",
            "sgd",
            "--rho-grid",
            "0.05",
            "1e4",
            "--epochs",
            "2",
            "--train-limit",
            "300",
            "--verbose",
            "0",
            "--out",
            str(out),
        ]
    )
    saved = json.loads((out / "tuning.json").read_text())
    assert saved["methods"]["sam"]["chosen"]["rho"] == result["methods"]["sam"]["chosen"]["rho"]
    assert len(saved["methods"]["sam"]["trials"]) == 2
    assert len(saved["methods"]["sgd"]["trials"]) == 1  # SGD has no rho to search
    assert (out / "tuning.png").stat().st_size > 0
    args = train_args(
        "--optimizer", "sam", "--label-noise", "0", "--rho-from", str(out / "tuning.json")
    )
    assert args.rho == saved["methods"]["sam"]["chosen"]["rho"]


def test_reading_a_tuning_file_needs_no_keras_tuner(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "keras_tuner", None)  # as if the extra were missing
    monkeypatch.delitem(sys.modules, "keras_ssam.tuning.search", raising=False)
    monkeypatch.delattr(tuning, "search", raising=False)
    path = tuning_file(tmp_path)
    assert train_args("--optimizer", "sam", "--ascent", "momentum", "--rho-from", path).rho == 0.15
    with pytest.raises(ImportError, match=re.escape("pip install keras-ssam[tune]")):
        tuning.RhoHyperModel  # noqa: B018
