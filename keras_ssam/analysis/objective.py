"""The objective every analysis tool evaluates: batches, loss, gradient, HVPs.

`Objective` is the mean per-example loss over all of `data` at the model's
weights or at other values passed through `keras.StatelessScope` (see the
`keras_ssam.analysis` docstring for the forms of loss and data it takes),
with its gradient and Hessian-vector products. The helpers before it turn
`data` into batches and the loss into a function of unreduced values.
"""

import numbers

import keras
import numpy as np
import tensorflow as tf

from keras_ssam.step.arguments import check_choice


def _inner(model):
    from keras_ssam.ssam_model import SSAMModel

    if isinstance(model, SSAMModel):
        return model.model, model
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received model={model!r}.")
    return model, model


def _loss_fn(compiled, loss, inner=None):
    """The loss as a function `(y_true, y_pred)` -> unreduced values."""
    for source in (compiled, inner):
        if loss is None and source is not None:
            loss = getattr(source, "loss", None)
    if loss is None:
        raise ValueError("Pass `loss=` or compile the model with a loss.")
    if isinstance(loss, (str, dict)):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        instance = loss

        def unreduced(y_true, y_pred):
            # What `Loss.__call__` does before reducing: both in the loss's dtype.
            y_pred = tf.nest.map_structure(
                lambda t: keras.ops.convert_to_tensor(t, dtype=instance.dtype), y_pred
            )
            y_true = tf.nest.map_structure(
                lambda t: keras.ops.convert_to_tensor(t, dtype=instance.dtype), y_true
            )
            return instance.call(y_true, y_pred)

        return unreduced
    if isinstance(loss, (list, tuple)) or not callable(loss):
        raise TypeError(
            "`loss` must be a loss name, a `keras.losses.Loss` or a function "
            f"`(y_true, y_pred)` (one loss for a single-output model); received loss={loss!r}."
        )
    return loss


def _batch_size(x):
    return tf.shape(tf.nest.flatten(x)[0])[0]


