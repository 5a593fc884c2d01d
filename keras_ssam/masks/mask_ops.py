"""Mask arithmetic on the flattened parameter vector, all in TensorFlow."""

import math

import numpy as np
import tensorflow as tf


def num_perturbed(sparsity, total):
    """k = round((1 - sparsity) * N), halves rounded up."""
    return int(math.floor((1.0 - sparsity) * total + 0.5))


def flatten(tensors):
    return tf.concat([tf.reshape(tf.cast(t, "float32"), [-1]) for t in tensors], 0)


def unflatten(flat, shapes):
    sizes = [int(np.prod(s)) for s in shapes]
    return [tf.reshape(p, s) for p, s in zip(tf.split(flat, sizes), shapes)]


def _sortable_keys(scores):
    """int32 keys ordered like the float32 scores (NaN ranks lowest)."""
    scores = tf.where(tf.math.is_nan(scores), -np.inf, tf.cast(scores, "float32"))
    bits = tf.bitcast(scores, tf.int32)
    # Negative floats order backwards as integers: flip their magnitude bits.
    return tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, np.int32(0x7FFFFFFF)), bits)


def _largest(scores, k):
    """Indicator of the k largest scores; ties go to the lower index.

    Exact selection in O(N) per pass: a 32-step bisection over the integer
    keys finds the k-th largest value, then ties at that value are taken in
    index order. On 36.5M entries this is many times faster than
    `tf.math.top_k` or a full sort on a CPU.
    """
    keys = _sortable_keys(scores)
    k = tf.cast(k, "int64")

    def body(lo, hi):
        mid = hi - (hi - lo) // 2  # the upper middle; no add chain (grappler bug)
        ok = tf.math.count_nonzero(keys >= tf.cast(mid, "int32")) >= k
        return tf.where(ok, mid, lo), tf.where(ok, hi, mid - 1)

    lo = tf.constant(np.iinfo(np.int32).min, "int64")
    hi = tf.constant(np.iinfo(np.int32).max, "int64")
    lo, _ = tf.while_loop(lambda lo, hi: lo < hi, body, (lo, hi))
    threshold = tf.cast(lo, "int32")
    greater = keys > threshold
    need = k - tf.math.count_nonzero(greater)
    tied = keys == threshold
    rank = tf.cumsum(tf.cast(tied, "int64"))
    return tf.cast(greater | (tied & (rank <= need)), "float32")


@tf.function(reduce_retracing=True)
def top_k_indicator(scores, k):
    """1 at the k largest scores, 0 elsewhere; NaN never wins; ties go low."""
    return _largest(scores, k)


def random_scores(total, seed):
    """Uniform scores from a stateless generator (identical on every replica)."""
    return tf.random.stateless_uniform([total], seed=seed)


@tf.function(reduce_retracing=True)
def drop_and_grow(mask, drop_scores, grow_scores, count):
    """Moves `count` entries out of and into a flat binary mask (Eq. 7-8).

    Drops the `count` perturbed entries with the smallest `drop_scores`, then
    grows the `count` entries with the largest `grow_scores` among those
    unperturbed before the drop, so the number of ones never changes. NaN
    scores are dropped first and grown last.
    """
    inf = tf.constant(np.inf, "float32")
    on = mask > 0.5
    drop_scores = tf.where(tf.math.is_nan(drop_scores), -inf, drop_scores)
    dropped = _largest(tf.where(on, -drop_scores, -inf), count) * tf.cast(on, "float32")
    grown = _largest(tf.where(on, -inf, grow_scores), count) * tf.cast(~on, "float32")
    return mask - dropped + grown
