"""Sparse Sharpness-Aware Minimization (SSAM) for Keras 3 on TensorFlow."""

from keras_ssam.dynamic_mask import DynamicMask
from keras_ssam.fisher_mask import FisherMask
from keras_ssam.linked_rho_scheduler import LinkedRhoScheduler
from keras_ssam.mask_callback import MaskCallback
from keras_ssam.perturbation import sparse_perturbation
from keras_ssam.random_mask import RandomMask
from keras_ssam.rho_scheduler import RhoScheduler
from keras_ssam.ssam_model import SSAMModel
from keras_ssam.structured_mask import StructuredFisherMask

__version__ = "0.1.0"

__all__ = [
    "DynamicMask",
    "FisherMask",
    "LinkedRhoScheduler",
    "MaskCallback",
    "RandomMask",
    "RhoScheduler",
    "SSAMModel",
    "StructuredFisherMask",
    "sparse_perturbation",
    "__version__",
]
