"""What stands between the gradients and the optimizer: unscaling, replicas, decay, skips.

A step's gradients are loss-scaled (mixed precision), per replica
(`MirroredStrategy`) and possibly non-finite. These functions unscale them,
all-reduce them where the perturbation must agree across replicas, add
PyTorch-style coupled weight decay, and apply them only when every replica's
step is finite, so that a skipped step leaves weights, masks and optimizer
state untouched.
"""

import keras
import tensorflow as tf


def unscale(optimizer, grads):
    """Divides loss-scaled gradients by the `LossScaleOptimizer`'s scale."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        scale = tf.convert_to_tensor(optimizer.dynamic_scale)
        return [None if g is None else g / tf.cast(scale, g.dtype) for g in grads]
    return grads


def grads_finite(grads):
    """Whether every present gradient is finite (this replica's).

    A float32/float64 tensor is finite where its sum is: a NaN or an infinity
    makes the sum non-finite, and one reduction reads the tensor once with
    no boolean temporary (`is_finite` then `all` read it twice), which is
    most of what a one-pass step adds to Keras' own step. The sums overflow
    only for entries near 1e38 / size, a step then skipped as non-finite.
    16-bit gradients, whose sums overflow early, are checked entry by entry.
    """
    present = [g for g in grads if g is not None]
    wide = [g for g in present if g.dtype in (tf.float32, tf.float64)]
    narrow = [g for g in present if g.dtype not in (tf.float32, tf.float64)]
    checks = [tf.reduce_all(tf.math.is_finite(g)) for g in narrow]
    if wide:
        sums = [tf.cast(tf.reduce_sum(g), "float32") for g in wide]
        checks.append(tf.math.is_finite(tf.add_n(sums)))
    return tf.reduce_all(checks)


def agree(finite):
    """`finite` of every replica, so that all replicas take the same branch."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return finite
    bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, "float32"))
    return bad < 0.5


def global_gradients(grads):
    """The global-batch gradient on every replica (an all-reduce; `None` kept)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return grads
    # Each replica's loss is pre-divided by the replica count, so the sum
    # is the gradient of the global batch.
    present = [i for i, g in enumerate(grads) if g is not None]
    reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
    out = list(grads)
    for i, g in zip(present, reduced):
        out[i] = g
    return out


def add_coupled_decay(optimizer, weight_decay, grads, variables):
    """PyTorch's `g + wd * w` at the unperturbed `w` (loss-scaled like `g`)."""
    if weight_decay == 0.0:
        return grads
    # The optimizer sums the replicas' gradients: each adds its share.
    factor = weight_decay / tf.distribute.get_strategy().num_replicas_in_sync
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        factor = factor * tf.cast(optimizer.dynamic_scale, "float32")
    return [
        None if g is None else g + tf.cast(factor, g.dtype) * tf.cast(v, g.dtype)
        for g, v in zip(grads, variables)
    ]


def apply(optimizer, finite, grads, variables, skipped):
    """Applies `grads`, skipping the step when `finite` is false.

    Under a `LossScaleOptimizer` a skipped step is a plain overflow (the
    optimizer skips it and lowers its scale); otherwise `skipped` (an int
    variable) counts it.
    """
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        nan = tf.constant(float("nan"))
        grads = [None if g is None else tf.where(finite, g, tf.cast(nan, g.dtype)) for g in grads]
        optimizer.apply_gradients(zip(grads, variables))
        return
    skipped.assign_add(1 - tf.cast(finite, "int32"))
    _apply_if(optimizer, finite, grads, variables)


def _apply_if(optimizer, finite, grads, variables):
    """`optimizer.apply_gradients` under `tf.cond(finite, ...)`.

    Under a strategy that needs `merge_call`, the cond must be built in the
    cross-replica context (the same constraint `LossScaleOptimizer` meets).
    """

    def apply_now(g):
        optimizer.apply_gradients(zip(g, variables))

    if not tf.distribute.has_strategy() or (
        tf.__internal__.distribute.strategy_supports_no_merge_call()
    ):
        tf.cond(finite, lambda: apply_now(grads), lambda: None, name="apply_if_finite")
        return

    def cross_replica(distribution, finite, grads):
        ok = distribution.experimental_local_results(finite)[0]

        def run():
            distribution.extended.call_for_each_replica(apply_now, args=(grads,))

        tf.cond(ok, run, lambda: None, name="apply_if_finite")

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(finite, grads))


def unscale_for_distribution(value):
    """Undoes Keras' division of each replica's loss by the replica count (for logs)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value * replicas if replicas > 1 else value


def for_multi_worker(logs):
    """Logs with a leading axis under `MultiWorkerMirroredStrategy`.

    Keras 3 averages logs along axis 0 there, which fails for scalars
    (keras-team/keras#20585).
    """
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {k: tf.reshape(v, [1]) for k, v in logs.items()}
    return logs
