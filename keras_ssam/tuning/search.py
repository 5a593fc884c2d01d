"""`RhoHyperModel`, `GridOracle` and `tune`: the KerasTuner half of `keras_ssam.tuning`."""

import itertools
import math

import keras

try:
    import keras_tuner
except ImportError as err:  # pragma: no cover - the extra is installed in CI
    raise ImportError("keras_ssam.tuning needs KerasTuner: pip install keras-ssam[tune]") from err

from keras_ssam.experiments import data, recipes
from keras_ssam.tuning.methods import USES_ALPHA, USES_INTERVAL, recipe_arguments
from keras_ssam.tuning.results import chosen

SCORES = ("last", "best")


class GridOracle(keras_tuner.Oracle):
    """Each combination of the `Choice` hyperparameters once, in grid order.

    The next point comes from the trials on disk alone, so a reloaded search
    goes on where it stopped (KerasTuner's `GridSearch` keeps its queue of next
    combinations in memory and stops after a reload). A trial cut short is
    retried by KerasTuner itself.
    """

    def populate_space(self, trial_id):
        space = self.get_space().space
        tried = [trial.hyperparameters.values for trial in self.trials.values()]
        for combination in itertools.product(*(hp.values for hp in space)):
            values = {hp.name: value for hp, value in zip(space, combination)}
            if values not in tried:
                return {"status": "RUNNING", "values": values}
        return {"status": "STOPPED", "values": None}


class RhoHyperModel(keras_tuner.HyperModel):
    """One method's short runs over a grid of rho (and alpha, interval where they apply).

    KerasTuner calls `keras.backend.clear_session()` before each `build`, so
    `build` seeds every trial with `seed`: each rho starts from the same
    weights and sees the same batches. Callbacks passed to `search` are
    deep-copied, and mask callbacks hold datasets: they are made here, per
    trial, by `recipes.build`, and never passed to `search`.

    Args:
        method: One of `TUNED_METHODS`.
        build_base: Callable `() -> keras.Model`, the model to wrap.
        info: `experiments.data.DatasetInfo` of `train` (its epoch keys the order).
        train: The training stream (`experiments.data.load(...)[0]`).
        validation: Validation batches, carved from the training data.
        epochs: Int, epochs per trial (the cosine schedule spans them).
        learning_rate: Float, the schedule's peak.
        rho_grid, alpha_grid, interval_grid: Lists of values to try.
        seed: Int. Defaults to `0`.
        recipe_kwargs: Further `recipes.build` arguments (weight decay, sparsity, ...).
    """

    def __init__(
        self,
        method,
        build_base,
        info,
        train,
        validation,
        epochs,
        learning_rate,
        rho_grid,
        alpha_grid=(0.1,),
        interval_grid=(5,),
        seed=0,
        recipe_kwargs=None,
    ):
        super().__init__(name=method)
        recipe_arguments(method, 0.0)  # checks the name
        self.method = method
        self.build_base = build_base
        self.info = info
        self.train = train
        self.validation = validation
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.rho_grid = [float(r) for r in rho_grid]
        self.alpha_grid = [float(a) for a in alpha_grid]
        self.interval_grid = [int(k) for k in interval_grid]
        self.seed = seed
        self.recipe_kwargs = dict(recipe_kwargs or {})
        self.recipe = None

    def point(self, hp):
        """The grid point of `hp`: rho, alpha, interval (None where not searched)."""
        rho = 0.0 if self.method == "sgd" else hp.Choice("rho", self.rho_grid)
        alpha = hp.Choice("alpha", self.alpha_grid) if self.method in USES_ALPHA else None
        interval = None
        if self.method in USES_INTERVAL:
            interval = hp.Choice("interval", self.interval_grid)
        return rho, alpha, interval

    def build(self, hp):
        keras.utils.set_random_seed(self.seed)
        kind, kwargs = recipe_arguments(self.method, *self.point(hp))
        steps = self.epochs * self.info.steps_per_epoch
        schedule = keras.optimizers.schedules.CosineDecay(self.learning_rate, steps)
        self.recipe = recipes.build(
            kind,
            self.build_base(),
            schedule,
            train_data=self.train,
            seed=self.seed,
            **self.recipe_kwargs,
            **kwargs,
        )
        return self.recipe.compile()

    def fit(self, hp, model, *args, callbacks=(), **kwargs):
        # The epoch callback first: the mask callbacks read the stream at that epoch.
        callbacks = [data.epoch_callback(self.info), *self.recipe.callbacks, *callbacks]
        history = model.fit(
            self.train,
            validation_data=self.validation,
            epochs=self.epochs,
            callbacks=callbacks,
            verbose=0,
            shuffle=False,
        )
        accuracy = history.history["val_accuracy"]
        loss = history.history["loss"]
        return {
            "val_accuracy_last": float(accuracy[-1]),
            "val_accuracy_best": float(max(accuracy)),
            "best_epoch": int(accuracy.index(max(accuracy))),
            "loss_last": float(loss[-1]) if math.isfinite(loss[-1]) else 1e30,
        }


