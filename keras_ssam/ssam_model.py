"""`SSAMModel`: a Keras model that trains with (Sparse) Sharpness-Aware Minimization."""

import contextlib
import logging
import math
import numbers
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_ssam import two_pass
from keras_ssam.perturbation import NORM_SCOPES, sparse_perturbation

PERTURBATIONS = ("global", "local")
_STALE_SUPPORT = (
    "SSAMModel: the masks have ones outside the variables the training step was "
    "traced for (masks changed by a direct `assign` or `tf.train.Checkpoint.read`?). "
    "Call `model.refresh_support()` after changing masks that way."
)
NON_FINITE = ("skip", "stop")


def check_rho(rho):
    """Returns `rho` as a float after checking it is a finite number >= 0."""
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real):
        raise TypeError(f"`rho` must be a float; received rho={rho!r}.")
    if not math.isfinite(rho) or rho < 0:
        raise ValueError(f"`rho` must be a finite number >= 0; received rho={rho!r}.")
    return float(rho)


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}; received {name}={value!r}.")


@keras.saving.register_keras_serializable(package="keras_ssam")
class SSAMModel(keras.Model):
    """Wraps a Keras model so that `fit()` trains it with Sparse SAM.

    Each training step follows Algorithm 1 of Mi et al. (2022): a first
    forward/backward pass gives `g = grad L(w)`; the masked ascent step
    `e = rho * g / (||g|| + epsilon) * m` (Eq. 2) is formed with the binary
    masks `m`; a second pass at `w + e` gives `grad L(w + e)`, which the
    compiled optimizer applies to `w`. The second pass runs on the tensors
    `w + e` inside a `keras.StatelessScope`, so the variables are never
    moved: weights the optimizer updates are exactly `w`, and BatchNorm
    moving statistics are updated only by the unperturbed first pass.

    Masks start dense (all ones, which is SAM). Mask callbacks such as
    `keras_ssam.FisherMask` and `keras_ssam.DynamicMask` replace them.
    `loss` and the compiled metrics are those of the unperturbed pass; the
    logs add `sharpness` (`L(w + e) - L(w)`) and `mask_density`.

    Args:
        model: A `keras.Model` to train (functional, `Sequential`, subclassed
            or from `keras.applications`). Alternatively pass `inputs=` and
            `outputs=` and a functional model is built from them.
        rho: Float. Radius of the perturbation neighbourhood. Defaults to
            `0.05`.
        norm_scope: `"all"` normalizes `e` by the full gradient norm (as the
            official SSAM code does, so `||e|| <= rho`); `"masked"` by the
            norm of `m * g` (so `||e|| = rho`). Defaults to `"all"`.
        adaptive: Boolean. Use ASAM's scale-invariant perturbation
            `e = rho * T^2 g / ||T g||`, `T = |w| + eta`. Defaults to `False`.
        eta: Float. ASAM's offset in `T`. Defaults to `0.01`.
        perturbation: `"global"` perturbs every replica with the all-reduced
            gradient (one extra all-reduce per step); `"local"` perturbs each
            replica with its own gradient (Foret et al.'s m-sharpness).
            Identical on one device. Defaults to `"global"`.
        epsilon: Float. Added to the gradient norm, as in the official code.
            Defaults to `1e-7`.
        num_batch_splits: Integer. Foret et al.'s m-sharpness on one device:
            each batch is cut into this many contiguous sub-batches (sizes
            differing by at most one, so a short last batch works), each with
            its own perturbation and perturbed gradient; the update uses their
            size-weighted mean (tf-keras sums them). BatchNorm statistics are
            then updated once per sub-batch, and an in-step mask update uses
            the first sub-batch's gradient. Defaults to `1`.
        non_finite: What a step with a non-finite gradient (first pass at
            `w` or second pass at `w + e`) does without loss scaling:
            `"skip"` skips it, weights, masks and optimizer state untouched,
            and warns once per epoch; `"stop"` also stops `fit()` after that
            batch (which reads a counter every batch, a host sync). Under a
            `LossScaleOptimizer` such steps are the loss scale's business and
            are skipped silently. Defaults to `"skip"`.
        coupled_weight_decay: Float >= 0. PyTorch-style (coupled) L2 decay:
            `wd * w`, at the unperturbed `w`, is added to each trainable
            variable's final gradient `grad L(w + e)` before the optimizer,
            so it flows through momentum exactly as in `torch.optim.SGD(...,
            weight_decay=wd)`, the official code's optimizer. It is not part
            of `e`, of the logged loss or of `sharpness`. Keras'
            `weight_decay=` on the optimizer is decoupled instead. Defaults
            to `0.0`.
        reuse_activations: Boolean. When the mask perturbs only the layers
            above a single-tensor cut of a functional model (a structured
            mask, e.g. `keras_ssam.StructuredFisherMask`), run the second
            pass from the first pass's activations at the cut instead of
            from the inputs; the result is the same (the layers below are
            not perturbed). With `norm_scope="masked"` the first pass also
            computes gradients of the perturbed variables only. See
            `keras_ssam.two_pass`. Defaults to `True`.
        **kwargs: Forwarded to `keras.Model` (e.g. `name`).

    Example:

    ```python
    base = keras.applications.ResNet50(weights=None, classes=10,
                                       input_shape=(32, 32, 3))
    model = keras_ssam.SSAMModel(base, rho=0.1)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=10,
              callbacks=[keras_ssam.FisherMask(x, y, sparsity=0.5)])
    model.export("serving/1")  # the inner model only, for TF Serving
    ```

    Reference:
        - [Mi et al., 2022](https://arxiv.org/abs/2210.05177)
        - [Foret et al., 2021](https://arxiv.org/abs/2010.01412)
        - [Kwon et al., 2021](https://arxiv.org/abs/2102.11600)
    """

    def __init__(
        self,
        model=None,
        rho=0.05,
        norm_scope="all",
        adaptive=False,
        eta=0.01,
        perturbation="global",
        epsilon=1e-7,
        num_batch_splits=1,
        non_finite="skip",
        coupled_weight_decay=0.0,
        reuse_activations=True,
        **kwargs,
    ):
        inputs = kwargs.pop("inputs", None)
        outputs = kwargs.pop("outputs", None)
        if model is None and inputs is not None and outputs is not None:
            model = keras.Model(inputs=inputs, outputs=outputs)
        if not isinstance(model, keras.Model):
            raise TypeError(
                "`model` must be a `keras.Model` (or pass `inputs=` and "
                f"`outputs=`); received model={model!r}."
            )
        rho = check_rho(rho)
        _check_choice("norm_scope", norm_scope, NORM_SCOPES)
        _check_choice("perturbation", perturbation, PERTURBATIONS)
        _check_choice("non_finite", non_finite, NON_FINITE)
        for name, value in (("adaptive", adaptive), ("reuse_activations", reuse_activations)):
            if not isinstance(value, bool):
                raise TypeError(f"`{name}` must be a bool; received {name}={value!r}.")
        for name, value in (
            ("eta", eta),
            ("epsilon", epsilon),
            ("coupled_weight_decay", coupled_weight_decay),
        ):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"`{name}` must be a float; received {name}={value!r}.")
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"`{name}` must be a finite number >= 0; received {name}={value!r}."
                )
        if (
            isinstance(num_batch_splits, bool)
            or not isinstance(num_batch_splits, numbers.Integral)
            or num_batch_splits < 1
        ):
            raise ValueError(
                "`num_batch_splits` must be an integer >= 1; received "
                f"num_batch_splits={num_batch_splits!r}."
            )
        super().__init__(**kwargs)
        self.model = model
        self.num_batch_splits = int(num_batch_splits)
        self.non_finite = non_finite
        self.norm_scope = norm_scope
        self.adaptive = adaptive
        self.eta = float(eta)
        self.perturbation = perturbation
        self.epsilon = float(epsilon)
        self.coupled_weight_decay = float(coupled_weight_decay)
        self.reuse_activations = reuse_activations
        # Ids of the trainable variables whose masks have ones (host side);
        # the traced step depends on it (two_pass).
        self._support_ids = None
        self._plan = None
        self._said = set()
        self.traces = 0
        # A variable, so schedules change rho without retracing and
        # checkpoints carry its current value.
        self._rho = self.add_weight(
            name="rho",
            shape=(),
            initializer="zeros",
            trainable=False,
            dtype="float64",
        )
        self._rho.assign(rho)
        self.sharpness_tracker = keras.metrics.Mean(name="sharpness")
        self.mask_density_tracker = keras.metrics.Mean(name="mask_density")
        self._masks = []
        self._mask_index = {}
        self._in_step_mask_fn = None
        if model.built:
            self.build()

    # ------------------------------------------------------------------ state
    @property
    def rho(self):
        return float(keras.ops.convert_to_numpy(self._rho))

    @rho.setter
    def rho(self, value):
        self._rho.assign(check_rho(value))

    def build(self, input_shape=None):
        if not self.model.built:
            if input_shape is None:
                raise ValueError(
                    "The wrapped model is not built; build it (or call it on "
                    "data) before wrapping, or pass an input shape to build()."
                )
            self.model.build(input_shape)
        if not self.model.trainable_variables:
            raise ValueError(
                f"`model` has no trainable variables; received model={self.model.name!r}."
            )
        # One binary mask per floating-point weight, not only the trainable
        # ones: a layer frozen now may be unfrozen for fine-tuning later, and
        # its mask must exist then. Only the masks of currently trainable
        # variables are used (`masks`); the others cost memory, nothing else.
        weights = [v for v in self.model.weights if _is_float(v)]
        self._masks = [
            self.add_weight(
                name=f"mask_{i}",
                shape=tuple(v.shape),
                initializer="ones",
                trainable=False,
                dtype="float32",
            )
            for i, v in enumerate(weights)
        ]
        self._mask_index = {id(v): i for i, v in enumerate(weights)}
        # Set by a callback to ask the next step for an in-step mask update.
        self._mask_update_pending = self._state_variable("mask_update_pending")
        # 1 once a mask callback has set the masks: a resumed run keeps them.
        self.masks_initialized = self._state_variable("masks_initialized")
        # Steps skipped because a gradient was not finite.
        self.non_finite_steps = self._state_variable("non_finite_steps")
        # Which masks were in use (trainable) when the masks were last set.
        self._mask_active = self.add_weight(
            name="mask_active",
            shape=(len(weights),),
            dtype="int32",
            initializer="zeros",
            trainable=False,
        )

    def _state_variable(self, name):
        return self.add_weight(
            name=name, shape=(), dtype="int32", initializer="zeros", trainable=False
        )

    def _active_indices(self):
        """Indices of the masks of the currently trainable variables, in mask order."""
        unknown = [v.path for v in self.model.trainable_variables if id(v) not in self._mask_index]
        if unknown:
            raise ValueError(
                "SSAMModel has no mask for the trainable variable(s) "
                f"{unknown}: they were created after the model was wrapped. Wrap "
                "the model again (SSAMModel(model)) after adding variables."
            )
        return sorted(self._mask_index[id(v)] for v in self.model.trainable_variables)

    def _active_flags(self):
        flags = np.zeros(len(self._masks), "int32")
        flags[self._active_indices()] = 1
        return flags

    @property
    def masks(self):
        """The masks of the currently trainable variables of `model`.

        Freezing a layer removes its variables' masks from this list (and
        from `mask_density()`); unfreezing brings them back.
        """
        return [self._masks[i] for i in self._active_indices()]

    @property
    def masked_variables(self):
        """The currently trainable variables, in the order of `masks`."""
        by_index = {
            i: v for v in self.model.weights if (i := self._mask_index.get(id(v))) is not None
        }
        return [by_index[i] for i in self._active_indices()]

    def masks_valid(self):
        """Whether a mask callback set the masks for the current trainable set.

        False before any mask was set, and after `trainable` changed since:
        a mask callback then computes a new mask at the next `fit()`.
        """
        if int(keras.ops.convert_to_numpy(self.masks_initialized)) == 0:
            return False
        recorded = keras.ops.convert_to_numpy(self._mask_active)
        return bool(np.array_equal(recorded, self._active_flags()))

    def set_masks(self, masks):
        """Assigns new binary masks after checking all of them.

        Args:
            masks: List of arrays, one per entry of `masks` (the currently
                trainable variables), with the same shapes and only the
                values 0 and 1.
        """
        masks = list(masks)
        targets = self.masks
        if len(masks) != len(targets):
            raise ValueError(f"`masks` must hold {len(targets)} arrays; received {len(masks)}.")
        values = []
        for i, (new, var) in enumerate(zip(masks, targets)):
            new = np.asarray(keras.ops.convert_to_numpy(new), dtype="float32")
            if new.shape != tuple(var.shape):
                raise ValueError(
                    f"`masks[{i}]` must have shape {tuple(var.shape)}; received shape {new.shape}."
                )
            if not np.all((new == 0) | (new == 1)):
                raise ValueError(f"`masks[{i}]` must contain only 0 and 1.")
            values.append(new)
        for var, new in zip(targets, values):
            var.assign(new)
        self._mask_active.assign(self._active_flags())
        self._refresh_support(values)

    def set_in_step_mask_update(self, fn):
        """Registers `fn(grads, variables, masks) -> new masks` (or `None`).

        When `request_mask_update()` has been called, the next training step
        calls `fn` with its own first-pass gradient (no extra pass) after
        forming `e` with the current masks, so the new masks apply from the
        following step (the official SSAM-D order); `SSAM-D` uses this. The
        gradient is the global-batch gradient on every replica, whatever
        `perturbation` is, so replicas keep identical masks. All lists are in
        the order of `masks`.
        """
        self._in_step_mask_fn = fn
        if getattr(self, "train_function", None) is not None:
            self.make_train_function(force=True)

    def request_mask_update(self):
        """Makes the next step run the registered in-step mask update."""
        self._mask_update_pending.assign(1)

    def mask_density(self):
        """Fraction of the trainable entries that are perturbed."""
        return float(keras.ops.convert_to_numpy(self._density()))

    def _density(self):
        masks = self.masks
        total = sum(int(np.prod(m.shape)) for m in masks)
        ones = tf.add_n([tf.math.count_nonzero(tf.convert_to_tensor(m)) for m in masks])
        return tf.cast(tf.cast(ones, "float64") / total, "float32")

    def _masks_for(self, variables):
        return [tf.convert_to_tensor(self._masks[self._mask_index[id(v)]]) for v in variables]

    # -------------------------------------------------------------- support
    def refresh_support(self):
        """Re-reads the masks so that the next step perturbs exactly their ones.

        The compiled step computes first-pass gradients only for the
        variables whose masks have ones (the support, see `two_pass`), read
        on the host when the step is traced. `set_masks()`, the mask
        callbacks, `fit()` (at each epoch), `load_weights()`,
        `set_weights()` and `keras.saving.load_model()` keep it current.
        Call this after changing masks any other way (a raw
        `tf.train.Checkpoint.read`, `model.masks[i].assign(...)`) before
        training on. A step that finds ones outside its support raises an
        error naming this method rather than leave them out of `e`.
        """
        self._refresh_support()

    def _refresh_support(self, values=None):
        """Re-derives the support from the masks; retraces the step if it changed."""
        if values is None:
            values = [keras.ops.convert_to_numpy(m) for m in self.masks]
        variables = self.masked_variables
        support = frozenset(id(variables[i]) for i in two_pass.support_of(values))
        if support == self._support_ids:
            return
        self._support_ids = support
        if getattr(self, "train_function", None) is not None:
            self.make_train_function(force=True)

    def _make_plan(self, variables):
        """The `two_pass.Plan` for the current masks and trainable set."""
        everything = tuple(range(len(variables)))
        if self._support_ids is None:
            self._refresh_support()
        if self._in_step_mask_fn is None and not (self._support_ids & {id(v) for v in variables}):
            return two_pass.Plan((), reason="the mask is empty: one pass, e = 0")
        if self.norm_scope == "all":
            return two_pass.Plan(everything, reason="norm_scope='all' needs every gradient")
        if self._in_step_mask_fn is not None:
            return two_pass.Plan(everything, reason="an in-step mask update needs every gradient")
        support = tuple(i for i, v in enumerate(variables) if id(v) in self._support_ids)
        if self.run_eagerly and len(support) < len(variables):
            self._say(
                "run_eagerly=True: eager execution prunes nothing, so a structured mask "
                "saves no time; the step computes every gradient."
            )
            return two_pass.Plan(everything, reason="run_eagerly")
        plan = two_pass.plan_step(self.model, variables, support, self.reuse_activations)
        if not plan.reuse and 0 < len(support) < len(variables):
            self._say(f"SSAMModel: second pass recomputed from the inputs ({plan.reason}).")
        return plan

    def step_plan(self):
        """How a training step is computed for the current masks.

        Returns:
            A dict: `"support"`, the paths of the trainable variables whose
            first-pass gradient the step computes (with
            `norm_scope="masked"`, those whose masks have ones; an empty
            list is a one-pass step); `"reuse"`, whether the second pass
            starts from the first pass's activations at a cut; `"cut"`, the
            name of the layer whose output is that cut (or `None`);
            `"reason"`, why the step is not cheaper (empty when it reuses).
        """
        variables = self.trainable_variables
        plan = self._make_plan(variables)
        return {
            "support": [variables[i].path for i in plan.support],
            "reuse": plan.reuse,
            "cut": plan.lower.layers[-1].name if plan.reuse else None,
            "reason": plan.reason,
        }

    def _support_current(self, plan, variables):
        """In-graph: whether the masks outside the traced support are all zero.

        Masks changed without `refresh_support()` could hold ones where the
        traced step computes no gradient; the step must not silently leave
        them out of `e`. Only the masks outside the support are read.
        """
        inside = set(plan.support)
        outside = [v for i, v in enumerate(variables) if i not in inside]
        if not outside:
            return tf.constant(True)
        current = tf.logical_not(
            tf.reduce_any([tf.reduce_any(tf.not_equal(m, 0.0)) for m in self._masks_for(outside)])
        )
        # XLA compiles Assert away; the step is then skipped instead (and
        # counted with the skipped non-finite steps): never a silent wrong step.
        tf.debugging.Assert(current, [_STALE_SUPPORT])
        return current

    def _say(self, message):
        # One line per distinct reason, not one per retrace.
        if message not in self._said:
            self._said.add(message)
            logging.getLogger("keras_ssam").warning(message)

    # ------------------------------------------------------------- counting
    def count_params(self):
        """Parameters of the wrapped model; masks and SSAM state are not counted."""
        return self.model.count_params()

    def summary(self, *args, **kwargs):
        """The wrapped model's summary (masks and SSAM state are not parameters)."""
        return self.model.summary(*args, **kwargs)

    # ------------------------------------------------------------- the step
    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        if not self.optimizer.built:
            # Without a strategy Keras defers this to the first apply; the
            # loss-scale variables are needed before it (to unscale g).
            self.optimizer.build(variables)
        self.traces += 1  # Python: counts traces, not steps
        plan = self._plan if self._plan is not None else self._make_plan(variables)
        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        grads, finite, preds = None, self._support_current(plan, variables), []
        for i, (sx, sy, sw, size) in enumerate(self._batch_splits(x, y, sample_weight, batch)):
            loss, y_pred, grads2, ok = self._sam_gradients(sx, sy, sw, variables, plan, i == 0)
            # Size-weighted mean over sub-batches: with an even split, the mean.
            weight = tf.cast(size, "float32") / tf.cast(batch, "float32")
            if self.num_batch_splits > 1:
                # An empty sub-batch (batch < num_batch_splits) adds nothing.
                grads2 = [
                    None
                    if g is None
                    else tf.where(size > 0, g * tf.cast(weight, g.dtype), tf.zeros_like(g))
                    for g in grads2
                ]
                ok = tf.logical_or(ok, size == 0)
            grads = grads2 if grads is None else [_add(a, b) for a, b in zip(grads, grads2)]
            finite = tf.logical_and(finite, ok)
            preds.append(y_pred)
        self._apply(finite, self._add_coupled_decay(grads, variables), variables)
        self.mask_density_tracker.update_state(self._density())
        y_pred = (
            preds[0]
            if len(preds) == 1
            else tf.nest.map_structure(lambda *p: tf.concat(p, axis=0), *preds)
        )
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        logs = dict(logs, rho=tf.cast(self._rho, "float32"))
        return _for_multi_worker(logs)

    def _sam_gradients(self, x, y, sample_weight, variables, plan, first=True):
        """Algorithm 1 on one (sub-)batch: returns L(w), f(x), grad L(w + e), finite.

        `plan` (see `two_pass`) names the support, the variables whose masks
        have ones: the first pass differentiates only those, and with a cut
        the second pass starts from the first pass's activations at the cut.
        """
        # Pass 2 must draw the same Dropout/augmentation randomness as pass 1
        # (the official code augments in the loader: both passes see one
        # batch), so the seed states are read before pass 1 advances them.
        if not plan.support:
            return self._one_pass(x, y, sample_weight)
        seeds = [(v, tf.identity(tf.convert_to_tensor(v))) for v in self._rng_states()]
        support = [variables[i] for i in plan.support]

        # Line 1: g = grad L(w) on the support, updating BatchNorm statistics.
        if plan.reuse:
            loss_fn = self._loss_fn(x, y, sample_weight)
            first = two_pass.first_pass_at_cut(plan, x, loss_fn)
            loss, y_pred, scaled, tape, cut, lower_losses = first
            grads = tape.gradient(scaled, support)
        else:
            loss, y_pred, grads = self._loss_and_grads(x, y, sample_weight, sources=support)
        ascent = self._ascent_gradients(self._unscale(grads))
        finite = self._all_finite(ascent)

        # Line 2: the masked ascent step e (Eq. 2); zero when g is not finite.
        e = sparse_perturbation(
            ascent,
            self._masks_for(support),
            self._rho,
            variables=support,
            norm_scope=self.norm_scope,
            adaptive=self.adaptive,
            eta=self.eta,
            epsilon=self.epsilon,
        )
        e = [tf.where(finite, ei, tf.zeros_like(ei)) for ei in e]
        if first:
            # SSAM-D: the mask moves after e was formed with the current one.
            self._maybe_update_masks_in_step(ascent, support)

        # Line 3: grad L(w + e), evaluated on tensors; w itself never moves.
        moved = {id(v): tf.convert_to_tensor(v) + tf.cast(ei, v.dtype) for v, ei in zip(support, e)}
        state = [(v, moved.get(id(v), tf.convert_to_tensor(v))) for v in variables]
        if plan.reuse:
            loss2, grads2 = two_pass.second_pass_from_cut(
                plan, tape, cut, lower_losses, loss_fn, state, seeds
            )
        else:
            loss2, _, grads2 = self._loss_and_grads(x, y, sample_weight, state=state, fixed=seeds)
        # w + e may leave the loss's domain: such a step is skipped too.
        finite = tf.logical_and(finite, self._agree(self._grads_finite(grads2)))
        return self._track(x, loss, loss2, finite, y_pred, grads2)

    def _one_pass(self, x, y, sample_weight):
        """An all-zero mask: e = 0, so grad L(w + e) is pass 1's gradient (SGD cost)."""
        loss, y_pred, grads = self._loss_and_grads(x, y, sample_weight)
        finite = self._agree(self._grads_finite(grads))
        return self._track(x, loss, loss, finite, y_pred, grads)

    def _track(self, x, loss, loss2, finite, y_pred, grads2):
        """Updates the loss and sharpness trackers; returns the step's results."""
        size = tf.shape(tf.nest.flatten(x)[0])[0]
        if self.num_batch_splits > 1:  # an empty sub-batch gives an empty loss
            loss, loss2 = (tf.where(size > 0, tf.reduce_sum(v), 0.0) for v in (loss, loss2))
        self._loss_tracker.update_state(_unscale_for_distribution(loss), sample_weight=size)
        gap = tf.where(finite, loss2 - loss, tf.zeros_like(loss))
        self.sharpness_tracker.update_state(
            _unscale_for_distribution(gap), sample_weight=size * tf.cast(finite, size.dtype)
        )
        return loss, y_pred, grads2, finite

    def _loss_fn(self, x, y, sample_weight):
        """`(y_pred, extra) -> (loss, loss-scaled loss)` for the two-pass helpers.

        `extra` are `add_loss` terms not visible in the model's `losses`
        (pass 1's terms below the cut, during pass 2); they are summed as
        Keras sums `add_loss` terms. `y_pred=None` sums `extra` alone.
        """

        def loss_fn(y_pred, extra):
            terms = [self._aggregate_additional_loss(t) for t in extra]
            if y_pred is not None:
                terms.insert(
                    0,
                    self._compute_loss(
                        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
                    ),
                )
            loss = tf.add_n([tf.cast(t, terms[0].dtype) for t in terms])
            return loss, self.optimizer.scale_loss(loss)

        return loss_fn

    def _batch_splits(self, x, y, sample_weight, batch):
        """`num_batch_splits` contiguous sub-batches, sizes differing by at most one."""
        k = self.num_batch_splits
        if k == 1:
            return [(x, y, sample_weight, batch)]
        sizes = batch // k + tf.cast(tf.range(k) < batch % k, batch.dtype)

        def split(structure):
            if structure is None:
                return [None] * k
            leaves = [tf.split(t, sizes, num=k, axis=0) for t in tf.nest.flatten(structure)]
            return [tf.nest.pack_sequence_as(structure, [p[i] for p in leaves]) for i in range(k)]

        return list(zip(split(x), split(y), split(sample_weight), tf.unstack(sizes)))

    def test_step(self, data):
        # Sharpness and mask density describe training steps only.
        logs = super().test_step(data)
        return _for_multi_worker({k: v for k, v in logs.items() if k not in self._train_only_logs})

    _train_only_logs = ("sharpness", "mask_density", "rho")

    def _maybe_update_masks_in_step(self, grads, variables):
        if self._in_step_mask_fn is None:
            return
        if self.perturbation == "local":
            # Scores must agree on every replica, or the masks drift apart.
            grads = self._global_gradients(grads)
        by_id = {id(v): g for v, g in zip(variables, grads)}
        ordered = self.masked_variables
        masks = self.masks
        mask_grads = [
            tf.zeros(v.shape, "float32")
            if by_id.get(id(v)) is None
            else tf.cast(by_id[id(v)], "float32")
            for v in ordered
        ]
        current = [tf.convert_to_tensor(m) for m in masks]
        new = tf.cond(
            self._mask_update_pending > 0,
            lambda: [
                tf.cast(n, "float32") for n in self._in_step_mask_fn(mask_grads, ordered, current)
            ],
            lambda: current,
        )
        # Assigned outside the cond: mirrored variables need it there.
        for mask, value in zip(masks, new):
            mask.assign(value)
        self._mask_update_pending.assign(0)

    def _loss_and_grads(self, x, y, sample_weight, state=None, fixed=(), sources=None):
        """Loss, predictions and (loss-scaled) gradients at `w` or at `state`.

        `fixed` maps further variables (the seed states) to values for the
        pass at `state`; they are not differentiated. `sources` restricts the
        gradients at `w` to those variables (the rest of the backward pass is
        pruned when traced).
        """
        with tf.GradientTape() as tape:
            if state is None:
                watched = self.trainable_variables if sources is None else sources
                loss, y_pred = self._forward(x, y, sample_weight)
            else:
                watched = [value for _, value in state]
                tape.watch(watched)
                # State updates of this pass (BatchNorm statistics, RNG
                # seeds) stay inside the scope and are discarded; `add_loss`
                # terms (activity regularizers) are collected there, or
                # Keras would drop them from L(w + e).
                with keras.StatelessScope(
                    state_mapping=list(state) + list(fixed), collect_losses=True
                ):
                    loss, y_pred = self._forward(x, y, sample_weight)
            scaled = self.optimizer.scale_loss(loss)
        return loss, y_pred, tape.gradient(scaled, watched)

    def _forward(self, x, y, sample_weight):
        y_pred = self(x, training=True)
        loss = self._compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
        )
        return loss, y_pred

    def _unscale(self, grads):
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            scale = tf.convert_to_tensor(self.optimizer.dynamic_scale)
            return [None if g is None else g / tf.cast(scale, g.dtype) for g in grads]
        return grads

    def _grads_finite(self, grads):
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])

    def _agree(self, finite):
        """`finite` of every replica, so that all replicas take the same branch."""
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return finite
        bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, "float32"))
        return bad < 0.5

    def _all_finite(self, grads):
        finite = self._grads_finite(grads)
        # Global gradients are already identical on every replica.
        return self._agree(finite) if self.perturbation == "local" else finite

    def _ascent_gradients(self, grads):
        """The gradient that defines e: global (all-reduced) or per replica."""
        if self.perturbation == "local":
            return grads
        return self._global_gradients(grads)

    def _global_gradients(self, grads):
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return grads
        # Each replica's loss is pre-divided by the replica count, so the sum
        # is the gradient of the global batch.
        present = [i for i, g in enumerate(grads) if g is not None]
        reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
        out = list(grads)
        for i, g in zip(present, reduced):
            out[i] = g
        return out

    def _add_coupled_decay(self, grads, variables):
        """PyTorch's `g + wd * w` at the unperturbed `w` (loss-scaled like `g`)."""
        if self.coupled_weight_decay == 0.0:
            return grads
        # The optimizer sums the replicas' gradients: each adds its share.
        factor = self.coupled_weight_decay / tf.distribute.get_strategy().num_replicas_in_sync
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            factor = factor * tf.cast(self.optimizer.dynamic_scale, "float32")
        return [
            None if g is None else g + tf.cast(factor, g.dtype) * tf.cast(v, g.dtype)
            for g, v in zip(grads, variables)
        ]

    def _apply(self, finite, grads, variables):
        """Applies the perturbed gradients, skipping steps with non-finite gradients."""
        optimizer = self.optimizer
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            # A non-finite gradient makes the loss-scale optimizer skip the
            # update and lower its scale, exactly as for a plain overflow.
            nan = tf.constant(float("nan"))
            grads = [
                None if g is None else tf.where(finite, g, tf.cast(nan, g.dtype)) for g in grads
            ]
            optimizer.apply_gradients(zip(grads, variables))
            return
        self.non_finite_steps.assign_add(1 - tf.cast(finite, "int32"))
        _apply_if(optimizer, finite, grads, variables)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3 reduces the first batch across workers here, which fails
        # under MultiWorkerMirroredStrategy (keras-team/keras#20585). Only
        # the shapes matter, so build from one local replica's batch.
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            batch = next(it)
            break
        local = tf.nest.map_structure(
            lambda v: (
                strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues)
                else v
            ),
            batch,
        )
        with strategy.scope():
            self._symbolic_build(data_batch=local)

    def make_train_function(self, force=False):
        if force or getattr(self, "train_function", None) is None:
            self._traced_active = tuple(self._active_indices())
            # The plan (support, cut) is fixed per trace; found here, eagerly.
            self._plan = self._make_plan(self.trainable_variables)
        return super().make_train_function(force=force)

    def fit(self, *args, callbacks=None, **kwargs):
        # `trainable` changed since the step was traced (fine-tuning): the
        # step must see the new trainable set and its masks.
        if self.built and getattr(self, "train_function", None) is not None:
            if getattr(self, "_traced_active", None) != tuple(self._active_indices()):
                self.make_train_function(force=True)
        if self.built:
            self._refresh_support()  # masks may have been loaded since
        callbacks = list(callbacks or [])
        callbacks += [_NonFiniteMonitor(), _SupportGuard()]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    # -------------------------------------------------------------- saving
    def save_weights(self, filepath, overwrite=True, **kwargs):
        # Write next to the target, then rename: a kill mid-save never
        # leaves a truncated file under the real name.
        with _atomic_path(filepath) as tmp:
            super().save_weights(tmp, overwrite=True, **kwargs)

    def save(self, filepath, overwrite=True, **kwargs):
        with _atomic_path(filepath) as tmp:
            super().save(tmp, overwrite=True, **kwargs)

    def _rng_states(self):
        # Keras leaves SeedGenerator states (Dropout, random augmentation)
        # out of weight files; kept here so a resumed run draws the same.
        return [v for v in self.model.variables if v.name == "seed_generator_state"]

    def save_own_variables(self, store):
        super().save_own_variables(store)
        for i, v in enumerate(self._rng_states()):
            store[f"rng_{i}"] = keras.ops.convert_to_numpy(v)

    def load_own_variables(self, store):
        own = self._trainable_variables + self._non_trainable_variables
        keys = set(store.keys())
        count = sum(1 for k in keys if not str(k).startswith("rng_"))
        if count != len(own):
            raise ValueError(
                f"Cannot load SSAMModel state: the file holds {count} SSAM variables "
                f"(rho, masks, counters), this model has {len(own)}. Was it saved from "
                "a model with a different architecture?"
            )
        for i, v in enumerate(own):
            shape = tuple(store[f"{i}"].shape)
            if shape != tuple(v.shape):
                raise ValueError(
                    f"Cannot load SSAMModel state: `{v.name}` has shape {tuple(v.shape)} "
                    f"in this model but {shape} in the file; the masks do not match the "
                    "model's trainable variables."
                )
        for i, v in enumerate(own):
            v.assign(store[f"{i}"])
        for i, v in enumerate(self._rng_states()):
            if f"rng_{i}" in keys:
                v.assign(store[f"rng_{i}"])

    def load_weights(self, filepath, *args, **kwargs):
        super().load_weights(filepath, *args, **kwargs)
        if self.built:
            self._refresh_support()

    def set_weights(self, weights):
        super().set_weights(weights)
        if self.built:
            self._refresh_support()

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        # Keras keeps the masks in a list that `tf.train.Checkpoint` does not
        # follow; without this, a checkpoint would restore
        # `masks_initialized=1` with all-ones masks (silently plain SAM).
        children = super()._trackable_children(save_type, **kwargs)
        children.update({f"mask_{i}": m for i, m in enumerate(self._masks)})
        return children

    # -------------------------------------------------------------- exports
    def export(self, filepath, format="tf_saved_model", **kwargs):
        """Exports the wrapped model only; masks and SSAM state stay out."""
        return self.model.export(filepath, format=format, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "model": keras.saving.serialize_keras_object(self.model),
                "rho": self.rho,
                "norm_scope": self.norm_scope,
                "adaptive": self.adaptive,
                "eta": self.eta,
                "perturbation": self.perturbation,
                "epsilon": self.epsilon,
                "num_batch_splits": self.num_batch_splits,
                "non_finite": self.non_finite,
                "coupled_weight_decay": self.coupled_weight_decay,
                "reuse_activations": self.reuse_activations,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(
            config["model"], custom_objects=custom_objects
        )
        return cls(**config)


class _NonFiniteMonitor(keras.callbacks.Callback):
    """Warns about skipped non-finite steps; stops fit() if asked to.

    With `non_finite="skip"` the counter is read once per epoch: a read per
    batch would stall asynchronous dispatch on accelerators. `"stop"` must
    stop after the batch, so it reads every batch.
    """

    def on_train_begin(self, logs=None):
        self._seen = _read_int(self.model.non_finite_steps)
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.model.non_finite == "stop":
            self._check(f"at batch {batch} of epoch {self._epoch}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(f"in epoch {epoch}")

    def _check(self, where):
        count = _read_int(self.model.non_finite_steps)
        if count == self._seen:
            return
        new, self._seen = count - self._seen, count
        action = "stopping training" if self.model.non_finite == "stop" else "skipped"
        warnings.warn(
            f"SSAMModel: {new} step(s) with a non-finite loss or gradient {where} (or, "
            "under XLA, masks changed without `refresh_support()`); "
            f"{action} with weights, masks and optimizer state unchanged "
            f"({count} such steps so far).",
            RuntimeWarning,
            stacklevel=2,
        )
        if self.model.non_finite == "stop":
            self.model.stop_training = True


class _SupportGuard(keras.callbacks.Callback):
    """Re-derives the support at each epoch and before the first step.

    `BackupAndRestore` restores masks in `on_train_begin` and a mask callback
    sets the first mask at the first batch, both after `fit()` traced the
    step; a callback may also load masks during `fit()`. A support left stale
    could leave perturbed entries out of `e` (the step would then stop with
    an error; this keeps it from getting there).
    """

    def on_train_begin(self, logs=None):
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        self.model._refresh_support()

    def on_train_batch_begin(self, batch, logs=None):
        if self._first:
            self._first = False
            self.model._refresh_support()


def _read_int(variable):
    """Reads a counter on the host (a device sync)."""
    return int(keras.ops.convert_to_numpy(variable))


@contextlib.contextmanager
def _atomic_path(filepath):
    filepath = str(filepath)
    if "://" in filepath:  # remote file systems: no rename semantics to rely on
        yield filepath
        return
    folder, name = os.path.split(os.path.abspath(filepath))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{name}")
    try:
        yield tmp
        # Non-chief workers of a multi-worker strategy write to a scratch
        # location that Keras removes itself: nothing to move then.
        if os.path.exists(tmp):
            os.replace(tmp, filepath)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _is_float(variable):
    return "float" in str(getattr(variable, "dtype", ""))


def _add(a, b):
    if a is None:
        return b
    return a if b is None else a + b


def _for_multi_worker(logs):
    # Under MultiWorkerMirroredStrategy Keras 3 averages logs along axis 0,
    # which fails for scalars (keras-team/keras#20585): give them that axis.
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {k: tf.reshape(v, [1]) for k, v in logs.items()}
    return logs


def _unscale_for_distribution(value):
    # Keras divides each replica's loss by the replica count; undo it for logs.
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value * replicas if replicas > 1 else value


def _apply_if(optimizer, finite, grads, variables):
    """`optimizer.apply_gradients` under `tf.cond(finite, ...)`.

    Under a strategy that needs `merge_call`, the cond must be built in the
    cross-replica context (the same constraint `LossScaleOptimizer` meets).
    """

    def apply(g):
        optimizer.apply_gradients(zip(g, variables))

    if not tf.distribute.has_strategy() or (
        tf.__internal__.distribute.strategy_supports_no_merge_call()
    ):
        tf.cond(finite, lambda: apply(grads), lambda: None)
        return

    def cross_replica(distribution, finite, grads):
        ok = distribution.experimental_local_results(finite)[0]

        def run():
            distribution.extended.call_for_each_replica(apply, args=(grads,))

        tf.cond(ok, run, lambda: None)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(finite, grads))
