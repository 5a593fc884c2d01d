"""`StructuredFisherMask`: SSAM-F restricted to the top of the network, so steps get cheaper."""

import math
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_ssam.masks import mask_ops
from keras_ssam.masks.fisher_mask import FisherMask

BUDGETS = ("count", "mass")


@keras.saving.register_keras_serializable(package="keras_ssam")
class StructuredFisherMask(FisherMask):
    """SSAM-F whose perturbed entries all lie in the top layers of the model.

    The support (the variables whose mask has ones) is the smallest *top
    set* of whole variables that meets the budget; inside it the entry-wise
    Fisher top-k of SSAM-F (Mi et al. 2022, Eq. 5-6) picks exactly
    `k = round((1 - sparsity) * N)` entries. With `budget="count"` the
    support holds at least `k` entries, so the density is exactly
    `1 - sparsity`; with `budget="mass"` it is the smallest top set holding
    a `1 - sparsity` share of the total Fisher mass, and when that set has
    fewer than `k` entries all of them are perturbed (density below target).

    What "top" means: the variables are ranked by their distance from the
    model's outputs, measured on the model's forward pass (traced once per
    trainable set, in inference mode, with `tf.function`): a variable's
    depth is the longest chain of operations on activations (operations that
    depend on the model's input) from where the variable enters the
    computation to an output. A top set is every variable up to some depth,
    so it is closed upwards: a variable computed on the output of a layer in
    the set is in the set too. The longest chain, not the shortest, is what
    makes it so: a skip connection does not lift the layer that feeds it
    above the layers it skips. For a functional model this is the order of
    the functional graph (Keras sorts `model.layers` by the same longest
    path); unlike the order of `model.weights`, it also holds for the layers
    inside a custom layer and for subclassed models, whose weights follow
    the order in which layers were created. Ties (parallel branches at the
    same distance from the outputs) go first to the variable farther from
    the inputs, then to the later one in `model.masks`. Variables no output
    depends on come last. A subclassed model (no functional graph) gets the
    same ranking, with a warning once: `SSAMModel` cannot cut a model
    without a graph, so its steps are not cheaper than SAM's.

    Why: an entry-wise mask leaves both SAM passes dense. With the perturbed
    variables at the top of a functional model, `SSAMModel` (with
    `norm_scope="masked"`) differentiates only them in the first pass and
    runs the second pass from the activations at a cut below them (see
    `keras_ssam.two_pass`), which is what makes a step cheaper than SAM's.

    Args:
        x: Training inputs (array), or a `tf.data.Dataset` of `(x, y)`
            batches.
        y: Training targets when `x` is an array. Defaults to `None`.
        sparsity: Float in `[0, 1)`. Defaults to `0.5`.
        budget: `"count"` or `"mass"`, what the top set must hold. Defaults
            to `"count"`.
        **kwargs: Forwarded to `keras_ssam.FisherMask` (`num_samples`,
            `chunk_size`, `update_interval`, `update_unit`, `seed`, ...).

    Example:

    ```python
    model = keras_ssam.SSAMModel(base, rho=0.1, norm_scope="masked")
    model.fit(x, y, callbacks=[keras_ssam.StructuredFisherMask(x, y, sparsity=0.5)])
    ```

    Reference:
        - [Mi et al., 2022](https://arxiv.org/abs/2210.05177)
    """

    def __init__(self, x, y=None, sparsity=0.5, budget="count", **kwargs):
        super().__init__(x, y, sparsity=sparsity, **kwargs)
        if budget not in BUDGETS:
            raise ValueError(f"`budget` must be one of {BUDGETS}; received budget={budget!r}.")
        self.budget = budget
        self._order = None  # (trainable set, ranking) of the last ranking
        self._warned = False

    def variable_order(self, x):
        """Indices into `model.masks`, from the top of the network down.

        Args:
            x: A batch of model inputs (its shape and dtype trace the
                forward pass; its values are not used).
        """
        variables = self.model.masked_variables
        key = tuple(id(v) for v in variables)
        if self._order is None or self._order[0] != key:
            inner = self.model.model
            if not _has_graph(inner) and not self._warned:
                self._warned = True
                warnings.warn(
                    f"StructuredFisherMask: the wrapped model {inner.name!r} is not functional "
                    "(a subclassed model has no graph). Its top layers are found on its "
                    "traced forward pass: variables are ranked by the longest chain of "
                    "operations from where they enter to the outputs. SSAMModel cannot cut "
                    "a model without a graph, so its steps are not cheaper than SAM's.",
                    stacklevel=2,
                )
            strategy = self.model.distribute_strategy
            self._order = (key, depth_order(inner, variables, x, strategy))
        return self._order[1]

    def support(self, scores, order):
        """The variables of the top set, from per-variable scores.

        Args:
            scores: Fisher scores, one tensor per entry of `model.masks`.
            order: `variable_order()`.

        Returns:
            Indices into `model.masks`, a prefix of `order`.
        """
        sizes = [int(np.prod(scores[i].shape)) for i in order]
        if self.budget == "count":
            need, amounts = self.k, sizes
        else:
            amounts = [float(tf.reduce_sum(scores[i])) for i in order]
            need = (1.0 - self.sparsity) * sum(amounts)
        total = 0.0
        for count, amount in enumerate(amounts, 1):
            total += amount
            if total >= need:
                return list(order[:count])
        return list(order)

    def compute_mask(self):
        x, y = self.sample()
        scores = [tf.cast(s, "float32") for s in self.fisher_scores(x, y)]
        # The top-k runs over the support in mask order: ties go to the lower
        # index, as in FisherMask.
        preprocess = getattr(self.model, "preprocess_samples", None)
        if preprocess is not None:  # a KerasHub Task: trace on what the task takes
            x = keras.utils.unpack_x_y_sample_weight(preprocess(x))[0]
        chosen = sorted(self.support(scores, self.variable_order(x)))
        shapes = [m.shape for m in self.model.masks]
        inside = mask_ops.flatten([scores[i] for i in chosen])
        k = min(self.k, int(inside.shape[0]))
        top = mask_ops.unflatten(mask_ops.top_k_indicator(inside, k), [shapes[i] for i in chosen])
        masks = [tf.zeros(s, "float32") for s in shapes]
        for i, mask in zip(chosen, top):
            masks[i] = mask
        return masks

    def get_config(self):
        config = super().get_config()
        config["budget"] = self.budget
        return config


