"""`CollapseGuard`: warn (and optionally stop) when training sits at chance level."""

import math
import numbers
import warnings

import keras


def _check_fraction(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a float; received {name}={value!r}.")
    if not 0.0 < value < 1.0:
        raise ValueError(f"`{name}` must be in (0, 1); received {name}={value!r}.")
    return float(value)


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}; received {name}={value!r}.")
    return int(value)


@keras.saving.register_keras_serializable(package="keras_ssam")
class CollapseGuard(keras.callbacks.Callback):
    """Warns once when training has collapsed to a near-uniform prediction.

    A rho (or LookSAM alpha) that is too large does not make the loss
    non-finite, so `TerminateOnNaN` and `SSAMModel`'s non-finite skip do not
    see it: the model settles near a uniform prediction and trains at about
    chance level (in docs/EVIDENCE.md's regime: 15-20 % training accuracy on
    10 classes, loss near ln 10 = 2.30). After the warm-up, an epoch counts as
    collapsed when both the training accuracy is below `chance +
    accuracy_margin * (1 - chance)`, `chance = 1 / num_classes`, and the loss
    is above `(1 - loss_margin) * ln(num_classes)`, the loss of a uniform
    prediction. After `patience` collapsed epochs in a row the guard logs one
    warning naming rho (and LookSAM's alpha) and `keras-ssam tune`, and stops
    training if `stop_training`. Epochs with a non-finite loss are left to
    `TerminateOnNaN` (they neither count nor reset the count).

    Under momentum ascent (`SSAMModel(ascent="momentum")`) the logged loss
    and accuracy are those at the perturbed point `w + e`, not at `w`: a
    collapse there means that rho is too large for the steps to learn (in the
    measured runs the test accuracy at `w` fell to chance as well).

    The defaults were checked on the 258 per-epoch training curves of
    docs/evidence*.json (40 epochs of 7 steps, 40 % label noise): the guard
    fires on every run whose test accuracy ended below 21.5 % (SGD: 33 %)
    and on none that ended above 26 %. Such slow regimes stay near chance
    for their first few epochs, hence a warm-up proportional to the run.

    Args:
        num_classes: Integer >= 2. The number of classes (chance level is
            `1 / num_classes`).
        accuracy_margin: Float in (0, 1). How far above chance the accuracy
            may be, as a share of the distance from chance to 1 (for 10
            classes, 0.1 means below 19 %). Defaults to `0.1`.
        loss_margin: Float in (0, 1). How far below `ln(num_classes)` the
            loss may be, as a share of it (for 10 classes, 0.05 means above
            2.19). Defaults to `0.05`.
        patience: Integer >= 1. Collapsed epochs in a row before the guard
            acts. Defaults to `3`.
        start_from_epoch: Integer >= 0 or `None`. Epochs of warm-up (from the
            start of training, as `EarlyStopping`'s) whose logs are not
            judged; `None` means a quarter of the `epochs` passed to `fit()`.
            Defaults to `None`.
        stop_training: Boolean. Also stop training when it acts. Defaults to
            `False`.
        accuracy_key: String. The log entry of the training accuracy.
            Defaults to `"accuracy"`.
        loss_key: String. The log entry of the training loss. Defaults to
            `"loss"`.

    After `fit()`, `collapsed_epoch` is the epoch (from 0) at which the guard
    acted, or `None`.

    Example:

    ```python
    model = keras_ssam.SSAMModel(base, rho=0.3, interval=5, between="looksam")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    guard = keras_ssam.CollapseGuard(num_classes=10, stop_training=True)
    model.fit(x, y, epochs=40, callbacks=[guard])
    ```
    """

    def __init__(
        self,
        num_classes,
        accuracy_margin=0.1,
        loss_margin=0.05,
        patience=3,
        start_from_epoch=None,
        stop_training=False,
        accuracy_key="accuracy",
        loss_key="loss",
    ):
        super().__init__()
        self.num_classes = _check_int("num_classes", num_classes, 2)
        self.accuracy_margin = _check_fraction("accuracy_margin", accuracy_margin)
        self.loss_margin = _check_fraction("loss_margin", loss_margin)
        self.patience = _check_int("patience", patience, 1)
        if start_from_epoch is not None:
            start_from_epoch = _check_int("start_from_epoch", start_from_epoch, 0)
        self.start_from_epoch = start_from_epoch
        if not isinstance(stop_training, bool):
            raise TypeError(
                f"`stop_training` must be a bool; received stop_training={stop_training!r}."
            )
        self.stop_training = stop_training
        for name, value in (("accuracy_key", accuracy_key), ("loss_key", loss_key)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"`{name}` must be a non-empty string; received {name}={value!r}.")
        self.accuracy_key = accuracy_key
        self.loss_key = loss_key
        self.collapsed_epoch = None
        self._run = 0
        self._said_missing = False

    @property
    def chance(self):
        """The accuracy of a uniform guess, `1 / num_classes`."""
        return 1.0 / self.num_classes

    @property
    def accuracy_limit(self):
        """An epoch's accuracy below this counts as near chance."""
        return self.chance + self.accuracy_margin * (1.0 - self.chance)

    @property
    def loss_limit(self):
        """An epoch's loss above this counts as near a uniform prediction's."""
        return (1.0 - self.loss_margin) * math.log(self.num_classes)

    def warmup_epochs(self):
        """The epochs not judged: `start_from_epoch`, or a quarter of `fit`'s epochs."""
        if self.start_from_epoch is not None:
            return self.start_from_epoch
        return int((self.params or {}).get("epochs") or 0) // 4

    def on_train_begin(self, logs=None):
        self.collapsed_epoch = None
        self._run = 0

    def is_collapsed(self, logs):
        """Whether one epoch's logs look collapsed; `None` when they cannot say."""
        if self.accuracy_key not in logs or self.loss_key not in logs:
            if not self._said_missing:
                self._said_missing = True
                warnings.warn(
                    f"CollapseGuard needs `{self.accuracy_key}` and `{self.loss_key}` in the "
                    f"training logs (compile with metrics=['accuracy'], or set accuracy_key= "
                    f"and loss_key=); the logs have {sorted(logs)}. It does nothing.",
                    stacklevel=2,
                )
            return None
        accuracy, loss = float(logs[self.accuracy_key]), float(logs[self.loss_key])
        if not (math.isfinite(accuracy) and math.isfinite(loss)):
            return None  # TerminateOnNaN's and the non-finite skip's business
        return accuracy < self.accuracy_limit and loss > self.loss_limit

    def on_epoch_end(self, epoch, logs=None):
        if self.collapsed_epoch is not None or epoch < self.warmup_epochs():
            return
        collapsed = self.is_collapsed(logs or {})
        if collapsed is None:
            return
        self._run = self._run + 1 if collapsed else 0
        if self._run >= self.patience:
            self.collapsed_epoch = epoch
            warnings.warn(self.message(epoch, logs), stacklevel=2)
            if self.stop_training:
                self.model.stop_training = True

    def message(self, epoch, logs):
        """The warning: what was seen, and which knobs to turn."""
        accuracy, loss = float(logs[self.accuracy_key]), float(logs[self.loss_key])
        seen = (
            f"CollapseGuard: training looks collapsed at epoch {epoch + 1}: for "
            f"{self.patience} epochs the training accuracy stayed below "
            f"{self.accuracy_limit:.3f} (now {accuracy:.3f}; chance is {self.chance:.3f} for "
            f"{self.num_classes} classes) and the loss above {self.loss_limit:.3f} (now "
            f"{loss:.3f}; a uniform prediction's is ln {self.num_classes} = "
            f"{math.log(self.num_classes):.3f})."
        )
        model = self.model
        knobs = []
        if hasattr(model, "rho"):
            knobs.append(f"rho={float(model.rho):g}")
        if getattr(model, "between", None) == "looksam":
            knobs.append(f"LookSAM alpha={model.alpha:g}")
        if getattr(model, "ascent", None) == "momentum":
            knobs.append("momentum ascent (whose logged loss and accuracy are at w + e)")
        advice = (
            f" {', '.join(knobs)} may be too large: lower it, or search it with "
            "`keras-ssam tune` (`keras_ssam.tuning`)."
            if knobs
            else " Check the learning rate and the labels."
        )
        return seen + advice + (" Stopping training." if self.stop_training else "")

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "accuracy_margin": self.accuracy_margin,
            "loss_margin": self.loss_margin,
            "patience": self.patience,
            "start_from_epoch": self.start_from_epoch,
            "stop_training": self.stop_training,
            "accuracy_key": self.accuracy_key,
            "loss_key": self.loss_key,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
