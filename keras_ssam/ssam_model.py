"""`SSAMModel`: a Keras model that trains with (Sparse) Sharpness-Aware Minimization.

The class reads next to Algorithm 1 of Mi et al. (2022): `train_step` and
`_sam_gradients` are the algorithm; the parts live in `keras_ssam.step`
(`passes`, `plan`, `guard`, `mask_state`, `support`, `saving`, `monitors`).
"""

import dataclasses
import importlib
import inspect

import keras
import tensorflow as tf

from keras_ssam.perturbation import perturbation_and_norm, sparse_perturbation
from keras_ssam.step import gate, guard, passes
from keras_ssam.step.arguments import check_arguments, check_rho
from keras_ssam.step.mask_state import MaskState, is_float
from keras_ssam.step.monitors import NonFiniteMonitor, SupportGuard
from keras_ssam.step.saving import Saving
from keras_ssam.step.support import Support

__all__ = ["SSAMModel", "check_rho"]


@keras.saving.register_keras_serializable(package="keras_ssam")
class SSAMModel(MaskState, Support, Saving, keras.Model):
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
            `keras_ssam.step.plan`. Defaults to `True`.
        interval: Integer >= 1. A SAM step when the optimizer's `iterations`
            is a multiple of `interval` (the first step is one; MosaicML
            Composer's `interval` counts `(step + 1) % interval` instead),
            one forward-backward pass otherwise. Composer advises a larger
            rho for a larger interval. Defaults to `1` (every step).
        between: What the steps between SAM steps apply: `"sgd"`, the
            gradient at `w`; `"looksam"`, LookSAM's `g + alpha * ||g|| *
            g_v / ||g_v||`, `g_v` being the part of the last SAM step's
            gradient orthogonal to that step's `g` (Liu et al. 2022, Eq. 4-5;
            global norms, as in MarlonBecker/MSAM). `"looksam"` needs
            `interval > 1` or a `trigger`. Defaults to `"sgd"`.
        alpha: Float >= 0. LookSAM's weight of `g_v`. The paper's 0.7 was
            tuned for ViTs at large batch (Liu et al. 2022); in
            docs/EVIDENCE.md's regime (a small CNN, noisy labels) 0.7
            collapsed training at every rho (-13 points below SGD on held-out
            seeds) while 0.1 kept 91 % of SAM's gain (10 seeds pooled).
            Defaults to `0.1`.
        trigger: A `keras_ssam.GradientNormTrigger` choosing SAM steps from
            the gradient norm (AE-SAM), or `None`. Not with `interval > 1`.
            Defaults to `None`.
        ascent: `"gradient"` (SAM's ascent from a first pass at `w`) or
            `"momentum"` (Momentum-SAM, Becker et al. 2024): `e = -rho * m *
            v / ||v||` from a buffer `v <- momentum * v + g + wd * w` of the
            past steps' gradients, so each step is one forward-backward pass
            at `w + e` (see "Momentum ascent" below). Defaults to
            `"gradient"`.
        momentum: Float in [0, 1). The momentum of that buffer (PyTorch's
            convention, as MSAM's code). Defaults to `0.9`.
        **kwargs: Forwarded to `keras.Model` (e.g. `name`).

    Which steps are SAM steps: a step is a SAM step when `rho > 0` (read at
    run time: a `RhoScheduler` at 0 costs SGD) and the interval or trigger
    says so. A step that is not costs one forward-backward pass and applies
    the gradient at `w` (or LookSAM's). This needs every first-pass
    gradient, so a structured mask with `norm_scope="masked"` then gives up
    its pruned first pass; without `interval` or `trigger` such a mask keeps
    it, and its steps have two passes even at `rho = 0`. `iterations` counts
    optimizer updates: a step skipped as non-finite does not advance it, and
    with `gradient_accumulation_steps` it counts each accumulated batch.
    The logs add `sam_steps`, the share of SAM steps; `sharpness` is the
    mean over SAM steps.

    Momentum ascent: the step's only pass runs at `w + e` on tensors (the
    variables stay at `w`, so `evaluate`, `save` and `export` see `w`;
    MSAM's code instead keeps its parameters at the perturbed point between
    steps), collects `add_loss` terms, and writes back its BatchNorm
    statistics and seed states. The logged loss is the loss at `w + e`;
    there is no `sharpness` (no loss at `w`). The buffer is built from the
    all-reduced, unscaled gradient plus `coupled_weight_decay * w` at the
    unperturbed `w` (MSAM adds its decay at the perturbed point; the
    difference is `wd * e`); the compiled optimizer applies the gradient at
    `w + e` (plus coupled decay) as for SAM. The first step (empty buffer) is
    plain SGD. `e`'s norm follows `norm_scope` over `m * v` and adds
    `epsilon` (MSAM: 1e-12). A structured mask saves nothing here (the
    single pass is whole). Not with `interval`, `between="looksam"`, a
    `trigger` or `num_batch_splits > 1`; an in-step mask update (SSAM-D) uses
    the gradient at `w + e`.
    No rho is a safe default for it: its best rho was 6.7x SAM's in
    docs/EVIDENCE.md's regime and about 3x on a second label-noise task (issue 29), where
    6x lost 17 points and 12x fell to chance. Search it (`keras-ssam tune`);
    `rho`'s default is SAM's.

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

    def __new__(cls, *args, **kwargs):
        # A KerasHub Task gets the subclass that applies its preprocessor as
        # the Task's own fit does. Its caller has imported keras_hub already;
        # the core never does (`keras_ssam.hub` does, on this path only).
        model = args[0] if args else kwargs.get("model")
        if cls is SSAMModel and _is_pipeline_model(model):
            task_cls = importlib.import_module("keras_ssam.hub").TaskSSAMModel
            return task_cls.__new__(task_cls, *args, **kwargs)
        return super().__new__(cls, *args, **kwargs)

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
        interval=1,
        between="sgd",
        alpha=0.1,
        trigger=None,
        ascent="gradient",
        momentum=0.9,
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
        arguments = check_arguments(
            rho=rho,
            norm_scope=norm_scope,
            adaptive=adaptive,
            eta=eta,
            perturbation=perturbation,
            epsilon=epsilon,
            num_batch_splits=num_batch_splits,
            non_finite=non_finite,
            coupled_weight_decay=coupled_weight_decay,
            reuse_activations=reuse_activations,
            interval=interval,
            between=between,
            alpha=alpha,
            trigger=trigger,
            ascent=ascent,
            momentum=momentum,
        )
        rho = arguments.pop("rho")
        super().__init__(**kwargs)
        self.model = model
        for name, value in arguments.items():  # every argument, under its own name
            setattr(self, name, value)
        # Ids of the trainable variables whose masks have ones (host side);
        # the traced step depends on it (`keras_ssam.step.support`).
        self._support_ids = None
        self._plan = None
        self._said = set()
        self.traces = 0
        # A variable, so schedules change rho without retracing and
        # checkpoints carry its current value.
        self._rho = self.add_weight(
            name="rho", shape=(), initializer="zeros", trainable=False, dtype="float64"
        )
        self._rho.assign(rho)
        self.sharpness_tracker = keras.metrics.Mean(name="sharpness")
        self.mask_density_tracker = keras.metrics.Mean(name="mask_density")
        self.sam_steps_tracker = keras.metrics.Mean(name="sam_steps")
        self._masks = []
        self._looksam = []
        self._momentum = []
        # State that only some features have, created after the rest: files
        # saved without it still load (it then starts from its initial value).
        self._optional_state = []
        self._mask_index = {}
        self._in_step_mask_fn = None
        if model.built:
            self.build()

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
        # The order of creation below is the saved files' layout.
        weights = [v for v in self.model.weights if is_float(v)]
        self._masks = self._weight_buffers("mask", weights, initializer="ones")
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
        self._build_optional_state(weights)
        self._build_density()

    def _build_optional_state(self, weights):
        """State that only some step kinds have, created last (see `_optional_state`)."""
        if self.between == "looksam":
            # LookSAM's g_v / ||g_v||, float32 and free of the loss scale.
            self._looksam = self._weight_buffers("looksam", weights)
            self._optional_state += self._looksam
        if self.ascent == "momentum":
            # Momentum-SAM's buffer v (float32, unscaled, PyTorch convention).
            self._momentum = self._weight_buffers("momentum", weights)
            self._optional_state += self._momentum
        if self.trigger is not None:
            # The trigger's moving mean and variance of ||g||^2.
            self.trigger_mean = self._float_state("trigger_mean")
            self.trigger_variance = self._float_state("trigger_variance")
            self._optional_state += [self.trigger_mean, self.trigger_variance]

    def _weight_buffers(self, prefix, weights, initializer="zeros"):
        """One float32 variable per weight, named `prefix_i`."""
        return [
            self.add_weight(
                name=f"{prefix}_{i}",
                shape=tuple(v.shape),
                initializer=initializer,
                trainable=False,
                dtype="float32",
            )
            for i, v in enumerate(weights)
        ]

    def _float_state(self, name):
        return self.add_weight(
            name=name, shape=(), dtype="float32", initializer="zeros", trainable=False
        )

    def count_params(self):
        """Parameters of the wrapped model; masks and SSAM state are not counted."""
        return self.model.count_params()

    def summary(self, *args, **kwargs):
        """The wrapped model's summary (masks and SSAM state are not parameters)."""
        return self.model.summary(*args, **kwargs)

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    # ------------------------------------------------------------- the step
    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        if not self.optimizer.built:
            # Without a strategy Keras defers this to the first apply; the
            # loss-scale variables are needed before it (to unscale g).
            self.optimizer.build(variables)
        self.traces += 1  # Python: counts traces, not steps
        if self.ascent == "momentum":
            return self._momentum_step(x, y, sample_weight, variables)
        plan = self._plan if self._plan is not None else self._make_plan(variables)
        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        grads, grads_w, finite, preds = None, None, self._support_current(plan, variables), []
        first = None
        splits = passes.batch_splits(x, y, sample_weight, batch, self.num_batch_splits)
        for sx, sy, sw, size in splits:
            # The first sub-batch decides whether the step is a SAM step.
            sam = None if first is None else first.sam
            part = self._sam_gradients(sx, sy, sw, variables, plan, first is None, sam)
            first = first or part
            ok = part.finite
            if self.num_batch_splits > 1:
                # Size-weighted mean over sub-batches; an empty one adds nothing.
                weight = tf.cast(size, "float32") / tf.cast(batch, "float32")
                part = part.weighted(weight, size > 0)
                ok = tf.logical_or(ok, size == 0)
            grads = _sum_grads(grads, part.grads)
            grads_w = _sum_grads(grads_w, part.grads_w)
            finite = tf.logical_and(finite, ok)
            preds.append(part.y_pred)
        if self.between == "looksam":
            grads = self._looksam_update(grads, grads_w, first.sam, finite, variables)
        if first.trigger_state is not None:
            # Not updated by a skipped (non-finite) step.
            for var, new in zip((self.trigger_mean, self.trigger_variance), first.trigger_state):
                var.assign(tf.where(finite, new, tf.convert_to_tensor(var)))
        self.sam_steps_tracker.update_state(tf.cast(first.sam, "float32"))
        grads = guard.add_coupled_decay(self.optimizer, self.coupled_weight_decay, grads, variables)
        guard.apply(self.optimizer, finite, grads, variables, self.non_finite_steps)
        self.mask_density_tracker.update_state(self._density_value)
        y_pred = (
            preds[0]
            if len(preds) == 1
            else tf.nest.map_structure(lambda *p: tf.concat(p, axis=0), *preds)
        )
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        logs = dict(logs, rho=tf.cast(self._rho, "float32"))
        return guard.for_multi_worker(logs)

    def _sam_gradients(self, x, y, sample_weight, variables, plan, first=True, sam=None):
        """Algorithm 1 on one (sub-)batch: L(w), f(x) and grad L(w + e), as a `_Part`.

        `plan` (see `keras_ssam.step.plan`) names the support, the variables
        whose masks have ones: the first pass differentiates only those
        (every variable when a step may be a one-pass step), and with a cut
        the second pass starts from the first pass's activations at the cut.
        `sam` is the step's decision when an earlier sub-batch made it.
        """
        if not plan.support:
            return self._one_pass(x, y, sample_weight)
        # Pass 2 must draw the same Dropout/augmentation randomness as pass 1
        # (the official code augments in the loader: both passes see one
        # batch), so the seed states are read before pass 1 advances them.
        seeds = [(v, tf.identity(tf.convert_to_tensor(v))) for v in passes.seed_states(self.model)]
        support = [variables[i] for i in plan.support]
        gated = self._gated(plan)
        sources = variables if gated else support

        # Line 1: g = grad L(w), updating BatchNorm statistics.
        if plan.reuse:
            loss_fn = passes.make_loss_fn(self, x, y, sample_weight)
            first_pass = passes.first_pass_at_cut(plan, x, loss_fn)
            loss, y_pred, scaled, tape, cut, lower_losses = first_pass
            grads_w = tape.gradient(scaled, sources)
        else:
            loss, y_pred, grads_w = passes.loss_and_grads(
                self, x, y, sample_weight, sources=sources
            )
        unscaled = guard.unscale(self.optimizer, grads_w)
        g_global = guard.global_gradients(unscaled) if gated and self.trigger else None
        if gated:
            unscaled = [unscaled[i] for i in plan.support]
        if g_global is not None and self.perturbation == "global":
            ascent = [g_global[i] for i in plan.support]
        else:
            ascent = self._ascent_gradients(unscaled)
        finite = self._all_finite(ascent)
        if gated and len(support) < len(variables):  # a one-pass step applies all of g
            finite = tf.logical_and(finite, guard.agree(guard.grads_finite(grads_w)))

        # Read before an in-step mask update moves them (SSAM-D's order).
        masks = self._masks_for(support)
        if first:
            # SSAM-D: the mask moves after e was formed with the current one.
            self._maybe_update_masks_in_step(ascent, support)
        trigger_state = None
        if sam is None:
            sam, trigger_state = self._sam_step(g_global) if gated else (tf.constant(True), None)

        def perturbed():
            # Line 2: the masked ascent step e (Eq. 2). Formed here, inside
            # the SAM branch: a one-pass step never pays for it. A non-finite
            # g gives a non-finite e, and the step is skipped whatever pass 2
            # returns (pass 2 writes no state), so e needs no select.
            e = sparse_perturbation(
                ascent,
                masks,
                self._rho,
                variables=support,
                norm_scope=self.norm_scope,
                adaptive=self.adaptive,
                eta=self.eta,
                epsilon=self.epsilon,
            )
            # Line 3: grad L(w + e), evaluated on tensors; w itself never moves.
            moved = {
                id(v): tf.convert_to_tensor(v) + tf.cast(ei, v.dtype) for v, ei in zip(support, e)
            }
            state = [(v, moved.get(id(v), tf.convert_to_tensor(v))) for v in variables]
            if plan.reuse:
                return passes.second_pass_from_cut(
                    plan, tape, cut, lower_losses, loss_fn, state, seeds
                )
            loss2, _, grads2 = passes.loss_and_grads(
                self, x, y, sample_weight, state=state, fixed=seeds
            )
            return loss2, grads2

        if gated:  # only pass 2 is conditional: a step that is not SAM is one pass
            loss2, grads2, ok = gate.if_sam(sam, perturbed, loss, grads_w)
        else:
            loss2, grads2 = perturbed()
            ok = guard.grads_finite(grads2)
        # w + e may leave the loss's domain: such a step is skipped too.
        finite = tf.logical_and(finite, guard.agree(ok))
        self._track(x, loss, loss2, tf.logical_and(finite, sam))
        grads_w = grads_w if gated else None
        return _Part(y_pred, grads2, finite, sam, grads_w, trigger_state)

    def _momentum_step(self, x, y, sample_weight, variables):
        """Momentum-SAM: one pass at `w + e`, `e = -rho * m * v / ||v||` (Becker et al. 2024)."""
        optimizer = self.optimizer
        buffers = [self._momentum[self._mask_index[id(v)]] for v in variables]
        old = [tf.convert_to_tensor(b) for b in buffers]
        # -rho * v / ||v|| (negation is exact: the same bits as -v).
        e, norm = perturbation_and_norm(
            old,
            self._masks_for(variables),
            -self._rho,
            variables=variables,
            norm_scope=self.norm_scope,
            adaptive=self.adaptive,
            eta=self.eta,
            epsilon=self.epsilon,
        )
        state = [(v, tf.convert_to_tensor(v) + tf.cast(ei, v.dtype)) for v, ei in zip(variables, e)]
        loss, y_pred, grads = passes.stateful_pass(self, x, y, sample_weight, state)
        finite = guard.agree(guard.grads_finite(grads))
        g = guard.global_gradients(guard.unscale(optimizer, grads))
        self._maybe_update_masks_in_step(g, variables)
        wd = self.coupled_weight_decay

        def store():
            for buffer, o, gi, v in zip(buffers, old, g, variables):
                if gi is None:
                    continue
                new = self.momentum * o + tf.cast(gi, "float32")
                if wd:
                    new = new + wd * tf.cast(v, "float32")
                buffer.assign(new)

        # A skipped (non-finite) step keeps the buffer; a cond, not a
        # `tf.where` per buffer, so a finite step makes no select pass.
        tf.cond(finite, store, lambda: None, name="momentum_store")
        self._track(x, loss, loss, tf.constant(False))
        # e's own norm: no pass over the parameters just for this log.
        moved = tf.logical_and(self._rho > 0, norm > 0)
        self.sam_steps_tracker.update_state(tf.cast(moved, "float32"))
        grads = guard.add_coupled_decay(optimizer, self.coupled_weight_decay, grads, variables)
        guard.apply(optimizer, finite, grads, variables, self.non_finite_steps)
        self.mask_density_tracker.update_state(self._density_value)
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        logs = dict(logs, rho=tf.cast(self._rho, "float32"))
        return guard.for_multi_worker(logs)

    def _one_pass(self, x, y, sample_weight):
        """An all-zero mask: e = 0, so grad L(w + e) is pass 1's gradient (SGD cost)."""
        loss, y_pred, grads = passes.loss_and_grads(self, x, y, sample_weight)
        finite = guard.agree(guard.grads_finite(grads))
        self._track(x, loss, loss, tf.constant(False))
        return _Part(y_pred, grads, finite, tf.constant(False), grads, None)

    def _gated(self, plan):
        """Whether a step can be a one-pass step: pass 1 then computes every gradient.

        With `interval` or a `trigger`, always; otherwise only when pass 1
        computes every gradient anyway (then `rho == 0` is one pass).
        """
        everything = len(plan.support) == len(self.trainable_variables)
        return everything or self.interval > 1 or self.trigger is not None

    def _sam_step(self, g_global):
        """`(sam, trigger state)` from rho, the interval or the trigger."""
        norm_sq = None
        if self.trigger is not None:
            norm_sq = gate.global_norm_sq(g_global)
        return gate.sam_step(
            self._rho,
            self.optimizer.iterations,
            self.interval,
            self.trigger,
            norm_sq,
            getattr(self, "trigger_mean", None),
            getattr(self, "trigger_variance", None),
        )

    def _looksam_update(self, grads, grads_w, sam, finite, variables):
        """LookSAM: keep g_v's direction on SAM steps, add `alpha ||g|| g_v` between them.

        `g` and `g_s` are the global, unscaled gradients (coupled decay is
        added later, so it is not in `||g||`); each replica adds its share of
        the alpha term, as the optimizer sums the replicas' gradients. Each
        half runs only on its own steps: the direction on (finite) SAM steps,
        `||g||` and the alpha term between them.
        """
        optimizer = self.optimizer
        # An embedding's gradient is `IndexedSlices`: dense here (g_v is dense).
        grads, grads_w = (
            [None if a is None else tf.convert_to_tensor(a) for a in gs] for gs in (grads, grads_w)
        )
        buffers = [self._looksam[self._mask_index[id(v)]] for v in variables]
        present = [i for i, g in enumerate(grads) if g is not None]
        # All-reduces stay outside the conds (free on one device).
        g = guard.global_gradients(guard.unscale(optimizer, grads_w))
        g_sam = guard.global_gradients(guard.unscale(optimizer, grads))

        def store():
            for buffer, new in zip(buffers, gate.looksam_direction(g, g_sam)):
                if new is not None:
                    buffer.assign(new)

        # A skipped (non-finite) SAM step keeps the stored direction.
        keep = tf.logical_and(sam, finite)
        tf.cond(keep, store, lambda: None, name="looksam_store")

        def between():
            factor = self.alpha * gate.global_norm(g)
            factor = factor / tf.distribute.get_strategy().num_replicas_in_sync
            if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
                factor = factor * tf.cast(optimizer.dynamic_scale, "float32")
            return [
                grads[i] + tf.cast(factor * tf.convert_to_tensor(buffers[i]), grads[i].dtype)
                for i in present
            ]

        chosen = tf.cond(sam, lambda: [grads[i] for i in present], between, name="looksam_add")
        out = [None] * len(grads)
        for i, g in zip(present, chosen):
            out[i] = g
        return out

    def _ascent_gradients(self, grads):
        """The gradient that defines e: global (all-reduced) or per replica."""
        return grads if self.perturbation == "local" else guard.global_gradients(grads)

    def _all_finite(self, grads):
        finite = guard.grads_finite(grads)
        # Global gradients are already identical on every replica.
        return guard.agree(finite) if self.perturbation == "local" else finite

    def _track(self, x, loss, loss2, counted):
        """Updates the loss tracker, and the sharpness tracker on counted (finite SAM) steps."""
        size = tf.shape(tf.nest.flatten(x)[0])[0]
        if self.num_batch_splits > 1:  # an empty sub-batch gives an empty loss
            loss, loss2 = (tf.where(size > 0, tf.reduce_sum(v), 0.0) for v in (loss, loss2))
        self._loss_tracker.update_state(guard.unscale_for_distribution(loss), sample_weight=size)
        gap = tf.where(counted, loss2 - loss, tf.zeros_like(loss))
        self.sharpness_tracker.update_state(
            guard.unscale_for_distribution(gap), sample_weight=size * tf.cast(counted, size.dtype)
        )

    def test_step(self, data):
        # Sharpness and mask density describe training steps only.
        logs = super().test_step(data)
        return guard.for_multi_worker(
            {k: v for k, v in logs.items() if k not in self._train_only_logs}
        )

    _train_only_logs = ("sharpness", "mask_density", "rho", "sam_steps")

    # ------------------------------------------------------- tracing and fit
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
        callbacks += [NonFiniteMonitor(), SupportGuard()]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    # ------------------------------------------------------ export and config
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
                "interval": self.interval,
                "between": self.between,
                "alpha": self.alpha,
                "trigger": (
                    None
                    if self.trigger is None
                    else keras.saving.serialize_keras_object(self.trigger)
                ),
                "ascent": self.ascent,
                "momentum": self.momentum,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(
            config["model"], custom_objects=custom_objects
        )
        if config.get("trigger") is not None:
            config["trigger"] = keras.saving.deserialize_keras_object(
                config["trigger"], custom_objects=custom_objects
            )
        return cls(**config)


# A saved `keras_ssam.hub.TaskSSAMModel` loads without importing keras_ssam.hub
# first: its name resolves to SSAMModel, whose `__new__` picks the subclass
# from the deserialized Task (`keras_ssam.hub` registers the class itself).
keras.saving.get_custom_objects().setdefault("keras_ssam>TaskSSAMModel", SSAMModel)


def _is_pipeline_model(model):
    """Whether `model` is a KerasHub `PipelineModel` (a Task), without importing keras_hub."""
    return any(
        c.__name__ == "PipelineModel" and c.__module__.startswith("keras_hub")
        for c in type(model).__mro__
    )


@dataclasses.dataclass
class _Part:
    """One (sub-)batch's share of a step."""

    y_pred: object
    grads: list  # what the optimizer applies (loss-scaled, this replica's)
    finite: object
    sam: object  # whether this step is a SAM step
    grads_w: list = None  # pass 1's gradients at w, when a step may be one pass
    trigger_state: tuple = None  # the trigger's new estimates, on the deciding sub-batch

    def weighted(self, weight, nonempty):
        def scale(grads):
            if grads is None:
                return None
            return [
                None
                if g is None
                else tf.where(nonempty, g * tf.cast(weight, g.dtype), tf.zeros_like(g))
                for g in grads
            ]

        return dataclasses.replace(self, grads=scale(self.grads), grads_w=scale(self.grads_w))


def _sum_grads(total, grads):
    if total is None or grads is None:
        return grads if total is None else total
    return [passes.add_optional(a, b) for a, b in zip(total, grads)]


# `__new__` takes `*args, **kwargs`; `inspect.signature(SSAMModel)` (help(), IDEs,
# the config test) shows `__init__`'s arguments instead.
SSAMModel.__signature__ = inspect.signature(SSAMModel.__init__).replace(
    parameters=list(inspect.signature(SSAMModel.__init__).parameters.values())[1:]
)
