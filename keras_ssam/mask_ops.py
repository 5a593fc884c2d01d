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


def _indicator(indices, total):
    ones = tf.ones_like(indices, dtype="float32")
    return tf.scatter_nd(tf.cast(indices[:, None], "int64"), ones, [total])


@tf.function(reduce_retracing=True)
def top_k_indicator(scores, k):
    """1 at the k largest scores, 0 elsewhere; NaN never wins; ties go low.

    `tf.math.top_k` returns the lower index first among equal values, which
    makes the choice deterministic.
    """
    scores = tf.where(tf.math.is_nan(scores), -np.inf, scores)
    total = tf.shape(scores, out_type="int64")[0]
    indices = tf.math.top_k(scores, k=k, sorted=False).indices
    return _indicator(indices, total)


def random_scores(total, seed):
    """Uniform scores from a stateless generator (identical on every replica)."""
    return tf.random.stateless_uniform([total], seed=seed)


@tf.function(reduce_retracing=True)
def drop_and_grow(mask, drop_scores, grow_scores, count):
    """Moves `count` entries out of and into a flat binary mask (Eq. 7-8).

    Drops the `count` perturbed entries with the smallest `drop_scores`, then
    grows the `count` entries with the largest `grow_scores` among those
    unperturbed before the drop, so the number of ones never changes.
    """
    inf = tf.constant(np.inf, "float32")
    total = tf.shape(mask, out_type="int64")[0]
    on = mask > 0.5
    drop_key = tf.where(on, -tf.where(tf.math.is_nan(drop_scores), -inf, drop_scores), -inf)
    dropped = tf.math.top_k(drop_key, k=count, sorted=False).indices
    grow_key = tf.where(on, -inf, tf.where(tf.math.is_nan(grow_scores), -inf, grow_scores))
    grown = tf.math.top_k(grow_key, k=count, sorted=False).indices
    return mask - _indicator(dropped, total) + _indicator(grown, total)
