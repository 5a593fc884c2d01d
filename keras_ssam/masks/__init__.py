"""Mask strategies: which entries SSAM perturbs (Mi et al. 2022, Sec. 4; Algorithm 2).

`MaskCallback` is the interface; `FisherMask` (SSAM-F), `DynamicMask` (SSAM-D),
`RandomMask` (the ablation baseline) and `StructuredFisherMask` (SSAM-F on the top
layers, the cheap step) implement it. `mask_ops` holds the mask arithmetic.
"""

from keras_ssam.masks import mask_ops
from keras_ssam.masks.dynamic_mask import DynamicMask
from keras_ssam.masks.fisher_mask import FisherMask
from keras_ssam.masks.mask_callback import MaskCallback
from keras_ssam.masks.random_mask import RandomMask
from keras_ssam.masks.structured_mask import StructuredFisherMask, mask_distribution

__all__ = [
    "DynamicMask",
    "FisherMask",
    "MaskCallback",
    "RandomMask",
    "StructuredFisherMask",
    "mask_distribution",
    "mask_ops",
]