def search_method(hypermodel, directory, score="last", trials=None, seed=0, verbose=0):
    """Runs (or resumes) one method's grid search; returns its trial records.

    `trials` caps the trials of the search, counted over its reruns.

    The tuner's state lives in `directory/<method>`: a rerun trains only the
    trials that did not complete (KerasTuner resumes at trial granularity).
    """
    if score not in SCORES:
        raise ValueError(f"`score` must be one of {SCORES}; received score={score!r}.")
    objective = keras_tuner.Objective(f"val_accuracy_{score}", "max")
    tuner = keras_tuner.Tuner(
        oracle=GridOracle(objective=objective, max_trials=trials, seed=seed),
        hypermodel=hypermodel,
        directory=directory,
        project_name=hypermodel.method,
        overwrite=False,
    )
    tuner.search(verbose=verbose)
    return records(tuner.oracle, hypermodel.method)


def records(oracle, method):
    """The completed trials of `oracle`: grid point and scores, in trial order."""
    rows = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        if trial.status != "COMPLETED":
            continue
        values = trial.hyperparameters.values
        row = {
            "method": method,
            "trial": trial_id,
            "rho": values.get("rho", 0.0),
            "alpha": values.get("alpha"),
            "interval": values.get("interval"),
        }
        for name in ("val_accuracy_last", "val_accuracy_best", "best_epoch", "loss_last"):
            row[name] = trial.metrics.get_last_value(name)
        row["best_epoch"] = int(row["best_epoch"])
        rows.append(row)
    return rows


def tune(
    methods,
    build_base,
    info,
    train,
    validation,
    epochs,
    learning_rate,
    rho_grid,
    directory,
    alpha_grid=(0.1,),
    interval_grid=(5,),
    score="last",
    trials=None,
    seed=0,
    recipe_kwargs=None,
    context=None,
    verbose=0,
):
    """Searches each method's grid; returns the result `write` saves.

    Scored by validation accuracy (`score`: `"last"` epoch or `"best"` epoch),
    the chosen point is the best score, ties to the smaller rho. `context`
    (dataset, model, label noise) is recorded for `rho_from`'s checks.
    """
    result = {"context": dict(context or {}), "score": score, "epochs": epochs, "methods": {}}
    for method in methods:
        hypermodel = RhoHyperModel(
            method,
            build_base,
            info,
            train,
            validation,
            epochs,
            learning_rate,
            rho_grid,
            alpha_grid,
            interval_grid,
            seed,
            recipe_kwargs,
        )
        rows = search_method(hypermodel, directory, score, trials, seed, verbose)
        result["methods"][method] = {"trials": rows, "chosen": chosen(rows, score)}
    return result
