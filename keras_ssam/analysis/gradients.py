"""The per-parameter relative difference between the SAM and SGD gradients (Mi et al. 2022)."""

import numpy as np
import tensorflow as tf

from keras_ssam.analysis.objective import Objective
from keras_ssam.perturbation import sparse_perturbation
from keras_ssam.step.arguments import check_rho


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
            the examples, see the package docstring). Defaults to `None`.
        batch_size: Integer batch size for arrays. Defaults to `128`.
        bins: Integer. Histogram bins. Defaults to `50`.
        epsilon: Float added to the norms in both divisions. Defaults to
            `1e-12`.
    """
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
