"""The forward-backward passes of a step: at `w`, at `w + e` on tensors, and from a cut.

Every pass differentiates the model's full training loss: the compiled loss
plus every `add_loss` term (activity regularizers included) and weight
regularizer, as Keras' own `train_step` does. A pass at `w + e` runs inside a
`keras.StatelessScope`: the variables never move, and the pass's state updates
(BatchNorm statistics, seed states) are discarded.
"""

import keras
import tensorflow as tf


def forward(model, x, y, sample_weight):
    """`(loss, y_pred)` of `model` (an `SSAMModel`) in training mode."""
    y_pred = model(x, training=True)
    loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
    return loss, y_pred


def loss_and_grads(model, x, y, sample_weight, state=None, fixed=(), sources=None):
    """Loss, predictions and (loss-scaled) gradients at `w` or at `state`.

    Args:
        model: The `SSAMModel`.
        x, y, sample_weight: The (sub-)batch.
        state: `None` for the pass at `w`, or `(variable, value)` pairs giving
            every trainable variable's value (`w + e`) for a stateless pass.
        fixed: Further `(variable, value)` pairs (the seed states) for the
            pass at `state`; they are not differentiated.
        sources: At `w`, the variables to differentiate (default: every
            trainable one); the rest of the backward pass is pruned when
            traced.

    Returns:
        `(loss, y_pred, gradients)`, the gradients in the order of `sources`
        or `state`.
    """
    with tf.GradientTape() as tape:
        if state is None:
            watched = model.trainable_variables if sources is None else sources
            loss, y_pred = forward(model, x, y, sample_weight)
        else:
            watched = [value for _, value in state]
            tape.watch(watched)
            # `add_loss` terms are collected in the scope, or Keras would
            # drop them from L(w + e).
            with keras.StatelessScope(state_mapping=list(state) + list(fixed), collect_losses=True):
                loss, y_pred = forward(model, x, y, sample_weight)
        scaled = model.optimizer.scale_loss(loss)
    return loss, y_pred, tape.gradient(scaled, watched)


def stateful_pass(model, x, y, sample_weight, state):
    """Loss, predictions and (loss-scaled) gradients at `state`, keeping its state updates.

    The only pass of a momentum-ascent step runs at `w + e` on tensors (the
    variables stay at `w`), inside a `keras.StatelessScope` that collects its
    `add_loss` terms; its BatchNorm statistics and seed states are then
    written back to the variables, as the step's only pass must.

    Args:
        model: The `SSAMModel`.
        x, y, sample_weight: The batch.
        state: `(variable, value)` for every trainable variable.

    Returns:
        `(loss, y_pred, gradients)`, the gradients in the order of `state`.
    """
    watched = [value for _, value in state]
    with tf.GradientTape() as tape:
        tape.watch(watched)
        scope = keras.StatelessScope(state_mapping=list(state), collect_losses=True)
        with scope:
            loss, y_pred = forward(model, x, y, sample_weight)
        scaled = model.optimizer.scale_loss(loss)
    grads = tape.gradient(scaled, watched)
    mapped = {id(v) for v, _ in state}
    for variable in model.model.variables:
        value = None if id(variable) in mapped else scope.get_current_value(variable)
        if value is not None:
            variable.assign(value)
    return loss, y_pred, grads


def make_loss_fn(model, x, y, sample_weight):
    """`(y_pred, extra) -> (loss, loss-scaled loss)` for the passes at a cut.

    `extra` are `add_loss` terms not visible in the model's `losses` (pass
    1's terms below the cut, during pass 2); they are summed as Keras sums
    `add_loss` terms. `y_pred=None` sums `extra` alone.
    """

    def fn(y_pred, extra):
        terms = [model._aggregate_additional_loss(t) for t in extra]
        if y_pred is not None:
            loss = model._compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            terms.insert(0, loss)
        loss = tf.add_n([tf.cast(t, terms[0].dtype) for t in terms])
        return loss, model.optimizer.scale_loss(loss)

    return fn


def first_pass_at_cut(plan, x, loss_fn):
    """Pass 1 as `upper(lower(x))` on a persistent tape, kept for the chain rule.

    Args:
        plan: A `Plan` with a cut.
        x: The (sub-)batch inputs.
        loss_fn: `(y_pred, extra) -> (loss, loss-scaled loss)`, where `extra`
            is a list of further `add_loss` terms to add to the model's loss.

    Returns:
        `(loss, y_pred, scaled_loss, tape, cut_activation, lower_losses)`;
        `lower_losses` are the `add_loss` terms (activity regularizers
        included) of the layers below the cut, recorded on `tape`.
    """
    with tf.GradientTape(persistent=True) as tape:
        cut = plan.lower(x, training=True)
        lower_losses = added_losses(plan.lower)
        y_pred = plan.upper(cut, training=True)
        # The model's `losses` still hold the lower layers' terms here.
        loss, scaled = loss_fn(y_pred, ())
    return loss, y_pred, scaled, tape, cut, lower_losses


