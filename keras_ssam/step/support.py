"""The support of the masks: which variables the traced step differentiates, kept current.

`Support` is a mixin of `SSAMModel`. The step is traced for one support (the
variables whose masks have ones, see `keras_ssam.step.plan`); the support is
read on the host when masks change through the model's API, and the traced
step checks in-graph that no mask gained ones outside it.
"""

import logging

import keras
import tensorflow as tf

from keras_ssam.step import plan as planning

_STALE_SUPPORT = (
    "SSAMModel: the masks have ones outside the variables the training step was "
    "traced for (masks changed by a direct `assign` or `tf.train.Checkpoint.read`?). "
    "Call `model.refresh_support()` after changing masks that way."
)


class Support:
    """Support, step plan and the stale-support check (a mixin of `SSAMModel`)."""

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
        self._store_density(values)
        variables = self.masked_variables
        support = frozenset(id(variables[i]) for i in planning.support_of(values))
        if support == self._support_ids:
            return
        self._support_ids = support
        if getattr(self, "train_function", None) is not None:
            self.make_train_function(force=True)

    def _make_plan(self, variables):
        """The `planning.Plan` for the current masks and trainable set."""
        everything = tuple(range(len(variables)))
        if self._support_ids is None:
            self._refresh_support()
        if self._in_step_mask_fn is None and not (self._support_ids & {id(v) for v in variables}):
            return planning.Plan((), reason="the mask is empty: one pass, e = 0")
        if self.norm_scope == "all":
            return planning.Plan(everything, reason="norm_scope='all' needs every gradient")
        if self._in_step_mask_fn is not None:
            return planning.Plan(everything, reason="an in-step mask update needs every gradient")
        support = tuple(i for i, v in enumerate(variables) if id(v) in self._support_ids)
        if self.run_eagerly and len(support) < len(variables):
            self._say(
                "run_eagerly=True: eager execution prunes nothing, so a structured mask "
                "saves no time; the step computes every gradient."
            )
            return planning.Plan(everything, reason="run_eagerly")
        plan = planning.plan_step(self.model, variables, support, self.reuse_activations)
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
        # One read of each mask, no mask-sized temporaries: max and min.
        masks = self._masks_for(outside)
        largest = tf.reduce_max([tf.reduce_max(m) for m in masks])
        smallest = tf.reduce_min([tf.reduce_min(m) for m in masks])
        current = tf.logical_and(tf.equal(largest, 0.0), tf.equal(smallest, 0.0))
        # XLA compiles Assert away; the step is then skipped instead (and
        # counted with the skipped non-finite steps): never a silent wrong step.
        tf.debugging.Assert(current, [_STALE_SUPPORT])
        return current

    def _say(self, message):
        # One line per distinct reason, not one per retrace.
        if message not in self._said:
            self._said.add(message)
            logging.getLogger("keras_ssam").warning(message)
