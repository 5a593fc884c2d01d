"""`DynamicMask`: SSAM-D, a mask grown and pruned during training."""

import math
import numbers
import time

import keras
import tensorflow as tf

from keras_ssam.masks import mask_ops
from keras_ssam.masks.mask_callback import MaskCallback, check_positive_int

STRATEGIES = ("gradient", "weight", "random")


@keras.saving.register_keras_serializable(package="keras_ssam")
class DynamicMask(MaskCallback):
    """Updates the mask by dropping flat entries and growing random ones.

    SSAM-D (Mi et al. 2022, Sec. 4.3, Algorithm 2 option II). Training starts
    from a seeded random mask at the target sparsity. At each update the
    `n = round(d(t) * k)` perturbed entries with the smallest `|g|` (the
    flattest, Eq. 7) are dropped and `n` entries are grown at random among
    the entries that were unperturbed (Eq. 8), so exactly `k` stay perturbed.
    The drop rate decays as `d(t) = drop_rate / 2 * (1 + cos(pi * t / T))`
    (Eq. 9), `T` being the number of epochs (or steps) of training.

    The order is the official code's: updates are due at every
    `update_interval`-th epoch (or step) *including* epoch (step) 0, with
    `d(0) = drop_rate`. The update runs inside that epoch's first training
    step, on the step's own first-pass gradient `g` (no extra pass): the step
    forms `e` with the current mask, then drops and grows, and the new mask
    applies from the next step. Before the very first step the seeded random
    initial mask is set, so step 1 perturbs with it. Random draws are keyed by
    `(seed, index)` of the update and are identical on every replica (for a
    given device type and compile mode: XLA draws other numbers).

    Args:
        sparsity: Float in `[0, 1)`. Defaults to `0.5`.
        drop_rate: Float in `[0, 1]`, `d_0` of Eq. 9. Defaults to `0.5`.
        drop_strategy: `"gradient"` (smallest `|g|`), `"weight"` (smallest
            `|w|`) or `"random"`. Defaults to `"gradient"`.
        growth_strategy: `"random"`, `"gradient"` (largest `|g|`) or
            `"weight"` (largest `|w|`). Defaults to `"random"`.
        update_interval: Integer epochs (or steps) between updates, or
            `None` to keep the initial random mask. Defaults to `1`.
        update_unit: `"epoch"` or `"step"`. Defaults to `"epoch"`.
        total_steps: Integer `T` when `update_unit="step"` and `fit()` does
            not know the epoch length. Defaults to `None`.
        seed: Integer. Seed of the initial mask and of the random growth (and
            drop). Defaults to `0`.

    Example:

    ```python
    model.fit(x, y, epochs=200, callbacks=[keras_ssam.DynamicMask(0.5)])
    ```

    Reference:
        - [Mi et al., 2022](https://arxiv.org/abs/2210.05177)
    """

    _update_at_zero = True  # the official code also updates at epoch 0

    def __init__(
        self,
        sparsity=0.5,
        drop_rate=0.5,
        drop_strategy="gradient",
        growth_strategy="random",
        update_interval=1,
        update_unit="epoch",
        total_steps=None,
        seed=0,
    ):
        super().__init__(sparsity, update_interval, update_unit, seed)
        if isinstance(drop_rate, bool) or not isinstance(drop_rate, numbers.Real):
            raise TypeError(f"`drop_rate` must be a float; received drop_rate={drop_rate!r}.")
        if not (math.isfinite(drop_rate) and 0.0 <= drop_rate <= 1.0):
            raise ValueError(f"`drop_rate` must be in [0, 1]; received drop_rate={drop_rate!r}.")
        for name, value in (("drop_strategy", drop_strategy), ("growth_strategy", growth_strategy)):
            if value not in STRATEGIES:
                raise ValueError(
                    f"`{name}` must be one of {STRATEGIES}; received {name}={value!r}."
                )
        self.drop_rate = float(drop_rate)
        self.drop_strategy = drop_strategy
        self.growth_strategy = growth_strategy
        self.total_steps = check_positive_int("total_steps", total_steps, allow_none=True)
        self._count = None
        self._update_index = None
        self._pending = None

    def drop_fraction(self, t):
        """d(t) of Eq. 9 at epoch or step `t`."""
        return self.drop_rate / 2.0 * (1.0 + math.cos(math.pi * t / self._horizon()))

    def _horizon(self):
        if self.update_unit == "step":
            if self.total_steps is not None:
                return self.total_steps
            steps = self.params.get("steps")
            if not steps:
                raise ValueError(
                    "DynamicMask with update_unit='step' needs `total_steps` when "
                    "fit() does not know the number of steps per epoch."
                )
            return steps * self.params["epochs"]
        return self.params["epochs"] if self.params else 1

    def drop_count(self, t):
        """Entries moved at the update at `t`: round(d(t) * k), feasible."""
        count = int(math.floor(self.drop_fraction(t) * self.k + 0.5))
        return min(count, self.k, self.num_entries - self.k)

    def compute_mask(self):
        """The initial mask: seeded random at the target sparsity."""
        scores = mask_ops.random_scores(self.num_entries, [self.seed, 0])
        flat = mask_ops.top_k_indicator(scores, self.k)
        return mask_ops.unflatten(flat, [m.shape for m in self.model.masks])

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        with self.model.distribute_strategy.scope():
            self._count = tf.Variable(0, dtype="int32", trainable=False)
            self._update_index = tf.Variable(0, dtype="int64", trainable=False)
        self.model.set_in_step_mask_update(self._in_step_update)

    def on_train_end(self, logs=None):
        self.model.set_in_step_mask_update(None)

    def on_update_due(self, index):
        self.index = index
        self._count.assign(self.drop_count(index))
        self._update_index.assign(index)
        self._pending = (mask_ops.flatten(self.model.masks), time.perf_counter())
        self.model.request_mask_update()

    def on_train_batch_end(self, batch, logs=None):
        if self._pending is not None:
            old, start = self._pending
            self._pending = None
            self._record(old, start)

    def _in_step_update(self, grads, variables, masks):
        total = self.num_entries
        seed = tf.stack([tf.constant(self.seed, "int64"), self._update_index])
        scores = {
            "gradient": tf.abs(mask_ops.flatten(grads)),
            "weight": tf.abs(mask_ops.flatten(variables)),
        }
        drop = scores.get(self.drop_strategy)
        if drop is None:
            drop = mask_ops.random_scores(total, seed + [0, 2**41])
        grow = scores.get(self.growth_strategy)
        if grow is None:
            grow = mask_ops.random_scores(total, seed + [0, 2**40])
        new = mask_ops.drop_and_grow(mask_ops.flatten(masks), drop, grow, self._count)
        return mask_ops.unflatten(new, [m.shape for m in masks])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "drop_rate": self.drop_rate,
                "drop_strategy": self.drop_strategy,
                "growth_strategy": self.growth_strategy,
                "total_steps": self.total_steps,
            }
        )
        return config
