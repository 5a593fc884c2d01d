"""A cut inside a nested functional model (a KerasHub backbone, a `keras.applications` base).

`keras_ssam.step.plan.find_cut` looks for a single-tensor cut among the
wrapped model's own layers. A KerasHub `ImageClassifier` is
`[input, backbone, pooler, dropout, predictions]`: when the mask perturbs
the backbone, no outer layer is a cut below it. This module looks inside
that backbone: with the backbone fed by one tensor and feeding one, a cut
`h` of the backbone splits the model into `lower = backbone_lower(base(x))`
and `upper = head(backbone_upper(h))`, chained in Python so that no layer
gets a second graph node (`keras.Model(task.input, inner.output)` is not
connected, and calling the parts symbolically would make their layers'
`output` ambiguous).
"""

import keras


def find_nested_cut(model, perturbed, variables, find_cut):
    """A cut of the nested functional model that holds the lowest perturbed variable.

    Args:
        model: The wrapped functional `keras.Model`.
        perturbed: The variables whose masks have ones.
        variables: Every trainable variable of the step.
        find_cut: `keras_ssam.step.plan.find_cut`, applied to the nested model.

    Returns:
        `(lower, upper, reason)` as `find_cut`'s.
    """
    layers = list(model.layers)
    wanted = {id(v) for v in perturbed}
    holds = [any(id(w) in wanted for w in layer.weights) for layer in layers]
    if True not in holds:
        return None, None, "no perturbed layer"
    lowest = holds.index(True)
    inner = layers[lowest]
    reason = "no single-tensor cut below the lowest perturbed layer"
    if not _single_tensor_functional(inner) or not 0 < lowest < len(layers) - 1:
        return None, None, reason
    try:
        before, after = layers[lowest - 1].output, layers[lowest + 1].input
        middle = keras.Model(before, after)
        head = keras.Model(after, model.output)
    except (ValueError, AttributeError, TypeError):
        return None, None, reason
    inner_ids = {id(w) for w in inner.weights}
    # Only the nested model between the two tensors: an op after it (ViT's
    # class-token slice) would be lost between backbone_upper and head.
    if [op for op in middle.operations if not isinstance(op, keras.layers.InputLayer)] != [inner]:
        return None, None, f"{reason} (the nested {inner.name!r} is not alone between two layers)"
    inner_vars = [v for v in variables if id(v) in inner_ids]
    inner_lower, inner_upper, why = find_cut(
        inner, [v for v in perturbed if id(v) in inner_ids], inner_vars
    )
    if inner_lower is None:
        return None, None, f"{why} (inside {inner.name!r})"
    # Named after the cut layer: `SSAMModel.step_plan()` reports `lower.layers[-1].name`.
    inner_lower = keras.Model(
        inner_lower.input, inner_lower.output, name=inner_lower.layers[-1].name
    )
    base = None
    if before is not model.input:
        try:
            base = keras.Model(model.input, before)
        except ValueError:
            return None, None, reason
    lower = Chain([base, inner_lower], name=f"{inner.name}_lower")
    upper = Chain([inner_upper, head], name=f"{inner.name}_upper")
    up, down = {id(v) for v in upper.weights}, {id(v) for v in lower.weights}
    if up & down or not wanted <= up or not {id(v) for v in variables} <= up | down:
        return None, None, reason
    return lower, upper, ""


class Chain(keras.Model):
    """Models applied one after another (`None` entries skipped)."""

    def __init__(self, parts, **kwargs):
        super().__init__(**kwargs)
        self.parts = [p for p in parts if p is not None]

    def call(self, x, training=None):
        for part in self.parts:
            x = part(x, training=training)
        return x


def _single_tensor_functional(layer):
    if not isinstance(layer, keras.Model):
        return False
    try:
        return len(layer.inputs) == 1 and len(layer.outputs) == 1
    except (AttributeError, TypeError):
        return False