def _split(batch):
    """`(x, y)` or `(x, y, sample_weight)` from one batch."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise TypeError(
            "Every batch of `data` must be `(x, y)` or `(x, y, sample_weight)`; received "
            f"a batch of type {type(batch).__name__}"
            + (f" with {len(batch)} elements." if isinstance(batch, (tuple, list)) else ".")
        )
    x, y = batch[0], batch[1]
    weight = batch[2] if len(batch) == 3 else None
    if weight is not None:
        weight = tf.reshape(tf.cast(weight, "float32"), [-1])
    return x, y, weight


def _batches(data, batch_size=128):
    """A list of `(x, y, sample_weight or None)` batches from arrays or a dataset."""
    if isinstance(data, tf.data.Dataset):
        batches = [_split(b) for b in data]
    else:
        if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
            raise TypeError(
                "`data` must be `(x, y)` or `(x, y, sample_weight)` arrays or a "
                f"tf.data.Dataset of such batches; received data of type {type(data).__name__}."
            )
        arrays = [np.asarray(a) for a in data]
        if len({len(a) for a in arrays}) != 1:
            raise ValueError(
                "The arrays of `data` must have the same number of examples; received "
                f"lengths {[len(a) for a in arrays]}."
            )
        batches = [
            _split(tuple(a[i : i + batch_size] for a in arrays))
            for i in range(0, len(arrays[0]), batch_size)
        ]
    batches = [b for b in batches if int(_batch_size(b[0])) > 0]
    if not batches:
        raise ValueError("`data` is empty; the analysis needs at least one example.")
    return batches


HVP_MODES = ("forward", "reverse")


def check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; received {name}={value!r}.")


class Objective:
    """Mean loss over the data at weights `w` (or at `w + delta`), inference mode.

    The loss, gradient and Hessian-vector products the analysis functions
    share; public so that benchmarks can time them (`benchmarks/analysis_time.py`).

    Every per-batch function returns sums over the batch's examples; `_total`
    adds them up over the batches and divides by the number of examples.
    """

    def __init__(self, model, data, loss=None, batch_size=128, hvp_mode="forward"):
        check_choice("hvp_mode", hvp_mode, HVP_MODES)
        self.model, compiled = _inner(model)
        self.loss = _loss_fn(compiled, loss, self.model)
        self.batches = _batches(data, batch_size)
        self.total = sum(int(_batch_size(b[0])) for b in self.batches)
        self.variables = list(self.model.trainable_variables)
        self._grad = tf.function(self._batch_grad, reduce_retracing=True)
        hvp = self._batch_hvp if hvp_mode == "forward" else self._batch_hvp_reverse
        self._hvp = tf.function(hvp, reduce_retracing=True)
        self._eval = tf.function(self._batch_eval, reduce_retracing=True)

    def _call(self, x, values):
        if values is None:
            return self.model(x, training=False)
        with keras.StatelessScope(state_mapping=list(zip(self.variables, values))):
            return self.model(x, training=False)

    def _loss_sum(self, y, pred, weight):
        """Sum over the batch of (weighted) per-example losses."""
        values = tf.cast(self.loss(y, pred), "float32")
        count = tf.cast(tf.shape(pred)[0], "float32")
        if values.shape.rank == 0:
            # The function already averaged over the batch.
            if weight is not None:
                raise ValueError(
                    "Sample weights need a loss that returns one value per example; "
                    f"loss={self.loss!r} returned a scalar."
                )
            return values * count
        if values.shape.rank > 1:
            values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
        if weight is not None:
            values = values * weight
        return tf.reduce_sum(values)

    def _batch_loss(self, x, y, weight, values=None):
        return self._loss_sum(y, self._call(x, values), weight)

    def _batch_grad(self, x, y, weight, values):
        with tf.GradientTape() as tape:
            tape.watch(values)
            loss = self._batch_loss(x, y, weight, values)
        return loss, tape.gradient(loss, values)

    def _batch_hvp(self, x, y, weight, vectors):
        # H v = d/dt grad L(w + t v) at t = 0: one JVP through the gradient
        # computation, instead of a second backward pass through it.
        values = self.weights()
        with tf.autodiff.ForwardAccumulator(values, vectors) as accumulator:
            with tf.GradientTape() as tape:
                tape.watch(values)
                loss = self._batch_loss(x, y, weight, values)
            grads = tape.gradient(loss, values)
        return [accumulator.jvp(g) for g in grads]

    def _batch_hvp_reverse(self, x, y, weight, vectors):
        values = self.weights()
        with tf.GradientTape() as outer:
            outer.watch(values)
            with tf.GradientTape() as inner:
                inner.watch(values)
                loss = self._batch_loss(x, y, weight, values)
            grads = inner.gradient(loss, values)
            dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vectors)])
        return outer.gradient(dot, values)

    def _batch_eval(self, x, y, weight, values, labels):
        pred = self._call(x, values)
        loss = self._loss_sum(y, pred, weight)
        if labels is None:
            return loss, tf.constant(0.0), tf.constant(0.0)
        predicted = tf.argmax(pred, axis=-1)
        if labels == "one_hot":
            target = tf.argmax(y, axis=-1)
        else:
            target = tf.reshape(tf.cast(y, "int64"), tf.shape(predicted))
        hits = tf.cast(tf.equal(predicted, target), "float32")
        if hits.shape.rank > 1:
            hits = tf.reduce_mean(hits, axis=list(range(1, hits.shape.rank)))
        weight = tf.ones_like(hits) if weight is None else weight
        return loss, tf.reduce_sum(hits * weight), tf.reduce_sum(weight)

    def _sum(self, fn, *args):
        out = None
        for x, y, weight in self.batches:
            part = fn(x, y, weight, *args)
            out = part if out is None else tf.nest.map_structure(tf.add, out, part)
        return out

    def _total(self, fn, *args):
        return tf.nest.map_structure(lambda t: t / self.total, self._sum(fn, *args))

    def weights(self):
        return [tf.convert_to_tensor(v) for v in self.variables]

    def gradient(self, values=None):
        values = self.weights() if values is None else values
        return self._total(self._grad, values)

    def hvp(self, vectors):
        return self._total(self._hvp, vectors)

    def label_kind(self):
        """How `y` encodes classes: `"sparse"`, `"one_hot"`, or `None` (no accuracy).

        Accuracy is counted only for a multi-class output (last axis > 1)
        whose targets are integer class indices (any dtype, one fewer axis
        or a last axis of 1) or one-hot rows of the output's shape.
        """
        x = self.batches[0][0]
        pred_shape = tuple(self._call(tf.nest.map_structure(lambda t: t[:1], x), None).shape)
        classes = pred_shape[-1] if pred_shape else None
        if classes is None or classes < 2:
            return None
        kinds = set()
        for _, y, _ in self.batches:
            y = np.asarray(y)
            shape = y.shape[1:]
            if shape == pred_shape[1:-1] or shape == pred_shape[1:-1] + (1,):
                integral = np.all(np.round(y) == y)
                kinds.add("sparse" if integral and np.all((y >= 0) & (y < classes)) else None)
            elif shape == pred_shape[1:]:
                binary = np.all((y == 0) | (y == 1))
                kinds.add("one_hot" if binary and np.all(np.sum(y, -1) == 1) else None)
            else:
                kinds.add(None)
        return kinds.pop() if len(kinds) == 1 else None

    def evaluate(self, values, labels=None):
        """`(loss, accuracy)` at `values`; accuracy is `None` without `labels`."""
        loss, hits, weight = self._sum(self._eval, values, labels)
        accuracy = float(hits) / float(weight) if labels is not None and weight else None
        return float(loss) / self.total, accuracy
