"""`RandomMask`: the random-mask ablation baseline."""

import keras

from keras_ssam.masks import mask_ops
from keras_ssam.masks.mask_callback import MaskCallback


@keras.saving.register_keras_serializable(package="keras_ssam")
class RandomMask(MaskCallback):
    """Perturbs a seeded uniformly random subset of the parameters.

    The baseline of the appendix ablations of Mi et al. (2022): same
    sparsity as SSAM-F/SSAM-D, no information used to pick the entries.
    With the default `update_interval=None` the mask is drawn once before
    training; an interval redraws it.

    Args:
        sparsity: Float in `[0, 1)`. Defaults to `0.5`.
        update_interval: Integer, or `None` for a fixed mask. Defaults to
            `None`.
        update_unit: `"epoch"` or `"step"`. Defaults to `"epoch"`.
        seed: Integer. Each draw is keyed by `(seed, index)`, `index` being
            the epoch (or step) of the draw, so a resumed run redraws what the
            uninterrupted run drew. Defaults to `0`.

    Example:

    ```python
    model.fit(x, y, callbacks=[keras_ssam.RandomMask(sparsity=0.9)])
    ```

    Reference:
        - [Mi et al., 2022](https://arxiv.org/abs/2210.05177)
    """

    def __init__(self, sparsity=0.5, update_interval=None, update_unit="epoch", seed=0):
        super().__init__(sparsity, update_interval, update_unit, seed)

    def compute_mask(self):
        scores = mask_ops.random_scores(self.num_entries, [self.seed, self.index])
        flat = mask_ops.top_k_indicator(scores, self.k)
        return mask_ops.unflatten(flat, [m.shape for m in self.model.masks])
