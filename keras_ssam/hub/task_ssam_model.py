"""`TaskSSAMModel`: `SSAMModel` for a KerasHub Task, preprocessing included."""

import functools
import types

import keras
import keras_hub
import tensorflow as tf

from keras_ssam.ssam_model import SSAMModel

# KerasHub's base of every Task: its fit/evaluate/predict/*_on_batch map
# `preprocess_samples` over the data and then call `super()`. Found through
# the public Task's bases, not its module path (keras_hub.src is private).
PipelineModel = next(c for c in keras_hub.models.Task.__mro__ if c.__name__ == "PipelineModel")
# The methods taken from it (keras-hub >=0.32,<0.33, the `hub` extra's pin;
# tests/test_keras_hub.py fails if PipelineModel's own methods change).
PIPELINE_METHODS = (
    "fit",
    "evaluate",
    "predict",
    "train_on_batch",
    "test_on_batch",
    "predict_on_batch",
)


@keras.saving.register_keras_serializable(package="keras_ssam")
class TaskSSAMModel(SSAMModel):
    """An `SSAMModel` that applies a KerasHub Task's preprocessor, as the Task does.

    `keras_ssam.SSAMModel(task)` returns this class when `task` is a
    `keras_hub.models.Task` (e.g. `BertTextClassifier`, `ImageClassifier`):
    `fit`, `evaluate`, `predict` and `train_on_batch`, `test_on_batch`,
    `predict_on_batch` then take what the Task takes (raw strings, raw
    images) and map `task.preprocessor` over it with KerasHub's own code
    (`PipelineModel`'s methods, whose `super()` here is `SSAMModel`), so a
    SAM step sees exactly the batches the Task's own `fit` would. With
    `task.preprocessor = None` inputs pass through unchanged and must be
    preprocessed; string inputs then raise a `ValueError`.

    The training step, masks and saving are `SSAMModel`'s; `model` stays the
    Task, and `save` / `keras.models.load_model` keep its preprocessor. A
    Task whose backbone computes in `mixed_float16` (`dtype=` on the
    backbone) makes this model's dtype policy `mixed_float16` as well, so
    `compile` wraps the optimizer in a `LossScaleOptimizer`, as for a
    model built under a global `mixed_float16` policy. `export` serves the
    Task without its preprocessor: the served function takes preprocessed
    inputs (for BERT the dict `token_ids`, `segment_ids`, `padding_mask`;
    for an image classifier images already resized and rescaled).

    Args:
        model: A `keras_hub.models.Task`.
        **kwargs: `SSAMModel`'s arguments (`rho`, `norm_scope`, ...).

    Example:

    ```python
    task = keras_hub.models.BertTextClassifier(backbone, num_classes=2,
                                               preprocessor=preprocessor)
    model = keras_ssam.SSAMModel(task, rho=0.05)  # a TaskSSAMModel
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    model.fit(["a great movie", "a dull film"], [1, 0], batch_size=2)
    ```
    """

    def __init__(self, model=None, **kwargs):
        if not isinstance(model, keras_hub.models.Task):
            raise TypeError(f"`model` must be a `keras_hub.models.Task`; received model={model!r}.")
        super().__init__(model, **kwargs)
        if model.dtype_policy.name == "mixed_float16":
            # Keras loss-scales only when the compiled model's own policy is
            # mixed_float16; KerasHub sets it on the backbone and the Task.
            self.dtype_policy = model.dtype_policy

    def preprocess_samples(self, x, y=None, sample_weight=None):
        """The Task's preprocessing; strings without a preprocessor raise."""
        if self.model.preprocessor is None and _has_strings(x):
            raise ValueError(
                "The wrapped Task has no preprocessor (`task.preprocessor` is None) "
                "and received string inputs; set `task.preprocessor` or pass "
                f"preprocessed inputs. Received x={x!r}."
            )
        return self.model.preprocess_samples(x, y, sample_weight)


def _rebound(function, owner):
    """A copy of `function` whose zero-argument `super()` resolves from `owner`.

    `PipelineModel` cannot be a base: building any functional Task rebases
    it onto `Functional` (Keras' functional-subclass injection), whose
    `build`, `call` and `get_config` would then come before `SSAMModel`'s,
    and rebasing it back breaks every Task built before.
    """
    code = function.__code__
    cells = function.__closure__ or ()
    closure = tuple(
        types.CellType(owner) if name == "__class__" else cell
        for name, cell in zip(code.co_freevars, cells)
    )
    copy = types.FunctionType(
        code, function.__globals__, function.__name__, function.__defaults__, closure
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    return functools.update_wrapper(copy, function)


for _name in PIPELINE_METHODS:
    setattr(TaskSSAMModel, _name, _rebound(vars(PipelineModel)[_name], TaskSSAMModel))


def _has_strings(x):
    for leaf in tf.nest.flatten(x):
        dtype = getattr(leaf, "dtype", None)
        if isinstance(leaf, (str, bytes)) or dtype == tf.string:
            return True
        if dtype is not None and getattr(dtype, "kind", "") in ("U", "S", "O"):
            return True
    return False
