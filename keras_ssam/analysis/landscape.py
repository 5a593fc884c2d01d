"""Loss landscapes along random, filter-normalized directions (Li et al. 2018)."""

import keras
import numpy as np

from keras_ssam.analysis.objective import Objective, check_int


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


def _directions(weights, dims, rng, filter_normalized, ignore_bias_bn):
    """`dims` random directions, filter-normalized or plain Gaussian."""
    directions = []
    for _ in range(dims):
        if filter_normalized:
            d = filter_normalized_direction([w.numpy() for w in weights], rng, ignore_bias_bn)
        else:
            d = [rng.normal(size=tuple(w.shape)).astype("float32") for w in weights]
        directions.append(d)
    return directions


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
            averaged over the examples (see the package docstring).
            Defaults to `None`.
        batch_size: Integer. Defaults to `128`.
        seed: Integer. Defaults to `0`.
        verbose: Integer. 1 shows a progress bar. Defaults to `1`.

    Returns:
        A dict with `coords` (the grid axis), `loss` and `accuracy` arrays of
        shape `(resolution,)` or `(resolution, resolution)` (`accuracy` is
        `None` where it is not defined, see above), and `directions`.
    """
    check_int("resolution", resolution, 2)
    if dims not in (1, 2):
        raise ValueError(f"`dims` must be 1 or 2; received dims={dims!r}.")
    if len(span) != 2 or not span[0] < span[1]:
        raise ValueError(f"`span` must be (low, high) with low < high; received span={span!r}.")
    objective = Objective(model, data, loss, batch_size)
    labels = objective.label_kind()
    rng = np.random.default_rng(seed)
    weights = objective.weights()
    directions = _directions(weights, dims, rng, filter_normalized, ignore_bias_bn)
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
