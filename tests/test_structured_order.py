"""`StructuredFisherMask`'s top set follows the network's depth, not `model.weights`.

Each model is built so that the order of `model.weights` (the masks' order)
and the distance from the outputs disagree; the expected supports are worked
out by hand from the architecture.
"""

import warnings

import keras
import numpy as np
import pytest

from keras_ssam import SSAMModel, StructuredFisherMask
from keras_ssam.masks.structured_mask import depth_order

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
D, C = 6, 3


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, D)).astype("float32"), rng.integers(0, C, n).astype("int32")


def wrap(inner):
    ssam = SSAMModel(inner, rho=0.1)
    ssam.compile(optimizer=keras.optimizers.SGD(0.01), loss=LOSS)
    return ssam


def computed_masks(inner, sparsity):
    """`{variable path: mask}` after the callback's first update."""
    x, y = data()
    ssam = wrap(inner)
    callback = StructuredFisherMask(x, y, sparsity=sparsity, num_samples=16)
    callback.set_model(ssam)
    callback.update_mask(0)
    return {v.path: m.numpy() for v, m in zip(ssam.masked_variables, ssam.masks)}


def ones(masks):
    return {path: int(m.sum()) for path, m in masks.items() if m.any()}


def sizes(model):
    return {v.path: int(np.prod(v.shape)) for v in model.trainable_variables}


def two_branch():
    """x -> b1 -> b2 -> concat <- a <- x, concat -> head.

    Listing the deep branch first makes Keras put `a` (fed by the input)
    after `b2` in `model.weights`, so the old order put `a` right under the
    head. Both sit at the same distance from the output; `b2` is farther
    from the input, so it is higher.
    """
    layers = keras.layers
    x = keras.Input((D,))
    deep = layers.Dense(4, name="b2")(layers.Dense(4, name="b1")(x))
    short = layers.Dense(4, name="a")(x)
    out = layers.Dense(C, name="head")(layers.Concatenate()([deep, short]))
    return keras.Model(x, out)


def test_two_branch_functional_support_skips_the_layer_fed_by_the_input():
    inner = two_branch()
    order = [v.path for v in inner.weights]
    # The old top set (the end of `model.weights`) would take `a` after the head.
    assert order[-4:] == ["a/kernel", "a/bias", "head/kernel", "head/bias"]
    n = sizes(inner)
    assert (sum(n.values()), n["head/kernel"] + n["head/bias"]) == (103, 27)
    # k = round(0.3 * 103) = 31 = the head (27) + one bias of 4: b2's, not a's.
    masks = computed_masks(inner, sparsity=0.7)
    assert ones(masks) == {"b2/bias": 4, "head/kernel": 24, "head/bias": 3}


class HeadFirst(keras.Model):
    """A subclassed model whose layers are created from the head down."""

    def __init__(self):
        super().__init__(name="hf")
        self.head = keras.layers.Dense(C, name="head")
        self.mid = keras.layers.Dense(5, activation="relu", name="mid")
        self.stem = keras.layers.Dense(5, activation="relu", name="stem")

    def call(self, x):
        return self.head(self.mid(self.stem(x)))


def head_first():
    inner = HeadFirst()
    inner(np.zeros((1, D), "float32"))
    return inner


def test_subclassed_model_created_head_first_gets_its_support_on_the_real_head():
    inner = head_first()
    assert [v.path for v in inner.weights][:2] == ["hf/head/kernel", "hf/head/bias"]  # first
    x, y = data()
    ssam = wrap(inner)
    callback = StructuredFisherMask(x, y, sparsity=0.8, num_samples=16)
    with pytest.warns(UserWarning, match="not functional") as caught:
        ssam.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[callback])
    assert callback.updates == 2
    said = [w for w in caught if "StructuredFisherMask" in str(w.message)]
    assert len(said) == 1  # once, not at every update
    masks = {v.path: m.numpy() for v, m in zip(ssam.masked_variables, ssam.masks)}
    # 83 entries, k = round(0.2 * 83) = 17 <= the head's 18: all on the head.
    assert sum(sizes(inner).values()) == 83
    assert set(ones(masks)) <= {"hf/head/kernel", "hf/head/bias"}
    assert sum(ones(masks).values()) == 17


class Block(keras.layers.Layer):
    """A custom layer computing `top(bottom(x))`, `top` created first."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.top = keras.layers.Dense(4, name="top")
        self.bottom = keras.layers.Dense(4, activation="relu", name="bottom")

    def call(self, x):
        return self.top(self.bottom(x))


def test_functional_model_ranks_the_layers_inside_a_custom_layer_by_depth():
    x = keras.Input((D,))
    out = keras.layers.Dense(C, name="head")(Block(name="block")(x))
    inner = keras.Model(x, out)
    paths = [v.path for v in inner.weights]
    assert paths.index("block/top/bias") < paths.index("block/bottom/kernel")
    ranked = depth_order(inner, inner.trainable_variables, np.zeros((1, D), "float32"))
    assert [paths[i] for i in ranked] == [
        "head/bias",
        "head/kernel",
        "block/top/bias",
        "block/top/kernel",
        "block/bottom/bias",
        "block/bottom/kernel",
    ]
    # 63 entries, k = round(0.619 * 63) = 39 = the head (15) + top (20) + bottom's bias (4).
    assert sum(sizes(inner).values()) == 63
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a functional model: no warning
        masks = computed_masks(inner, sparsity=0.381)
    assert ones(masks) == {"head/kernel": 12, "head/bias": 3, "block/top/kernel": 16,
                           "block/top/bias": 4, "block/bottom/bias": 4}  # fmt: skip


def test_longest_path_keeps_a_skip_connections_source_below_the_layers_it_skips():
    """x -> stem -> c1 -> c2 -> add(stem, c2) -> head: the stem is at the bottom.

    By the shortest path the stem (one hop from the add) would rank level with
    `c2` and above `c1`; a top set with it would reach down to the input.
    """
    layers = keras.layers
    x = keras.Input((4,))
    stem = layers.Dense(4, name="stem")(x)
    c2 = layers.Dense(4, name="c2")(layers.Dense(4, name="c1")(stem))
    inner = keras.Model(x, layers.Dense(C, name="head")(layers.Add()([stem, c2])))
    paths = [v.path for v in inner.weights]
    ranked = depth_order(inner, inner.trainable_variables, np.zeros((1, 4), "float32"))
    assert [paths[i] for i in ranked][-2:] == ["stem/bias", "stem/kernel"]
