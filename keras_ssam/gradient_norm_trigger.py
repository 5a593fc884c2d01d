"""`GradientNormTrigger`: take a SAM step only when the gradient norm is unusually large."""

import math
import numbers

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_ssam")
class GradientNormTrigger:
    """Decides which steps are SAM steps from the squared gradient norm (AE-SAM).

    AE-SAM (Jiang et al. 2023, Sec. 3) keeps exponential moving estimates of
    the mean and variance of `||g_t||^2`,

        mu_t = delta * mu_{t-1} + (1 - delta) * ||g_t||^2
        var_t = delta * var_{t-1} + (1 - delta) * (||g_t||^2 - mu_t)^2,

    and takes a SAM step iff `||g_t||^2 >= mu_t + c_t * sqrt(var_t)`, with the
    threshold moving linearly from `lambda2` to `lambda1` over training,
    `c_t = (t / T) * lambda1 + (1 - t / T) * lambda2` (`t / T` capped at 1).
    Other steps are one forward-backward pass. Pass it to
    `SSAMModel(trigger=...)`; the model keeps `mu` and `var` as variables
    (saved with it) and `t` is the optimizer's `iterations`. `g_t` is the
    all-reduced, unscaled gradient of every trainable variable at `w`
    (identical on every replica), without coupled weight decay; steps that
    are skipped as non-finite do not update the estimates.

    There are no defaults: the paper's values could not be read where this
    was written (only its abstract was available), and the share of SAM
    steps they give depends on the model and data. Choose them for the share
    you want and read it back from the logged `sam_steps`.

    Args:
        delta: Float in (0, 1). The moving estimates' decay.
        lambda1: Float. The threshold `c_t` at the end of training.
        lambda2: Float. The threshold `c_t` at the start of training.
        total_steps: Integer >= 1. `T`, the number of training steps.

    Example:

    ```python
    steps = epochs * steps_per_epoch
    model = keras_ssam.SSAMModel(
        base, rho=0.3, trigger=keras_ssam.GradientNormTrigger(0.9, 0.0, 1.0, steps)
    )
    model.fit(x, y, epochs=epochs)  # logs `sam_steps`, the share of SAM steps
    ```

    Reference:
        - [Jiang et al., 2023](https://arxiv.org/abs/2304.14647)
    """

    def __init__(self, delta, lambda1, lambda2, total_steps):
        if (
            isinstance(total_steps, bool)
            or not isinstance(total_steps, numbers.Integral)
            or total_steps < 1
        ):
            raise ValueError(
                "`total_steps` (the T of the threshold schedule) must be an integer >= 1; "
                f"received total_steps={total_steps!r}."
            )
        if isinstance(delta, bool) or not isinstance(delta, numbers.Real):
            raise TypeError(f"`delta` must be a float; received delta={delta!r}.")
        if not 0.0 < delta < 1.0:
            raise ValueError(f"`delta` must be in (0, 1); received delta={delta!r}.")
        for name, value in (("lambda1", lambda1), ("lambda2", lambda2)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"`{name}` must be a float; received {name}={value!r}.")
            if not math.isfinite(value):
                raise ValueError(f"`{name}` must be finite; received {name}={value!r}.")
        self.total_steps = int(total_steps)
        self.delta = float(delta)
        self.lambda1 = float(lambda1)
        self.lambda2 = float(lambda2)

    def decide(self, norm_sq, mean, variance, step):
        """One step of the policy, on tensors.

        Args:
            norm_sq: Scalar tensor, `||g_t||^2`.
            mean, variance: Scalar tensors, `mu_{t-1}` and `var_{t-1}`.
            step: Scalar tensor, `t` (0 at the first step).

        Returns:
            `(sam, mu_t, var_t)`: whether this is a SAM step, and the new estimates.
        """
        norm_sq = tf.cast(norm_sq, "float32")
        delta = tf.constant(self.delta, "float32")
        mean = delta * mean + (1.0 - delta) * norm_sq
        variance = delta * variance + (1.0 - delta) * tf.square(norm_sq - mean)
        fraction = tf.minimum(tf.cast(step, "float32") / float(self.total_steps), 1.0)
        threshold = fraction * self.lambda1 + (1.0 - fraction) * self.lambda2
        sam = norm_sq >= mean + threshold * tf.sqrt(variance)
        return sam, mean, variance

    def get_config(self):
        return {
            "delta": self.delta,
            "lambda1": self.lambda1,
            "lambda2": self.lambda2,
            "total_steps": self.total_steps,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"GradientNormTrigger({args})"
