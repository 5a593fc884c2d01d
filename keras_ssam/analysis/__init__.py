"""Flatness analysis: Hessian spectrum, loss landscapes, SAM-vs-SGD gradients.

Written from the math (no code from PyHessian or the loss-landscape project):

- Hessian-vector products by forward-over-reverse differentiation (a JVP of
  the gradient; 1.1-1.3x cheaper than double backpropagation on a CIFAR
  ResNet-18 here, which stays available as `hvp_mode="reverse"`); top
  eigenvalues by Lanczos or power iteration with deflation; the trace by
  Hutchinson's estimator.
- Loss landscapes along random directions with the filter normalization of
  Li et al. (2018).
- The per-parameter relative difference between the SAM and SGD gradients
  (Mi et al. 2022, Fig. 1).

Every function evaluates the model in inference mode (BatchNorm uses its
moving statistics) and never assigns to a variable: perturbed weights are
passed through `keras.StatelessScope`, so interrupting a long computation
(Ctrl-C) leaves the model exactly as it was.

The objective is always the mean of the per-example loss over all of `data`,
`L(w) = (1/N) sum_i s_i l_i(w)` (`s_i = 1` without sample weights; with
them this is Keras' `"sum_over_batch_size"` reduction, the value
`model.evaluate` reports), whatever form the loss has: a string such as
`"mse"` (for which `keras.losses.get` returns the unreduced per-example
function), a `keras.losses.Loss` (its `call`, the unreduced loss, is used;
its own `reduction` is ignored) or a function `(y_true, y_pred)` returning
per-example values or their batch mean. Regularization losses
(`model.losses`) are not included.
"""

import numbers

import keras
import numpy as np
import tensorflow as tf

from keras_ssam.perturbation import sparse_perturbation


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


def _check_int(name, value, minimum):
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
        if hvp_mode not in HVP_MODES:
            raise ValueError(
                f"`hvp_mode` must be one of {HVP_MODES}; received hvp_mode={hvp_mode!r}."
            )
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
        values = [tf.convert_to_tensor(v) for v in self.variables]
        with tf.autodiff.ForwardAccumulator(values, vectors) as accumulator:
            with tf.GradientTape() as tape:
                tape.watch(values)
                loss = self._batch_loss(x, y, weight, values)
            grads = tape.gradient(loss, values)
        return [accumulator.jvp(g) for g in grads]

    def _batch_hvp_reverse(self, x, y, weight, vectors):
        values = [tf.convert_to_tensor(v) for v in self.variables]
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


def _dot(a, b):
    return float(tf.add_n([tf.reduce_sum(u * v) for u, v in zip(a, b)]))


def _normalize(v):
    norm = np.sqrt(_dot(v, v))
    return [t / (norm + 1e-12) for t in v]


def hessian_vector_product(model, data, vectors, loss=None, batch_size=128, hvp_mode="forward"):
    """H v for the mean loss over `data`.

    Args:
        model: A `keras.Model` or `SSAMModel` (its inner model is analysed).
        data: `(x, y)` or `(x, y, sample_weight)` arrays, or a
            `tf.data.Dataset` of such batches.
        vectors: List of tensors shaped like the trainable variables.
        loss: Loss to use instead of the compiled one: a name, a
            `keras.losses.Loss` or a function `(y_true, y_pred)`; always
            averaged over the examples (see the module docstring).
            Defaults to `None`.
        batch_size: Integer batch size for arrays. Defaults to `128`.
        hvp_mode: `"forward"` (forward-over-reverse: a JVP of the gradient)
            or `"reverse"` (double backpropagation). Same result to float
            rounding. Defaults to `"forward"`.

    Returns:
        A list of tensors, one per trainable variable.
    """
    objective = Objective(model, data, loss, batch_size, hvp_mode)
    return objective.hvp([tf.convert_to_tensor(v, "float32") for v in vectors])


