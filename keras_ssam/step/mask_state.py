"""The masks of an `SSAMModel`: one binary variable per float weight, and their bookkeeping.

`MaskState` is a mixin of `SSAMModel`, whose `build()` creates the mask
variables (so they are the model's own and saved with it). It knows which
masks belong to the currently trainable variables, checks and assigns new
masks, reports the density, and runs an in-step mask update (SSAM-D) with the
step's gradient.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_ssam.step import guard


class MaskState:
    """Masks, their trainable subset, density and in-step updates (a mixin of `SSAMModel`)."""

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
        return float(keras.ops.convert_to_numpy(density(self.masks)))

    def _build_density(self):
        """The logged density, kept where the masks change rather than counted each step.

        Derived from the masks, so not saved: the variable is kept out of
        Keras' tracking (the saved layout is positional). The host sets it
        with the support (`_refresh_support`), an in-step update in-graph.
        """
        value = keras.Variable(1.0, trainable=False, dtype="float32", name="mask_density")
        object.__setattr__(self, "_density_value", value)

    def _store_density(self, values):
        """Sets the logged density from the host's copy of the masks."""
        total = sum(int(np.prod(np.shape(v))) for v in values)
        ones = sum(int(np.count_nonzero(v)) for v in values)
        self._density_value.assign(ones / total)

    def _masks_for(self, variables):
        return [tf.convert_to_tensor(self._masks[self._mask_index[id(v)]]) for v in variables]

    def _maybe_update_masks_in_step(self, grads, variables):
        if self._in_step_mask_fn is None:
            return
        if self.perturbation == "local":
            # Scores must agree on every replica, or the masks drift apart.
            grads = guard.global_gradients(grads)
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

        def update():
            new = [
                tf.cast(n, "float32") for n in self._in_step_mask_fn(mask_grads, ordered, current)
            ]
            return new, density(new)

        new, value = tf.cond(
            self._mask_update_pending > 0,
            update,
            lambda: (current, tf.convert_to_tensor(self._density_value)),
        )
        # Assigned outside the cond: mirrored variables need it there.
        for mask, value_i in zip(masks, new):
            mask.assign(value_i)
        self._density_value.assign(value)
        self._mask_update_pending.assign(0)


def density(masks):
    """Fraction of the entries of `masks` that are nonzero (float32)."""
    total = sum(int(np.prod(m.shape)) for m in masks)
    ones = tf.add_n([tf.math.count_nonzero(tf.convert_to_tensor(m)) for m in masks])
    return tf.cast(tf.cast(ones, "float64") / total, "float32")


def is_float(variable):
    """Whether `variable` holds floats (the weights that get a mask)."""
    return "float" in str(getattr(variable, "dtype", ""))
