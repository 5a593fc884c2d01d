"""The Hessian spectrum: Hessian-vector products, top eigenvalues, trace.

Top eigenvalues by power iteration with deflation or by Lanczos with full
re-orthogonalization; the trace by Hutchinson's estimator. Every product is
an `Objective.hvp` (forward-over-reverse by default, see `hvp_mode`).
"""

import numbers

import keras
import numpy as np
import tensorflow as tf

from keras_ssam.analysis.objective import Objective, check_int


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
            averaged over the examples (see the package docstring).
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
            averaged over the examples (see the package docstring).
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
    check_int("top_k", top_k, 1)
    check_int("max_iter", max_iter, 1)
    check_int("trace_samples", trace_samples, 0)
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 0:
        raise ValueError(f"`tol` must be a float >= 0; received tol={tol!r}.")
    if method not in ("power", "lanczos"):
        raise ValueError(f"`method` must be 'power' or 'lanczos'; received method={method!r}.")
    objective = Objective(model, data, loss, batch_size, hvp_mode)
    rng = np.random.default_rng(seed)
    shapes = [tuple(v.shape) for v in objective.variables]
    search = _lanczos if method == "lanczos" else _power_iteration
    values, iterations = search(objective, shapes, top_k, max_iter, tol, rng, verbose)
    return _spectrum_result(values, iterations, objective, shapes, trace_samples, rng, verbose)


def _power_iteration(objective, shapes, top_k, max_iter, tol, rng, verbose):
    """Power iteration with deflation; returns the top_k values and each one's iterations."""
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
    return values, iterations


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
