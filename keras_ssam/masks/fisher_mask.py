"""`FisherMask`: SSAM-F, the mask from the empirical Fisher information."""

import contextlib
import logging

import keras
import numpy as np
import tensorflow as tf

from keras_ssam.masks import mask_ops
from keras_ssam.masks.mask_callback import MaskCallback, check_positive_int


@keras.saving.register_keras_serializable(package="keras_ssam")
class FisherMask(MaskCallback):
    """Perturbs the entries with the largest empirical Fisher information.

    SSAM-F (Mi et al. 2022, Sec. 4.2, Algorithm 2 option I). The empirical
    Fisher (Eq. 5) of each parameter is summed over `num_samples` training
    examples, `F = sum_i (d log p(y_i | x_i; w) / dw)^2`, using the model's
    compiled loss as `-log p`; the mask keeps the global top
    `(1 - sparsity) * N` entries of `F` (Eq. 6). Per-example gradients are
    vectorized with `tf.vectorized_map` over chunks of `chunk_size` examples
    and accumulated chunk by chunk, so extra memory is about `chunk_size`
    copies of the model. Models with an `Embedding` or `MultiHeadAttention`
    layer (BERT, ViT) loop over the chunk's examples instead (`vectorize`),
    adding each example's squares to running totals: an embedding's gradient
    (`tf.IndexedSlices`) then adds only its looked-up rows (duplicates summed
    before squaring), so a 30,000 x 128 vocabulary costs the totals and one
    example's rows, whatever `chunk_size`.

    Inputs may be any nested structure (a dict of arrays such as BERT's
    `token_ids`, `segment_ids`, `padding_mask`). On a wrapped KerasHub Task
    (`keras_ssam.hub.TaskSSAMModel`) the Task's preprocessor is applied to
    each chunk, so `x` is what `fit()` takes (raw strings, raw images).

    By default the Fisher pass runs the model in training mode on each
    example alone, as the official code does (a batch-size-1 loader in train
    mode): BatchNorm normalizes with the example's own statistics, so the
    first mask of a fresh network (moving statistics still 0/1) ranks real
    gradients rather than saturated logits. All state updates of the pass
    (BatchNorm moving statistics, random-layer seeds) are discarded, and
    weights and optimizer state are untouched. Random layers (Dropout,
    augmentation inside the model) are active and draw independently for
    each example, as in the official code. `training=False` uses inference
    mode (moving statistics, no Dropout) instead.

    Examples are drawn uniformly without replacement from the whole training
    set, seeded by `(seed, index)` of the update (the epoch or step), so a
    resumed run draws what the uninterrupted run drew. Arrays are indexed
    directly. A `tf.data.Dataset` is counted once (one pass, unless its
    unbatched cardinality is known), and each update then streams it up to
    the last drawn position, keeping the drawn positions: the training set is
    never held in memory, but an update reads up to one pass of the dataset's
    pipeline. The dataset must be finite, and must yield the same order on
    every pass for the draw to be reproducible (a dataset that reshuffles
    each pass still gives a uniform draw).

    The training data is not part of `get_config()` (arrays and datasets are
    not serializable): rebuild with `FisherMask(x, y, **config)` or
    `FisherMask.from_config({**config, "x": x, "y": y})`.

    Args:
        x: Training inputs (an array or a nested structure of arrays with
            one batch dimension), or a finite `tf.data.Dataset` of
            `(x, y)` (or `(x, y, sample_weight)`) batches such as the one
            given to `fit()`.
        y: Training targets when `x` is an array. Defaults to `None`.
        num_samples: Integer. Examples drawn (seeded, without replacement)
            for each estimate. Defaults to `16` (the paper's CIFAR value;
            128 for ImageNet).
        chunk_size: Integer. Examples per vectorized pass. Defaults to
            `16`.
        training: Boolean. Run the Fisher pass in training mode (per-example
            BatchNorm statistics, state updates discarded), as the official
            code; `False` for inference mode. Defaults to `True`.
        vectorize: `True` (per-example gradients by `tf.vectorized_map`),
            `False` (a loop over each chunk's examples, sparse embedding
            gradients) or `"auto"` (`False` for models with an `Embedding`
            or `MultiHeadAttention` layer, whose pfor conversion fails on
            TensorFlow 2.21). Defaults to `"auto"`.
        sparsity: Float in `[0, 1)`. Defaults to `0.5`.
        update_interval: Integer epochs (or steps) between updates.
            Defaults to `1`.
        update_unit: `"epoch"` or `"step"`. Defaults to `"epoch"`.
        seed: Integer. Seed of the example sampler. Defaults to `0`.

    Example:

    ```python
    model = keras_ssam.SSAMModel(base, rho=0.1)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=5,
              callbacks=[keras_ssam.FisherMask(x, y, sparsity=0.5)])
    ```

    Reference:
        - [Mi et al., 2022](https://arxiv.org/abs/2210.05177)
    """

    def __init__(
        self,
        x,
        y=None,
        num_samples=16,
        chunk_size=16,
        training=True,
        sparsity=0.5,
        update_interval=1,
        update_unit="epoch",
        seed=0,
        vectorize="auto",
    ):
        super().__init__(sparsity, update_interval, update_unit, seed)
        self.num_samples = check_positive_int("num_samples", num_samples)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        if not isinstance(training, bool):
            raise TypeError(f"`training` must be a bool; received training={training!r}.")
        self.training = training
        if vectorize not in (True, False, "auto"):
            raise ValueError(
                f'`vectorize` must be True, False or "auto"; received vectorize={vectorize!r}.'
            )
        self.vectorize = vectorize
        self.x = x
        self.y = y
        self._examples = _check_data(x, y)
        self._num_examples = None
        self._jacobian_fn = None

    def num_examples(self):
        """Number of training examples (a dataset is counted on first use)."""
        if self._num_examples is None:
            examples = self._examples
            if isinstance(examples, tf.data.Dataset):
                count = int(examples.cardinality())
                if count == tf.data.INFINITE_CARDINALITY:
                    raise ValueError(
                        "FisherMask needs a finite dataset to draw from; received an "
                        "infinite one (e.g. with `.repeat()`). Pass the dataset "
                        "without `.repeat()`."
                    )
                if count < 0:
                    count = int(examples.reduce(np.int64(0), lambda n, _: n + 1))
            else:
                count = len(examples[1])
            self._num_examples = count
        return self._num_examples

    def sample_indices(self):
        """Positions of the examples of the update at `index`, sorted.

        Uniform without replacement over the whole training set, from a
        generator seeded by `(seed, index)`.
        """
        count = self.num_examples()
        rng = np.random.default_rng([self.seed, self.index])
        return np.sort(rng.choice(count, size=min(self.num_samples, count), replace=False))

    def sample(self):
        """Draws `num_samples` examples (all of them if there are fewer).

        The draw depends only on `(seed, index)` of the update, so a resumed
        run draws what the uninterrupted run drew.
        """
        take = self.sample_indices()
        if isinstance(self._examples, tf.data.Dataset):
            return _gather_from_stream(self._examples, take)
        xs, ys = self._examples
        return tf.nest.map_structure(lambda a: a[take], xs), ys[take]

    def fisher_scores(self, x=None, y=None):
        """Empirical Fisher per trainable entry, shaped like the masks."""
        if x is None:
            x, y = self.sample()
        variables = self.model.masked_variables
        totals = [tf.zeros(v.shape, "float32") for v in variables]
        for start in range(0, len(y), self.chunk_size):
            stop = start + self.chunk_size
            chunk_x = tf.nest.map_structure(lambda a, i=start, j=stop: a[i:j], x)
            chunk = self._squared_grads(chunk_x, y[start:stop], start)
            totals = [t + c for t, c in zip(totals, chunk)]
        return totals

    def compute_mask(self):
        scores = mask_ops.flatten(self.fisher_scores())
        flat = mask_ops.top_k_indicator(scores, self.k)
        return mask_ops.unflatten(flat, [m.shape for m in self.model.masks])

    def _squared_grads(self, x, y, start=0):
        variables = self.model.masked_variables
        key = tuple(id(v) for v in variables)
        if self._jacobian_fn is None or self._jacobian_fn[0] != key:
            # Rebuilt when the trainable set changes.
            vectorize = self.vectorize
            if vectorize == "auto":
                vectorize = vectorizes(self.model.model)
            squared = _make_squared_grads(self.model, variables, self.training, vectorize)
            self._jacobian_fn = (key, squared)
        positions = tf.range(start, start + len(y), dtype="int64")
        preprocess = getattr(self.model, "preprocess_samples", None)
        if preprocess is not None:  # a KerasHub Task's preprocessor
            x, y, _ = keras.utils.unpack_x_y_sample_weight(preprocess(x, y))
        x = tf.nest.map_structure(tf.convert_to_tensor, x)
        with _quiet_pfor():
            return self._jacobian_fn[1](x, tf.convert_to_tensor(y), positions)

    def get_config(self):
        """All `__init__` arguments except the data `x` and `y`."""
        config = super().get_config()
        config.update(
            {
                "num_samples": self.num_samples,
                "chunk_size": self.chunk_size,
                "training": self.training,
                "vectorize": self.vectorize,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        if "x" not in config:
            raise ValueError(
                "FisherMask's config does not hold its training data (arrays and "
                "datasets are not serializable). Pass it in: "
                "`FisherMask.from_config({**config, 'x': x, 'y': y})` or "
                f"`FisherMask(x, y, **config)`; received config={config!r}."
            )
        return cls(**config)


def per_example_loss_fn(model):
    """The compiled loss as a function returning one value per example."""
    loss = getattr(model, "loss", None)
    if isinstance(loss, (list, tuple, dict)) or loss is None:
        raise ValueError(
            f"FisherMask needs a model compiled with a single loss; received loss={loss!r}."
        )
    loss = keras.losses.get(loss) if isinstance(loss, str) else loss
    # `Loss.call` is the unreduced per-example loss.
    return loss.call if isinstance(loss, keras.losses.Loss) else loss


def _make_squared_grads(ssam, variables, training, vectorize):
    inner = ssam.model
    loss_fn = per_example_loss_fn(ssam)
    # Seed states of Dropout and random augmentation layers.
    rng_states = [v for v in inner.variables if v.name == "seed_generator_state"]

    def forward(x, position):
        if not training:
            return inner(x, training=False)
        # Training mode: BatchNorm uses this example's statistics; its
        # moving-statistics updates and the seed advances stay in the scope
        # and are discarded. Each example draws its own randomness (Dropout
        # masks): its seed counters are moved by (position + 1) * 2^32.
        offset = tf.stack([tf.constant(0, "int64"), (position + 1) * 2**32])
        mapping = [(v, tf.convert_to_tensor(v) + tf.cast(offset, v.dtype)) for v in rng_states]
        with keras.StatelessScope(state_mapping=mapping):
            return inner(x, training=True)

    def grads_of(example):
        x, y, position = example
        x = tf.nest.map_structure(lambda t: t[None], x)
        with tf.GradientTape() as tape:
            loss = loss_fn(y[None], forward(x, position))
            loss = tf.cast(tf.reduce_sum(loss), "float32")
        return tape.gradient(loss, variables)

    def one_example(example):
        return [
            tf.zeros(v.shape, "float32")
            if g is None
            else tf.square(tf.cast(tf.convert_to_tensor(g), "float32"))
            for g, v in zip(grads_of(example), variables)
        ]

    def add_example(totals, example):
        return [_add_squared(t, g) for t, g in zip(totals, grads_of(example))]

    @tf.function(reduce_retracing=True)
    def squared_grads(x, y, positions):
        if vectorize:
            # pfor turns the per-example forward/backward into batched ops;
            # it measured 13x faster than `tape.jacobian` on a CIFAR ResNet-18.
            per_example = tf.vectorized_map(one_example, (x, y, positions))
            return [tf.reduce_sum(g, axis=0) for g in per_example]
        zeros = [tf.zeros(v.shape, "float32") for v in variables]
        return tf.foldl(add_example, (x, y, positions), initializer=zeros)

    return squared_grads


def _add_squared(total, grad):
    """`total + grad ** 2`; an embedding's `IndexedSlices` only adds its looked-up rows.

    Rows looked up several times are summed before squaring (the squared
    gradient of the example, not the sum of squared lookups).
    """
    if grad is None:
        return total
    if not isinstance(grad, tf.IndexedSlices):
        return total + tf.square(tf.cast(grad, "float32"))
    rows, slot = tf.unique(grad.indices)
    summed = tf.math.unsorted_segment_sum(tf.cast(grad.values, "float32"), slot, tf.size(rows))
    return tf.tensor_scatter_nd_add(total, rows[:, None], tf.square(summed))


def vectorizes(model):
    """Whether the Fisher pass can vectorize over examples with pfor (`vectorize="auto"`).

    Not through embeddings or attention: on TensorFlow 2.21 pfor's
    conversion of KerasHub's BERT gives NaN gradients or corrupts memory,
    and it densifies an embedding's gradient per example.
    """
    risky = (keras.layers.Embedding, keras.layers.MultiHeadAttention)
    return not any(isinstance(layer, risky) for layer in model._flatten_layers())


class _DropPforWhileLoop(logging.Filter):
    """Drops pfor's notes that it loops over an op ("... uses a while_loop. Fix that!").

    pfor has no batched kernel for a filter gradient whose input differs per
    example (it always does here: the input is an activation), nor for the
    stateless random ops of Dropout, so it falls back to a loop and logs a
    note addressed to TensorFlow's developers ("Conv2DBackpropFilter uses a
    while_loop. Fix that!", "Using a while_loop for converting ...").
    """

    def filter(self, record):
        message = record.getMessage()
        return "uses a while_loop. Fix that!" not in message and not message.startswith(
            "Using a while_loop for converting"
        )


@contextlib.contextmanager
def _quiet_pfor():
    """`_DropPforWhileLoop` on TensorFlow's logger, for one Fisher pass only."""
    logger = tf.get_logger()
    note = _DropPforWhileLoop()
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)


def _gather_from_stream(examples, positions):
    """The examples at sorted `positions` of a stream, in one partial pass."""
    keep = np.zeros(int(positions[-1]) + 1, bool)
    keep[positions] = True
    keep = tf.constant(keep)
    picked = (
        examples.take(len(keep))
        .enumerate()
        .filter(lambda i, example: tf.gather(keep, i))
        .map(lambda i, example: (example[0], example[1]))
    )
    xs, ys = zip(*[(tf.nest.map_structure(np.asarray, a), np.asarray(b)) for a, b in picked])
    return tf.nest.map_structure(lambda *leaves: np.stack(leaves), *xs), np.stack(ys)


def _check_data(x, y):
    """Arrays `(x, y)`, or the dataset unbatched into single examples."""
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("Pass `y=None` when `x` is a tf.data.Dataset.")
        spec = x.element_spec
        if not isinstance(spec, (tuple, list)) or len(spec) < 2:
            raise ValueError(
                f"The dataset must yield `(x, y)` batches; received element_spec={spec!r}."
            )
        examples = x.unbatch()
        if not any(True for _ in examples.take(1)):
            raise ValueError("`x` is an empty dataset; FisherMask needs examples.")
        return examples
    if y is None:
        raise ValueError("`y` is required when `x` is an array.")
    # A list is one array (of strings, say), as in `fit()`; dicts and tuples nest.
    x = np.asarray(x) if isinstance(x, list) else tf.nest.map_structure(np.asarray, x)
    y = np.asarray(y)
    sizes = {len(leaf) for leaf in tf.nest.flatten(x)}
    if len(sizes) != 1 or 0 in sizes or sizes != {len(y)}:
        raise ValueError(
            "`x` and `y` must hold the same, non-zero number of examples; "
            f"received {sorted(sizes)} and {len(y)}."
        )
    return x, y