def hessian_eigenvalues(
    model,
    data,
    top_k=5,
    max_iter=100,
    tol=1e-4,
    trace_samples=0,
    loss=None,
    batch_size=128,
    seed=0,
    verbose=1,
    method="power",
    hvp_mode="forward",
):
    """Top-k Hessian eigenvalues by power iteration with deflation (or Lanczos).

    Each eigenpair is found by power iteration on `H - sum_j l_j v_j v_j^T`
    (deflation by the pairs already found), stopping when the Rayleigh
    quotient changes by less than `tol` (relative). Power iteration finds the
    eigenvalues of largest magnitude, which at a trained minimum are the
    largest positive ones reported by the paper (Fig. 4: l_1 and l_1/l_5).

    Args:
        model: A `keras.Model` or `SSAMModel`.
        data: `(x, y)` or `(x, y, sample_weight)` arrays, or a
            `tf.data.Dataset` of such batches.
        top_k: Integer >= 1. Number of eigenvalues. Defaults to `5`.
        max_iter: Integer >= 1. Power iterations per eigenvalue. Defaults
            to `100`.
        tol: Float. Relative change that stops an iteration (power: of the
            Rayleigh quotient; Lanczos: of each of the top_k Ritz values).
            Defaults to `1e-4`.
        trace_samples: Integer >= 0. Rademacher probes for Hutchinson's
            trace estimate; 0 skips it. Defaults to `0`.
        loss: Loss to use instead of the compiled one: a name, a
            `keras.losses.Loss` or a function `(y_true, y_pred)`; always
            averaged over the examples (see the module docstring).
            Defaults to `None`.
        batch_size: Integer. Defaults to `128`.
        seed: Integer. Defaults to `0`.
        verbose: Integer. 1 shows a progress bar. Defaults to `1`.
        method: `"power"` (power iteration with deflation, at most `max_iter`
            HVPs per eigenvalue) or `"lanczos"` (`max_iter` Lanczos steps in
            at most, with full re-orthogonalization; the Ritz values
            approximate the extreme eigenvalues with far fewer HVPs; a single
            Krylov space sees each distinct eigenvalue once, so a repeated
            eigenvalue is reported once and the iteration stops early at an
            invariant subspace; use `"power"` to resolve multiplicities).
            Defaults to `"power"`.
        hvp_mode: How each Hessian-vector product is computed, `"forward"`
            or `"reverse"` (see `hessian_vector_product`). Defaults to
            `"forward"`.

    Returns:
        A dict with `eigenvalues` (descending by magnitude), `ratio`
        (l_1 / l_top_k), `iterations` and, if asked, `trace`.
    """
    _check_int("top_k", top_k, 1)
    _check_int("max_iter", max_iter, 1)
    _check_int("trace_samples", trace_samples, 0)
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 0:
        raise ValueError(f"`tol` must be a float >= 0; received tol={tol!r}.")
    if method not in ("power", "lanczos"):
        raise ValueError(f"`method` must be 'power' or 'lanczos'; received method={method!r}.")
    objective = Objective(model, data, loss, batch_size, hvp_mode)
    rng = np.random.default_rng(seed)
    shapes = [tuple(v.shape) for v in objective.variables]
    if method == "lanczos":
        values, iterations = _lanczos(objective, shapes, top_k, max_iter, tol, rng, verbose)
        return _spectrum_result(values, iterations, objective, shapes, trace_samples, rng, verbose)
    found, values, iterations = [], [], []
    bar = keras.utils.Progbar(top_k * max_iter, verbose=verbose)
    for _ in range(top_k):
        v = _normalize([tf.constant(rng.normal(size=s), "float32") for s in shapes])
        value, steps = None, 0
        for step in range(1, max_iter + 1):
            steps = step
            hv = objective.hvp(v)
            for lam, u in zip(values, found):  # deflation
                c = lam * _dot(u, v)
                hv = [h - c * t for h, t in zip(hv, u)]
            new = _dot(hv, v)
            v = _normalize(hv)
            bar.add(1)
            if value is not None and abs(new - value) <= tol * (abs(value) + 1e-12):
                value = new
                break
            value = new
        bar.add(max_iter - steps)
        values.append(value)
        found.append(v)
        iterations.append(steps)
    return _spectrum_result(values, iterations, objective, shapes, trace_samples, rng, verbose)


def _spectrum_result(values, iterations, objective, shapes, trace_samples, rng, verbose):
    result = {
        "eigenvalues": [float(v) for v in values],
        "ratio": values[0] / values[-1] if values[-1] != 0 else float("inf"),
        "iterations": iterations,
    }
    if trace_samples:
        bar = keras.utils.Progbar(trace_samples, verbose=verbose)
        estimates = []
        for _ in range(trace_samples):
            z = [tf.constant(rng.choice([-1.0, 1.0], size=s), "float32") for s in shapes]
            estimates.append(_dot(objective.hvp(z), z))
            bar.add(1)
        result["trace"] = float(np.mean(estimates))
    return result


