"""`StructuredFisherMask`: SSAM-F restricted to the top of the network, so steps get cheaper."""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_ssam.masks import mask_ops
from keras_ssam.masks.fisher_mask import FisherMask

BUDGETS = ("count", "mass")


@keras.saving.register_keras_serializable(package="keras_ssam")
class StructuredFisherMask(FisherMask):
    """SSAM-F whose perturbed entries all lie in the top layers of the model.

    The support (the variables whose mask has ones) is the smallest
    *top-closed* set of whole variables, everything from a cut point to the
    output in the order of `model.masked_variables` (the layer order of a
    functional model), that meets the budget; inside it the entry-wise
    Fisher top-k of SSAM-F (Mi et al. 2022, Eq. 5-6) picks exactly
    `k = round((1 - sparsity) * N)` entries. With `budget="count"` the
    support holds at least `k` entries, so the density is exactly
    `1 - sparsity`; with `budget="mass"` it is the smallest top set holding
    a `1 - sparsity` share of the total Fisher mass, and when that set has
    fewer than `k` entries all of them are perturbed (density below target).

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

    def support_start(self, scores):
        """Index of the first variable of the top set, from per-variable scores."""
        sizes = [int(np.prod(s.shape)) for s in scores]
        if self.budget == "count":
            need, amounts = self.k, sizes
        else:
            amounts = [float(tf.reduce_sum(s)) for s in scores]
            need = (1.0 - self.sparsity) * sum(amounts)
        total = 0.0
        for start in range(len(scores) - 1, -1, -1):
            total += amounts[start]
            if total >= need:
                return start
        return 0

    def compute_mask(self):
        scores = [tf.cast(s, "float32") for s in self.fisher_scores()]
        start = self.support_start(scores)
        shapes = [m.shape for m in self.model.masks]
        inside = mask_ops.flatten(scores[start:])
        k = min(self.k, int(inside.shape[0]))
        top = mask_ops.unflatten(mask_ops.top_k_indicator(inside, k), shapes[start:])
        return [tf.zeros(s, "float32") for s in shapes[:start]] + list(top)

    def get_config(self):
        config = super().get_config()
        config["budget"] = self.budget
        return config


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
