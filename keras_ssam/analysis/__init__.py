"""Flatness analysis: Hessian spectrum, loss landscapes, SAM-vs-SGD gradients.

Written from the math (no code from PyHessian or the loss-landscape project):

- Hessian-vector products by forward-over-reverse differentiation (a JVP of
  the gradient; 1.1-1.3x cheaper than double backpropagation on a CIFAR
  ResNet-18 here, which stays available as `hvp_mode="reverse"`); top
  eigenvalues by Lanczos or power iteration with deflation; the trace by
  Hutchinson's estimator.
- Loss landscapes along random directions with the filter normalization of
  Li et al. (2018).
- The per-parameter relative difference between the SAM and SGD gradients
  (Mi et al. 2022, Fig. 1).

Every function evaluates the model in inference mode (BatchNorm uses its
moving statistics) and never assigns to a variable: perturbed weights are
passed through `keras.StatelessScope`, so interrupting a long computation
(Ctrl-C) leaves the model exactly as it was.

The objective is always the mean of the per-example loss over all of `data`,
`L(w) = (1/N) sum_i s_i l_i(w)` (`s_i = 1` without sample weights; with
them this is Keras' `"sum_over_batch_size"` reduction, the value
`model.evaluate` reports), whatever form the loss has: a string such as
`"mse"` (for which `keras.losses.get` returns the unreduced per-example
function), a `keras.losses.Loss` (its `call`, the unreduced loss, is used;
its own `reduction` is ignored) or a function `(y_true, y_pred)` returning
per-example values or their batch mean. Regularization losses
(`model.losses`) are not included.

One module per tool, each re-exported here: `hessian` (Hessian-vector
products, top eigenvalues by power iteration or Lanczos, the trace),
`landscape` (loss landscapes), `gradients` (the SAM-vs-SGD gradient
difference); `objective` holds what they share (batches, the loss, its
gradient and Hessian-vector products); `plots` draws their results.
"""

from keras_ssam.analysis.gradients import gradient_difference
from keras_ssam.analysis.hessian import hessian_eigenvalues, hessian_vector_product
from keras_ssam.analysis.landscape import filter_normalized_direction, loss_landscape
from keras_ssam.analysis.objective import HVP_MODES, Objective

__all__ = [
    "HVP_MODES",
    "Objective",
    "filter_normalized_direction",
    "gradient_difference",
    "hessian_eigenvalues",
    "hessian_vector_product",
    "loss_landscape",
]
