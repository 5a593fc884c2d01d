"""Sparse Sharpness-Aware Minimization (SSAM) for Keras 3 on TensorFlow."""

from keras_ssam.perturbation import sparse_perturbation
from keras_ssam.ssam_model import SSAMModel

__version__ = "0.1.0"

__all__ = ["SSAMModel", "sparse_perturbation", "__version__"]
