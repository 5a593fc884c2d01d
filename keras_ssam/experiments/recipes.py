"""One recipe per method: base model and hyper-parameters -> (model, compile args, callbacks).

The CLI and every benchmark build their methods here, so "SGD" or "SSAM-F"
means the same thing in each of them:

- `sgd`: `SSAMModel(rho=0)`: every step is one pass (`rho == 0`), the same
  weight decay as the SAM-type methods' code path;
- `sam`: dense masks (Foret et al. 2021);
- `ssam-f`, `ssam-d`, `ssam-random`: `FisherMask`, `DynamicMask`, `RandomMask`;
- `structured`: `StructuredFisherMask` with `norm_scope="masked"` (the only
  scope whose steps are cheaper).

Every SAM-type method composes with the cheap steps of issues 21 and 22
(`interval`, `between`, `alpha`, `trigger`; or `ascent="momentum"`). Weight
decay is PyTorch's coupled L2 (`SSAMModel(coupled_weight_decay=)`, the official
code's optimizer) unless
`weight_decay_mode="decoupled"` (Keras' `SGD(weight_decay=)`).
"""

import dataclasses

import keras

import keras_ssam

METHODS = ("sgd", "sam", "ssam-f", "ssam-d", "ssam-random", "structured")
WEIGHT_DECAY_MODES = ("coupled", "decoupled")


@dataclasses.dataclass
class Recipe:
    """What a method needs: the wrapped model, `compile()` arguments and callbacks."""

    model: keras.Model
    compile_kwargs: dict
    callbacks: list

    def compile(self):
        """Compiles `model` with `compile_kwargs`; returns the model."""
        self.model.compile(**self.compile_kwargs)
        return self.model


def build(
    method,
    base,
    learning_rate,
    rho=0.1,
    weight_decay=0.0,
    weight_decay_mode="coupled",
    momentum=0.9,
    sparsity=0.5,
    train_data=None,
    num_samples=16,
    update_interval=1,
    drop_rate=0.5,
    adaptive=False,
    interval=1,
    between="sgd",
    alpha=0.1,
    trigger=None,
    ascent="gradient",
    ascent_momentum=0.9,
    sam_epochs=None,
    seed=0,
    metrics=("accuracy",),
):
    """The recipe of `method` on `base` (see the module docstring for the methods).

    Args:
        method: One of `METHODS`.
        base: The `keras.Model` to train.
        learning_rate: Float or a `keras.optimizers.schedules` schedule for
            `SGD(momentum=momentum)`.
        rho, adaptive, interval, between, alpha, trigger, ascent: `SSAMModel`'s
            (ignored for `sgd`, whose rho is 0); `ascent_momentum` is its
            `momentum` (the ascent buffer's, not the optimizer's).
        sam_epochs: `None` (every epoch) or `(start, stop)`: SAM steps only
            in epochs `start <= epoch < stop` (from 0), rho 0 (one pass)
            outside, by a `RhoScheduler(RhoWindow(rho, start, stop))` callback.
        weight_decay: Float >= 0.
        weight_decay_mode: `"coupled"` or `"decoupled"`.
        sparsity, num_samples, update_interval, drop_rate, seed: The mask
            callback's; `train_data` (a dataset of `(x, y)` batches or an
            `(x, y)` tuple) feeds the Fisher masks.
        metrics: Compiled metrics.

    Returns:
        A `Recipe`.
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}; received method={method!r}.")
    if weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(
            f"`weight_decay_mode` must be one of {WEIGHT_DECAY_MODES}; "
            f"received weight_decay_mode={weight_decay_mode!r}."
        )
    coupled = weight_decay_mode == "coupled"
    cheap = {}
    if method != "sgd":
        cheap = dict(
            interval=interval,
            between=between,
            alpha=alpha,
            ascent=ascent,
            momentum=ascent_momentum,
        )
    model = keras_ssam.SSAMModel(
        base,
        rho=0.0 if method == "sgd" else rho,
        norm_scope="masked" if method == "structured" else "all",
        adaptive=adaptive,
        coupled_weight_decay=weight_decay if coupled else 0.0,
        trigger=None if method == "sgd" else trigger,
        **cheap,
    )
    optimizer = keras.optimizers.SGD(
        learning_rate, momentum=momentum, weight_decay=None if coupled else weight_decay
    )
    compile_kwargs = dict(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=list(metrics),
    )
    callbacks = [
        mask_callback(method, train_data, sparsity, num_samples, update_interval, drop_rate, seed)
    ]
    if sam_epochs is not None and method != "sgd":
        callbacks.append(keras_ssam.RhoScheduler(keras_ssam.RhoWindow(rho, *sam_epochs)))
    return Recipe(model, compile_kwargs, [c for c in callbacks if c is not None])


def mask_callback(method, train_data, sparsity, num_samples, update_interval, drop_rate, seed):
    """The mask callback of `method`, or `None` (SGD, SAM).

    `train_data` is a dataset of `(x, y)` batches or an `(x, y)` tuple of arrays.
    """
    common = dict(sparsity=sparsity, seed=seed)
    x, y = train_data if isinstance(train_data, tuple) else (train_data, None)
    if method == "ssam-f":
        return keras_ssam.FisherMask(
            x, y, num_samples=num_samples, update_interval=update_interval, **common
        )
    if method == "structured":
        return keras_ssam.StructuredFisherMask(
            x, y, num_samples=num_samples, update_interval=update_interval, **common
        )
    if method == "ssam-d":
        return keras_ssam.DynamicMask(
            drop_rate=drop_rate, update_interval=update_interval, **common
        )
    if method == "ssam-random":
        return keras_ssam.RandomMask(**common)
    return None


def describe(recipe):
    """A comparable summary of a recipe: model class and config, optimizer, callbacks.

    Two recipes with equal descriptions train the same method the same way
    (the base model itself is not compared).
    """
    config = recipe.model.get_config()
    config.pop("model", None)
    config.pop("name", None)
    optimizer = recipe.compile_kwargs["optimizer"].get_config()
    optimizer.pop("name", None)
    return {
        "model": type(recipe.model).__name__,
        "config": config,
        "optimizer": optimizer,
        "loss": type(recipe.compile_kwargs["loss"]).__name__,
        "callbacks": [
            (type(c).__name__, {k: v for k, v in c.get_config().items()}) for c in recipe.callbacks
        ],
    }