def _lanczos(objective, shapes, top_k, steps, tol, rng, verbose):
    """Lanczos with full re-orthogonalization; returns the top_k Ritz values.

    Stops early once every one of the top_k Ritz values moved by at most
    `tol` (relative) in the last step: extreme eigenvalues converge first,
    usually long before `steps` products.
    """
    size = sum(int(np.prod(s)) for s in shapes)
    steps = min(max(steps, top_k), size)
    basis, alphas, betas = [], [], []
    v = _normalize([tf.constant(rng.normal(size=s), "float32") for s in shapes])
    bar = keras.utils.Progbar(steps, verbose=verbose)
    previous = None
    for i in range(steps):
        basis.append(v)
        w = objective.hvp(v)
        alphas.append(_dot(w, v))
        for _ in range(2):  # full re-orthogonalization, twice: float32 needs both passes
            for u in basis:
                c = _dot(w, u)
                w = [a - c * b for a, b in zip(w, u)]
        bar.add(1)
        current = _top_ritz(alphas, betas, top_k)
        converged = (
            previous is not None
            and len(current) == len(previous) == top_k
            and np.all(np.abs(current - previous) <= tol * np.abs(current))
        )
        previous = current
        beta = np.sqrt(_dot(w, w))
        # An invariant subspace (to float32 precision): continuing would
        # normalize rounding noise into a basis vector.
        invariant = beta <= 1e-5 * max(abs(t) for t in alphas + betas + [1e-30])
        if converged or i == steps - 1 or invariant:
            break
        betas.append(beta)
        v = [t / beta for t in w]
    bar.add(steps - len(alphas))
    return [float(r) for r in previous], [len(alphas)]


def _top_ritz(alphas, betas, top_k):
    tri = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    ritz = np.linalg.eigvalsh(tri)
    return ritz[np.argsort(-np.abs(ritz))[:top_k]]


def filter_normalized_direction(variables, rng, ignore_bias_bn=True):
    """A random direction scaled filter by filter to the weights' norms.

    Li et al. (2018): for every filter (the last axis of a Keras kernel is
    the output unit/channel) `d_f <- d_f / ||d_f|| * ||w_f||`. One-dimensional
    variables (biases, BatchNorm) get a zero direction when
    `ignore_bias_bn=True`, else are normalized as a whole.
    """
    out = []
    for w in variables:
        w = np.asarray(w, "float64")
        d = rng.normal(size=w.shape)
        if w.ndim <= 1:
            if ignore_bias_bn:
                d = np.zeros_like(w)
            else:
                d = d / (np.linalg.norm(d) + 1e-12) * np.linalg.norm(w)
        else:
            axes = tuple(range(w.ndim - 1))
            d = d / (np.sqrt(np.sum(d**2, axis=axes, keepdims=True)) + 1e-12)
            d = d * np.sqrt(np.sum(w**2, axis=axes, keepdims=True))
        out.append(d.astype("float32"))
    return out


