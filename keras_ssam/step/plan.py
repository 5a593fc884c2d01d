"""How a step is cut: the mask's support, the pruned first pass and the reused second pass.

An entry-wise mask leaves both SAM passes dense. Structure in the mask is what
makes a step cheaper, in two exact ways:

- **Pruning the first pass.** `e` needs the first-pass gradient only where the
  mask has ones. Asking the tape for the gradients of the *support* (the
  variables whose mask has any 1) lets `tf.function` skip every
  weight-gradient kernel outside it and the backward pass below the lowest
  supported layer. Exact with `norm_scope="masked"` (the norm only sees
  `m * g`); with `norm_scope="all"` the norm needs every gradient, so the
  first backward stays complete.
- **Reusing activations in the second pass.** Below the lowest supported
  layer the weights are not perturbed, so the activations of `w + e` equal
  those of `w` there. When the wrapped model is functional and has a
  single-tensor cut `h` below the support, the second pass runs only the
  layers above `h`, and the lower variables' gradients follow from the chain
  rule through the first pass's tape, `d L(w + e) / d h` being the upstream
  gradient.

This module finds the support and the cut; `keras_ssam.step.passes` runs the
passes.
"""

import dataclasses

import keras
import numpy as np

from keras_ssam.step import cut


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a step is computed for one support.

    Attributes:
        support: Indices (into the step's trainable variables) whose gradient
            the first pass must compute.
        lower: `keras.Model` from the inputs to the cut, or `None` (no reuse).
        upper: `keras.Model` from the cut to the outputs, or `None`.
        reason: Why the second pass is not reused (empty when it is).
    """

    support: tuple
    lower: object = None
    upper: object = None
    reason: str = ""

    @property
    def reuse(self):
        return self.upper is not None


def support_of(mask_values):
    """Indices of the masks that have at least one 1."""
    return tuple(i for i, m in enumerate(mask_values) if np.any(np.asarray(m) != 0))


def plan_step(model, variables, support, reuse=True):
    """The plan for a step whose first-pass gradient is needed on `support`.

    Args:
        model: The wrapped `keras.Model`.
        variables: The step's trainable variables, in the order `support`
            indexes.
        support: Indices of the variables whose masks have ones.
        reuse: Boolean. Look for a cut to reuse activations below it.

    Returns:
        A `Plan`.
    """
    support = tuple(support)
    if not reuse:
        return Plan(support, reason="reuse_activations=False")
    if len(support) == len(variables):
        return Plan(support, reason="the mask perturbs every variable")
    if not support:
        return Plan(support, reason="the mask is empty")
    lower, upper, reason = find_cut(model, [variables[i] for i in support], variables)
    return Plan(support, lower, upper, reason)


def find_cut(model, perturbed, variables):
    """The highest single-tensor cut of `model` below every variable in `perturbed`.

    A layer's output `h` is a cut when the layers above it compute the
    outputs from `h` alone (Keras raises "not connected" otherwise) and the
    two parts share no weights. Candidates are tried from the top down,
    starting below the lowest layer that holds a perturbed variable.

    Returns:
        `(lower, upper, reason)`: two `keras.Model`s and `""`, or `None, None`
        and the reason no cut was found.
    """
    layers = _graph_layers(model)
    if isinstance(layers, str):
        return None, None, layers
    wanted = {id(v) for v in perturbed}
    holds = [any(id(w) in wanted for w in layer.weights) for layer in layers]
    lowest = holds.index(True) if True in holds else len(layers)
    everything = {id(v) for v in variables}
    for layer in reversed(layers[:lowest]):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            h = layer.output
        except (ValueError, AttributeError):  # a layer called twice
            continue
        if not isinstance(h, keras.KerasTensor):
            continue  # several output tensors: not a single-tensor cut
        try:
            upper = keras.Model(h, _structure(model, "output"))
            lower = keras.Model(_structure(model, "input"), h)
        except ValueError:  # not a cut: the layers above need more than h
            continue
        up = {id(v) for v in upper.weights}
        down = {id(v) for v in lower.weights}
        if up & down or not wanted <= up or not everything <= up | down:
            continue
        return lower, upper, ""
    # The lowest perturbed layer may be a nested model (a backbone): cut inside it.
    return cut.find_nested_cut(model, perturbed, variables, find_cut)


def _structure(model, kind):
    """The model's single input or output in the structure it was built with.

    A dict or list of one keeps its structure, so the loss and metrics
    configured for it still apply to the upper model. `Sequential` has no
    structure of its own (and never-called `output`): its bare tensor.
    """
    flat = model.inputs if kind == "input" else model.outputs
    if isinstance(model, keras.Sequential):
        return flat[0]
    return model.input if kind == "input" else model.output


def _graph_layers(model):
    """The layers of a single-input, single-output functional model, or a reason."""
    try:
        inputs, outputs = model.inputs, model.outputs
    except AttributeError:
        return "the wrapped model is not functional (subclassed models have no graph)"
    if inputs is None or outputs is None:
        return "the wrapped model is not functional (subclassed models have no graph)"
    if len(inputs) != 1 or len(outputs) != 1:
        return "the wrapped model has several inputs or outputs"
    return list(model.layers)