def second_pass_from_cut(plan, tape, cut, lower_losses, loss_fn, state, fixed):
    """Pass 2 above the cut only; the lower gradients through pass 1's tape.

    Below the cut nothing is perturbed, so pass 1's activation `cut` is the
    activation at `w + e` too, and `dL(w+e)/dw_lower` is the chain rule
    `dcut/dw_lower . dL(w+e)/dcut`, plus the gradient of the lower layers'
    own `add_loss` terms, which are the same at `w + e` as at `w`.

    Args:
        plan: The `Plan` whose cut made `cut`.
        tape: Pass 1's persistent tape (released here).
        cut: Pass 1's activation at the cut.
        lower_losses: Pass 1's `add_loss` terms below the cut.
        loss_fn: `(y_pred, extra) -> (loss, loss-scaled loss)`; with
            `y_pred=None` the loss is the sum of the `extra` terms alone.
        state: `(variable, value)` for every trainable variable: `w + e` on
            the support, `w` elsewhere.
        fixed: Further `(variable, value)` pairs (seed states) for the scope.

    Returns:
        `(loss at w + e, loss-scaled gradients in the order of state)`.
    """
    watched = [value for _, value in state]
    with tf.GradientTape() as tape2:
        tape2.watch(watched)
        tape2.watch(cut)
        # Layers' `add_loss` terms above the cut are collected in the scope;
        # those below the cut come from pass 1 (their tape is pass 1's).
        with keras.StatelessScope(state_mapping=list(state) + list(fixed), collect_losses=True):
            loss2, scaled = loss_fn(plan.upper(cut, training=True), lower_losses)
    *grads, upstream = tape2.gradient(scaled, watched + [cut])
    lower = {id(v) for v in plan.lower.weights}
    indices = [i for i, (v, _) in enumerate(state) if id(v) in lower]
    sources = [state[i][0] for i in indices]
    chain = tape.gradient(cut, sources, output_gradients=upstream)
    if lower_losses:
        with tape:  # resumes recording: the scaled sum must be on pass 1's tape
            _, scaled_lower = loss_fn(None, lower_losses)
        own = tape.gradient(scaled_lower, sources)
        chain = [add_optional(a, b) for a, b in zip(chain, own)]
    del tape
    for i, g in zip(indices, chain):
        # Weight regularizers of the lower layers reach grads[i] directly.
        if g is not None:
            grads[i] = g if grads[i] is None else grads[i] + g
    return loss2, grads


def added_losses(model):
    """The `add_loss` terms (activity regularizers included) of `model`'s last call.

    Keras' public `Layer.losses` lists these first, then one weight
    regularization term per trainable weight with a regularizer; there is no
    public accessor for the first part alone, so the second is counted off.
    """
    regularized = sum(1 for v in model.trainable_weights if v.regularizer is not None)
    losses = list(model.losses)
    return losses[: len(losses) - regularized]


def add_optional(a, b):
    """`a + b` where either may be `None` (no gradient)."""
    if a is None:
        return b
    return a if b is None else a + b


def batch_splits(x, y, sample_weight, batch, k):
    """`k` contiguous sub-batches `(x, y, sample_weight, size)`, sizes differing by at most one."""
    if k == 1:
        return [(x, y, sample_weight, batch)]
    sizes = batch // k + tf.cast(tf.range(k) < batch % k, batch.dtype)

    def split(structure):
        if structure is None:
            return [None] * k
        leaves = [tf.split(t, sizes, num=k, axis=0) for t in tf.nest.flatten(structure)]
        return [tf.nest.pack_sequence_as(structure, [p[i] for p in leaves]) for i in range(k)]

    return list(zip(split(x), split(y), split(sample_weight), tf.unstack(sizes)))


def seed_states(model):
    """The `SeedGenerator` states (Dropout, random augmentation) of `model`.

    Pass 2 maps them to their values before pass 1 so that both passes draw
    the same randomness; Keras leaves them out of weight files, so saving
    keeps them too.
    """
    return [v for v in model.variables if v.name == "seed_generator_state"]
