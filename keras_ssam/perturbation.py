"""The sparse SAM ascent step (Mi et al. 2022, Eq. 2; Kwon et al. 2021 for ASAM)."""

import tensorflow as tf

NORM_SCOPES = ("all", "masked")


def sparse_perturbation(
    gradients,
    masks,
    rho,
    variables=None,
    norm_scope="all",
    adaptive=False,
    eta=0.01,
    epsilon=1e-7,
):
    """Computes the masked SAM perturbation `e` for every variable.

    Implements Eq. (2) of Mi et al. (2022), the sparse ascent step

        e = rho * g / (||g|| + epsilon) * m,

    where `m` is the binary mask of each variable. With `norm_scope="masked"`
    the norm is taken over `m * g` so that `||e|| = rho`; with `"all"` (the
    official code's choice) it is taken over the full gradient so that
    `||e|| <= rho`. With `adaptive=True` the step is ASAM's scale-invariant one
    (Kwon et al. 2021, Eq. 9): `e = rho * T^2 g / ||T g||` with
    `T = |w| + eta`, masked in the same way.

    Args:
        gradients: List of gradient tensors; `None` entries give a zero `e`.
        masks: List of binary mask tensors with the gradients' shapes.
        rho: Float or scalar tensor. Neighbourhood radius.
        variables: List of the weights `w`; required when `adaptive=True`.
        norm_scope: `"all"` or `"masked"`. Defaults to `"all"`.
        adaptive: Boolean. Use ASAM's scaling `T = |w| + eta`.
            Defaults to `False`.
        eta: Float. ASAM's offset in `T`. Defaults to `0.01`.
        epsilon: Float. Added to the norm to avoid a division by zero.
            Defaults to `1e-7`, the official code's value.

    Returns:
        A list of perturbation tensors, one per gradient.
    """
    return perturbation_and_norm(
        gradients, masks, rho, variables, norm_scope, adaptive, eta, epsilon
    )[0]


def perturbation_and_norm(
    gradients, masks, rho, variables=None, norm_scope="all", adaptive=False, eta=0.01, epsilon=1e-7
):
    """`sparse_perturbation(...)` and the norm it divides by (without `epsilon`).

    The norm tells whether `e` is zero without a further pass over the
    parameters (momentum ascent logs that).
    """
    if norm_scope not in NORM_SCOPES:
        raise ValueError(
            f"`norm_scope` must be one of {NORM_SCOPES}; received norm_scope={norm_scope!r}."
        )
    if adaptive and variables is None:
        raise ValueError("`variables` is required when `adaptive=True`.")
    grads = [
        tf.zeros_like(m) if g is None else tf.cast(g, m.dtype) for g, m in zip(gradients, masks)
    ]
    if adaptive:
        scales = [tf.abs(tf.cast(w, m.dtype)) + eta for w, m in zip(variables, masks)]
    else:
        scales = [None] * len(grads)
    # T g is the direction whose norm is taken; T^2 g is the step direction.
    scaled = [g if t is None else t * g for g, t in zip(grads, scales)]
    if norm_scope == "masked":
        normed = [m * s for m, s in zip(masks, scaled)]
    else:
        normed = scaled
    norm = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(s)) for s in normed]))
    factor = tf.cast(rho, norm.dtype) / (norm + epsilon)
    steps = [s if t is None else t * s for s, t in zip(scaled, scales)]
    return [factor * s * m for s, m in zip(steps, masks)], norm
