"""Sparse Sharpness-Aware Minimization (SSAM) for Keras 3 on TensorFlow.

The package is grouped by kind:

- the step: `SSAMModel` (`ssam_model`, which reads next to Algorithm 1), the perturbation
  `e` (`perturbation`) and the step's parts (`step`: passes, plan, guard, mask state,
  support, saving);
- `masks`: the mask strategies (SSAM-F, SSAM-D, random, structured);
- `schedules`: rho schedules;
- `CollapseGuard` (`collapse_guard`): a callback that flags training stuck at chance level;
- `analysis`: flatness measurements (Hessian, landscape, gradient difference) and plots;
- `experiments`: the paper's data pipelines and models;
- `tuning`: rho search on KerasTuner (extra `tune`);
- `hub`: KerasHub tasks, `SSAMModel(task)` (extra `hub`; imported only when a task is wrapped);
- `cli`: `keras-ssam train` / `tune` / `analyze` on top of all of them (the console entry,
  `keras_ssam_cli`, parses without importing TensorFlow).

The step imports neither masks, schedules, experiments nor the CLI.
"""

import importlib

from keras_ssam.collapse_guard import CollapseGuard
from keras_ssam.gradient_norm_trigger import GradientNormTrigger
from keras_ssam.masks import (
    DynamicMask,
    FisherMask,
    MaskCallback,
    RandomMask,
    StructuredFisherMask,
)
from keras_ssam.perturbation import sparse_perturbation
from keras_ssam.schedules import LinkedRhoScheduler, RhoScheduler, RhoWindow
from keras_ssam.ssam_model import SSAMModel

__version__ = "0.1.0"

__all__ = [
    "CollapseGuard",
    "DynamicMask",
    "FisherMask",
    "GradientNormTrigger",
    "LinkedRhoScheduler",
    "MaskCallback",
    "RandomMask",
    "RhoScheduler",
    "RhoWindow",
    "SSAMModel",
    "StructuredFisherMask",
    "sparse_perturbation",
    "__version__",
]

# Earlier releases had these modules at the top; `from keras_ssam import data` still works,
# loaded on first use so that importing the library does not import the input pipelines.
_MOVED = {
    "data": "keras_ssam.experiments.data",
    "models": "keras_ssam.experiments.models",
    "mask_ops": "keras_ssam.masks.mask_ops",
    "plots": "keras_ssam.analysis.plots",
    "two_pass": "keras_ssam.step.plan",
}


def __getattr__(name):
    if name in _MOVED:
        return importlib.import_module(_MOVED[name])
    raise AttributeError(f"module 'keras_ssam' has no attribute {name!r}")
