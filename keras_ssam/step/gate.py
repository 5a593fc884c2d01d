"""Which steps are SAM steps, and what the others apply: interval, trigger, rho 0, LookSAM.

A gated step always runs pass 1 (with every gradient, since a one-pass step
applies it) outside any `tf.cond`; only the stateless pass 2 at `w + e` sits
inside `tf.cond(sam, ...)`, so that a step that is not a SAM step costs one
forward-backward pass. The decision uses only values identical on every
replica (rho, the optimizer's `iterations`, the all-reduced gradient), so all
replicas take the same branch.
"""

import tensorflow as tf

from keras_ssam.step import guard

# MSAM's LookSAM divides by ||g||^2 + 1e-12 (optimizer/looksam.py).
_LOOKSAM_EPSILON = 1e-12


def sam_step(rho, iterations, interval, trigger=None, norm_sq=None, mean=None, variance=None):
    """Whether this step is a SAM step, and the trigger's new estimates.

    Args:
        rho: Scalar tensor. A step with `rho == 0` is never a SAM step.
        iterations: The optimizer's step counter (0 at the first step).
        interval: Integer. SAM on steps with `iterations % interval == 0`.
        trigger: A `GradientNormTrigger` or `None`.
        norm_sq, mean, variance: `||g||^2` and the trigger's estimates.

    Returns:
        `(sam, (mean, variance) or None)`.
    """
    sam = rho > 0
    if interval > 1:
        sam = tf.logical_and(sam, tf.equal(iterations % interval, 0))
    if trigger is None:
        return sam, None
    fire, mean, variance = trigger.decide(norm_sq, mean, variance, iterations)
    return tf.logical_and(sam, fire), (mean, variance)


def if_sam(sam, perturbed, loss, grads):
    """`perturbed()` on SAM steps, pass 1's `(loss, grads)` otherwise, under one `tf.cond`.

    Args:
        sam: Scalar boolean tensor.
        perturbed: `() -> (loss at w + e, gradients)`; runs only inside the cond.
        loss, grads: Pass 1's loss and (loss-scaled) gradients.

    Returns:
        `(loss, grads, finite)`, where `finite` is this replica's finiteness
        of the chosen gradients. A variable without a gradient at `w` has
        none after the cond either (a zero would move its momentum).
    """
    present = [i for i, g in enumerate(grads) if g is not None]

    def yes():
        loss2, grads2 = perturbed()
        chosen = [
            tf.zeros_like(grads[i]) if grads2[i] is None else tf.cast(grads2[i], grads[i].dtype)
            for i in present
        ]
        finite = guard.grads_finite(chosen)
        return tf.cast(loss2, loss.dtype), chosen, finite

    def no():
        return loss, [grads[i] for i in present], tf.constant(True)

    loss2, chosen, finite = tf.cond(sam, yes, no, name="sam_pass")
    out = [None] * len(grads)
    for i, g in zip(present, chosen):
        out[i] = g
    return loss2, out, finite


def looksam_direction(g, g_sam):
    """LookSAM's unit vector `g_v / ||g_v||`, `g_v = g_s - (<g_s, g> / ||g||^2) g` (float32).

    Global norms and inner product over every variable, as in MarlonBecker/
    MSAM `optimizer/looksam.py` (rollovd/LookSAM decomposes per tensor).
    `None` entries count as zeros; a zero `g_v` gives a zero direction.
    """
    g = [None if a is None else tf.cast(a, "float32") for a in g]
    g_sam = [None if a is None else tf.cast(a, "float32") for a in g_sam]
    dot = _sum([tf.reduce_sum(a * b) for a, b in zip(g, g_sam) if a is not None and b is not None])
    coef = dot / (global_norm_sq(g) + _LOOKSAM_EPSILON)
    g_v = [None if s is None else (s if a is None else s - coef * a) for a, s in zip(g, g_sam)]
    norm_v = global_norm(g_v)
    return [None if v is None else tf.math.divide_no_nan(v, norm_v) for v in g_v]


def global_norm_sq(grads):
    """`||g||^2` over every present gradient, in float32.

    `tf.nn.l2_loss` (half the sum of squares) reads a tensor once; `square`
    then `reduce_sum` reads it, writes a temporary and reads that, which on a
    small model is a visible share of a step.
    """
    halves = [tf.nn.l2_loss(tf.cast(g, "float32")) for g in grads if g is not None]
    return 2.0 * _sum(halves)


def global_norm(grads):
    """`||g||` over every present gradient, in float32."""
    return tf.sqrt(global_norm_sq(grads))


def _sum(values):
    return tf.add_n(values) if values else tf.constant(0.0)
