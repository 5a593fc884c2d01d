"""KerasHub support: `SSAMModel(task)` for a `keras_hub.models.Task` (needs the `hub` extra).

`keras_ssam.SSAMModel(task)` returns a `TaskSSAMModel` when `task` is a
KerasHub Task; this package imports `keras_hub`, the core never does.
"""

from keras_ssam.hub.task_ssam_model import TaskSSAMModel

__all__ = ["TaskSSAMModel"]