def _has_graph(model):
    try:
        return model.inputs is not None and model.outputs is not None
    except AttributeError:
        return False


def depth_order(model, variables, x, strategy=None):
    """Indices of `variables`, ranked from the outputs of `model` down.

    The ranking of `StructuredFisherMask` (see its docstring): by the longest
    chain of operations on activations from where a variable enters the
    forward pass to an output (shortest first), then by the longest chain
    from the inputs (longest first), then by position (last first).

    The forward pass is traced with `tf.function` (in inference mode, never
    run) and read with TensorFlow's public graph API. This is the least
    private way to get the structure: Keras' public API gives a layer's
    first call only (`layer.output`), a nested model's `output` is its own
    inner tensor, and the functional graph itself (`_inbound_nodes`,
    `_keras_history`) is private; a subclassed model has no graph at all.

    Args:
        model: A built Keras model.
        variables: Its variables to rank.
        x: A batch of model inputs (shape and dtype only).
        strategy: The `tf.distribute.Strategy` the variables belong to.
            Defaults to the current one.

    Returns:
        A list of indices into `variables`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    spec = tf.nest.map_structure(
        lambda a: tf.TensorSpec((None,) + tuple(a.shape[1:]), tf.as_dtype(a.dtype)), x
    )
    forward = tf.function(lambda inputs: model(inputs, training=False))
    graph = forward.get_concrete_function(spec).graph
    captured = {id(outer): inner.op for outer, inner in graph.captures}
    sources = set(captured.values())
    ops = graph.get_operations()  # creation order: inputs before consumers
    # Activations: the operations that depend on the model's input, and their
    # longest chain from it.
    height = {t.op: 0 for t in graph.inputs if t.op not in sources}
    for op in ops:
        heights = [height[t.op] for t in op.inputs if t.op in height]
        if heights and op not in height:
            height[op] = 1 + max(heights)
    # Their longest chain to an output (only those an output depends on).
    outputs = {t.op for t in graph.outputs}
    depth = {}
    for op in reversed(ops):
        if op not in height:
            continue
        below = [depth[c] + 1 for t in op.outputs for c in t.consumers() if c in depth]
        if op in outputs or below:
            depth[op] = max(below + [0])

    def entries(source):
        """The activations a variable reaches through parameter-only operations."""
        seen, stack, found = {source}, [source], []
        while stack:
            for t in stack.pop().outputs:
                for consumer in t.consumers():
                    if consumer in seen:
                        continue
                    seen.add(consumer)
                    if consumer in height:
                        found += [consumer] if consumer in depth else []
                    else:
                        stack.append(consumer)
        return found

    keys = []
    for i, variable in enumerate(variables):
        found = [
            op
            for part in strategy.experimental_local_results(variable.value)
            if id(part.handle) in captured
            for op in entries(captured[id(part.handle)])
        ]
        if found:
            keys.append((max(depth[op] for op in found), -min(height[op] for op in found), -i))
        else:
            keys.append((math.inf, 0, -i))
    return sorted(range(len(variables)), key=keys.__getitem__)


def mask_distribution(model):
    """Where a model's masks put their ones, per variable.

    Args:
        model: A `keras_ssam.SSAMModel`.

    Returns:
        A list of dicts, one per currently trainable variable in mask order:
        `variable` (its path), `entries`, `perturbed` and `fraction`.
    """
    rows = []
    for variable, mask in zip(model.masked_variables, model.masks):
        entries = int(np.prod(mask.shape))
        perturbed = int(np.count_nonzero(keras.ops.convert_to_numpy(mask)))
        rows.append(
            dict(
                variable=variable.path,
                entries=entries,
                perturbed=perturbed,
                fraction=perturbed / entries if entries else math.nan,
            )
        )
    return rows
