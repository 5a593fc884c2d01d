"""Saving an `SSAMModel`: atomic writes, its own state with the seed states, load checks.

`Saving` is a mixin of `SSAMModel`. Keras saves the model's own variables
(rho, masks, counters) by position; the Dropout and augmentation seed states,
which Keras leaves out of weight files, are saved beside them so a resumed run
draws the same randomness. Loading checks the file against the model before
assigning anything, and every Keras load path re-derives the mask support.
"""

import contextlib
import os

import keras

from keras_ssam.step import passes


class Saving:
    """Atomic saves, seed states and checked loads (a mixin of `SSAMModel`)."""

    def save_weights(self, filepath, overwrite=True, **kwargs):
        # Write next to the target, then rename: a kill mid-save never
        # leaves a truncated file under the real name.
        with _atomic_path(filepath) as tmp:
            super().save_weights(tmp, overwrite=True, **kwargs)

    def save(self, filepath, overwrite=True, **kwargs):
        with _atomic_path(filepath) as tmp:
            super().save(tmp, overwrite=True, **kwargs)

    def save_own_variables(self, store):
        super().save_own_variables(store)
        for i, v in enumerate(passes.seed_states(self.model)):
            store[f"rng_{i}"] = keras.ops.convert_to_numpy(v)

    def load_own_variables(self, store):
        own = self._trainable_variables + self._non_trainable_variables
        keys = set(store.keys())
        count = sum(1 for k in keys if not str(k).startswith("rng_"))
        optional = {id(v) for v in self._optional_state}
        if optional and count == len(own) - len(optional):
            # Saved before this model's optional state (LookSAM's direction,
            # the trigger's estimates) existed, or without it: that state
            # keeps its initial value. It is created last, so positions agree.
            own = [v for v in own if id(v) not in optional]
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
        for i, v in enumerate(passes.seed_states(self.model)):
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
        children.update({f"looksam_{i}": m for i, m in enumerate(self._looksam)})
        children.update({f"momentum_{i}": m for i, m in enumerate(self._momentum)})
        for name in ("trigger_mean", "trigger_variance"):
            if hasattr(self, name):
                children[name] = getattr(self, name)
        return children


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
