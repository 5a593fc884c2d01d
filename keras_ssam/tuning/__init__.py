"""Rho search on KerasTuner: which rho (and alpha, interval) a method needs on a task.

`tune` runs one KerasTuner grid search (`GridOracle`) per method over `RhoHyperModel`:
short runs on a validation split carved from the training data (never the
test set), scored by validation accuracy. `results` writes `tuning.json`, a
figure and a table, and reads a chosen rho back (`keras-ssam train
--rho-from`). KerasTuner is an optional extra: `pip install keras-ssam[tune]`;
only `RhoHyperModel` and `tune` need it.

Example:

```python
from keras_ssam import tuning

result = tuning.tune(["sam", "momentum"], build_base, info, train, validation,
                     epochs=5, learning_rate=0.05, rho_grid=(0.01, 0.1, 1.0),
                     directory="runs/tuning/tuner")
print(tuning.table(result))
```
"""

from keras_ssam.tuning.methods import (
    TUNED_METHODS,
    USES_ALPHA,
    USES_INTERVAL,
    method_name,
    recipe_arguments,
)
from keras_ssam.tuning.results import chosen, plot, read, rho_from, table, write

_NEEDS_KERAS_TUNER = ("GridOracle", "RhoHyperModel", "tune", "search_method")


def __getattr__(name):
    if name in _NEEDS_KERAS_TUNER:
        from keras_ssam.tuning import search

        return getattr(search, name)
    raise AttributeError(f"module 'keras_ssam.tuning' has no attribute {name!r}")


__all__ = [
    "TUNED_METHODS",
    "USES_ALPHA",
    "USES_INTERVAL",
    "RhoHyperModel",
    "chosen",
    "method_name",
    "plot",
    "read",
    "recipe_arguments",
    "rho_from",
    "search_method",
    "table",
    "tune",
    "write",
]
