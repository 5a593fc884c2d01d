"""One recipe per method: the CLI and the benchmarks build the same configuration (issue 20)."""

import inspect
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_ssam import cli
from keras_ssam.experiments import data as data_lib
from keras_ssam.experiments import models, recipes

sys.path.insert(0, "benchmarks")
import evidence  # noqa: E402
import step_time  # noqa: E402


def stream():
    return tf.data.Dataset.from_tensor_slices(
        (np.zeros((4, 32, 32, 3), "float32"), np.zeros(4, "int64"))
    ).batch(2)


def cli_recipe(method, extra=()):
    argv = ["train", "--dataset", "cifar10", "--model", "small_cnn", "--optimizer", method]
    args = cli.resolve(cli.build_parser().parse_args([*argv, *extra]))
    info = data_lib.DatasetInfo("x", 10, (32, 32, 3), 50_000, 0, (0.0,) * 3, (1.0,) * 3)
    info.steps_per_epoch = data_lib.steps_per_epoch(info, args.batch_size, True)
    return args, recipes.describe(cli.build(args, info, train_data=stream()))


@pytest.mark.parametrize("method", recipes.METHODS)
def test_cli_and_evidence_build_the_same_method(method):
    # Non-default values everywhere, so that a dropped argument shows.
    args, from_cli = cli_recipe(
        method, ["--num-samples", "24", "--sparsity", "0.7", "--seed", "3", *RECIPE_ALPHA]
    )
    info = data_lib.DatasetInfo("x", 10, (32, 32, 3), 50_000, 0, (0.0,) * 3, (1.0,) * 3)
    info.steps_per_epoch = data_lib.steps_per_epoch(info, args.batch_size, True)
    settings = evidence.parse(
        [
            "--model", "small_cnn", "--lr", str(args.lr), "--rho", str(args.rho),
            "--wd-sgd", str(args.weight_decay), "--wd-sam", str(args.weight_decay),
            "--fisher-samples", str(args.num_samples),
        ]
    )  # fmt: skip
    steps = args.epochs * info.steps_per_epoch
    recipe = evidence.recipe_for(method, args.sparsity, info, settings, steps, stream(), seed=3)
    assert recipes.describe(recipe) == from_cli


# LookSAM's alpha as evidence.py's rows get it, the recipes' default (unused but
# recorded in the config by the rows that are not LookSAM's, which pins its own).
RECIPE_ALPHA = ["--alpha", str(inspect.signature(recipes.build).parameters["alpha"].default)]
CHEAP_FLAGS = {  # evidence.py's cheap rows and the CLI flags that train the same thing
    "interval-2": ["--sam-interval", "2"],
    "interval-5": ["--sam-interval", "5"],
    "looksam-5": ["--sam-interval", "5", "--between", "looksam", "--alpha", "0.7"],  # row pins 0.7
    "trigger": ["--trigger", *map(str, evidence.TRIGGER)],
    "momentum": ["--ascent", "momentum"],
    "late-25": ["--sam-epochs", "30", "40"],
    "early-25": ["--sam-epochs", "0", "10"],
}


@pytest.mark.parametrize("cheap", sorted(CHEAP_FLAGS))
@pytest.mark.parametrize("mask", ["sam", "ssam-f"])
def test_cli_flags_build_the_evidence_cheap_rows(cheap, mask):
    name = cheap if mask == "sam" else f"ssam-f-50+{cheap}"
    flags = ["--epochs", "40", "--seed", "3", "--sparsity", "0.5", *RECIPE_ALPHA,
             *CHEAP_FLAGS[cheap]]  # fmt: skip
    args, from_cli = cli_recipe(mask, flags)
    info = data_lib.DatasetInfo("x", 10, (32, 32, 3), 50_000, 0, (0.0,) * 3, (1.0,) * 3)
    info.steps_per_epoch = data_lib.steps_per_epoch(info, args.batch_size, True)
    settings = evidence.parse(
        [
            "--model", "small_cnn", "--lr", str(args.lr), "--epochs", "40",
            "--wd-sam", str(args.weight_decay), "--fisher-samples", str(args.num_samples),
        ]
    )  # fmt: skip
    spec = evidence.METHODS[name]
    recipe = evidence.recipe_for(
        evidence.RECIPES[spec.kind], spec.sparsity, info, settings, 40 * info.steps_per_epoch,
        stream(), seed=3, rho=args.rho, cheap=spec.cheap,
    )  # fmt: skip
    assert recipes.describe(recipe) == from_cli


def test_every_method_is_an_ssam_model_and_sgd_is_rho_zero():
    for method in recipes.METHODS:
        _, described = cli_recipe(method)
        assert described["model"] == "SSAMModel"
        assert (described["config"]["rho"] == 0.0) is (method == "sgd")
        scope = "masked" if method == "structured" else "all"
        assert described["config"]["norm_scope"] == scope


def test_cheap_step_flags_reach_the_model():
    _, described = cli_recipe("ssam-f", ["--sam-interval", "5", "--between", "looksam"])
    assert described["config"]["interval"] == 5 and described["config"]["between"] == "looksam"
    _, described = cli_recipe("sam", ["--ascent", "momentum", "--ascent-momentum", "0.5"])
    assert described["config"]["ascent"] == "momentum" and described["config"]["momentum"] == 0.5
    _, described = cli_recipe("sam", ["--trigger", "0.9", "0", "1"])
    trigger = described["config"]["trigger"]["config"]
    assert trigger == {"delta": 0.9, "lambda1": 0.0, "lambda2": 1.0, "total_steps": 200 * 390}


def test_step_time_builds_through_the_recipes():
    x = np.zeros((8, 32, 32, 3), "float32")
    y = np.zeros(8, "int64")
    model = step_time.build("small_cnn", "ssam-f 0.5", "fisher", 0.5, x, y)
    base = models.build_model("small_cnn", 10, (32, 32, 3))
    want = recipes.build("ssam-f", base, 0.05, rho=0.1, train_data=(x, y), num_samples=16)
    got = recipes.describe(recipes.Recipe(model, {"optimizer": model.optimizer,
                                                  "loss": model.loss}, []))  # fmt: skip
    assert got["config"] == recipes.describe(want)["config"]
    assert got["optimizer"] == recipes.describe(want)["optimizer"]


def test_bad_method():
    with pytest.raises(ValueError, match="method='adam'"):
        recipes.build("adam", keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), 0.1)