def loss_landscape(
    model,
    data,
    resolution=21,
    span=(-1.0, 1.0),
    dims=1,
    filter_normalized=True,
    ignore_bias_bn=True,
    loss=None,
    batch_size=128,
    seed=0,
    verbose=1,
):
    """Loss (and accuracy) on a 1-D line or 2-D plane through the weights.

    Evaluates `L(w + a d1)` (or `L(w + a d1 + b d2)`) for `a`, `b` on a grid of
    `resolution` points over `span`, along random directions that are
    filter-normalized (Li et al. 2018) unless `filter_normalized=False`.

    Any loss works (regression included). Accuracy (`argmax` of the output
    against the label, weighted by the sample weights if given) is reported
    only where it means something: a multi-class output (last axis > 1)
    with integer class labels (`y` with one axis fewer than the output, or a
    last axis of 1) or one-hot labels (`y` shaped like the output, rows of
    0/1 summing to 1). Otherwise `accuracy` is `None`.

    Args:
        model: A `keras.Model` or `SSAMModel`.
        data: `(x, y)` or `(x, y, sample_weight)` arrays, or a
            `tf.data.Dataset` of such batches.
        resolution: Integer >= 2. Points per axis. Defaults to `21`.
        span: Pair of floats. Range of each coordinate. Defaults to `(-1, 1)`.
        dims: 1 or 2. Defaults to `1`.
        filter_normalized: Boolean. Defaults to `True`.
        ignore_bias_bn: Boolean. Zero direction on 1-D variables. Defaults to
            `True`.
        loss: Loss to use instead of the compiled one: a name, a
            `keras.losses.Loss` or a function `(y_true, y_pred)`; always
            averaged over the examples (see the module docstring).
            Defaults to `None`.
        batch_size: Integer. Defaults to `128`.
        seed: Integer. Defaults to `0`.
        verbose: Integer. 1 shows a progress bar. Defaults to `1`.

    Returns:
        A dict with `coords` (the grid axis), `loss` and `accuracy` arrays of
        shape `(resolution,)` or `(resolution, resolution)` (`accuracy` is
        `None` where it is not defined, see above), and `directions`.
    """
    _check_int("resolution", resolution, 2)
    if dims not in (1, 2):
        raise ValueError(f"`dims` must be 1 or 2; received dims={dims!r}.")
    if len(span) != 2 or not span[0] < span[1]:
        raise ValueError(f"`span` must be (low, high) with low < high; received span={span!r}.")
    objective = Objective(model, data, loss, batch_size)
    labels = objective.label_kind()
    rng = np.random.default_rng(seed)
    weights = objective.weights()
    directions = []
    for _ in range(dims):
        if filter_normalized:
            d = filter_normalized_direction([w.numpy() for w in weights], rng, ignore_bias_bn)
        else:
            d = [rng.normal(size=tuple(w.shape)).astype("float32") for w in weights]
        directions.append(d)
    coords = np.linspace(span[0], span[1], resolution)
    grid = [(a,) for a in coords] if dims == 1 else [(a, b) for a in coords for b in coords]
    losses, accs = [], []
    bar = keras.utils.Progbar(len(grid), verbose=verbose)
    for point in grid:
        values = [
            w + sum(c * d[i] for c, d in zip(point, directions)) for i, w in enumerate(weights)
        ]
        loss_value, accuracy = objective.evaluate(values, labels)
        losses.append(loss_value)
        accs.append(accuracy)
        bar.add(1)
    shape = (resolution,) * dims
    return {
        "coords": coords,
        "loss": np.reshape(losses, shape),
        "accuracy": None if labels is None else np.reshape(accs, shape),
        "directions": directions,
    }


def gradient_difference(model, data, rho=0.05, loss=None, batch_size=128, bins=50, epsilon=1e-12):
    """Per-parameter relative change of the gradient under the SAM step.

    `r = |g_SAM - g_SGD| / |g_SGD|` with `g_SGD = grad L(w)` and
    `g_SAM = grad L(w + rho g / ||g||)` over the whole `data` (Mi et al. 2022,
    Fig. 1: most parameters barely change, which motivates a sparse mask).

    Returns:
        A dict with `ratio` (flat array over all trainable entries), summary
        statistics (`mean`, `median`, `p90`, `p99`, `fraction_above_1`) and a
        histogram of `log10(r)` (`hist`, `bin_edges`).

    Args:
        model: A `keras.Model` or `SSAMModel`.
        data: `(x, y)` or `(x, y, sample_weight)` arrays, or a
            `tf.data.Dataset` of such batches.
        rho: Float >= 0. Radius of the SAM step. Defaults to `0.05`.
        loss: Loss to use instead of the compiled one (always averaged over
            the examples, see the module docstring). Defaults to `None`.
        batch_size: Integer batch size for arrays. Defaults to `128`.
        bins: Integer. Histogram bins. Defaults to `50`.
        epsilon: Float added to the norms in both divisions. Defaults to
            `1e-12`.
    """
    from keras_ssam.step.arguments import check_rho

    rho = check_rho(rho)
    objective = Objective(model, data, loss, batch_size)
    _, g = objective.gradient()
    # SAM's step, Eq. 2 with an all-ones mask: the one copy of the formula.
    ones = [tf.ones_like(t) for t in g]
    steps = sparse_perturbation(g, ones, rho, epsilon=epsilon)
    perturbed = [w + tf.cast(e, w.dtype) for w, e in zip(objective.weights(), steps)]
    _, g_sam = objective.gradient(perturbed)
    g_flat = np.concatenate([np.ravel(t.numpy()) for t in g]).astype("float64")
    s_flat = np.concatenate([np.ravel(t.numpy()) for t in g_sam]).astype("float64")
    ratio = np.abs(s_flat - g_flat) / (np.abs(g_flat) + epsilon)
    hist, edges = np.histogram(np.log10(ratio + epsilon), bins=bins)
    return {
        "ratio": ratio,
        "mean": float(np.mean(ratio)),
        "median": float(np.median(ratio)),
        "p90": float(np.percentile(ratio, 90)),
        "p99": float(np.percentile(ratio, 99)),
        "fraction_above_1": float(np.mean(ratio > 1)),
        "hist": hist,
        "bin_edges": edges,
    }
