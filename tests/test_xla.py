"""XLA (`compile(jit_compile=True)`) trains every step kind as the default runtime does (issue 30).

A small BatchNorm MLP trains six steps of each step kind twice, with and
without XLA, from the same weights and batches; weights, BatchNorm
statistics and the step kinds' state (LookSAM's direction, the momentum
buffer, the trigger's estimates) agree to 1e-5 (float32 sums in another
order; measured differences are below 1e-6).
"""

import keras
import numpy as np
import pytest

from keras_ssam import GradientNormTrigger, SSAMModel

TOLERANCE = 1e-5
KINDS = {
    "sam": {},
    "rho 0": {"rho": 0.0},
    "interval 2": {"interval": 2},
    "looksam 2": {"interval": 2, "between": "looksam", "alpha": 0.5},
    "trigger": {"trigger": "trigger"},
    "momentum": {"ascent": "momentum", "coupled_weight_decay": 1e-3},
    "structured": {"norm_scope": "masked", "structured": True},
}


def bn_mlp():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    h = keras.layers.Dense(8, use_bias=False, name="low")(inputs)
    h = keras.layers.BatchNormalization(momentum=0.8, name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Dense(8, activation="relu", name="mid")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(h))


def train(kind, jit_compile):
    kwargs = dict(KINDS[kind])
    structured = kwargs.pop("structured", False)
    if kwargs.get("trigger") == "trigger":
        kwargs["trigger"] = GradientNormTrigger(0.6, 0.0, 0.6, 6)
    model = SSAMModel(bn_mlp(), **{"rho": 0.3, **kwargs})
    if structured:  # stage 1 (low, bn) unperturbed: a pruned pass 1 and a cut
        model.set_masks(
            [np.zeros(m.shape) if i < 3 else np.ones(m.shape) for i, m in enumerate(model.masks)]
        )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 5)).astype("float32")
    y = rng.integers(0, 3, 48).astype("int32")
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return model, history.history


# One kind in the default run (a few seconds each: XLA compiles on CPU).
FAST = ("looksam 2",)


@pytest.mark.parametrize(
    "kind", [k if k in FAST else pytest.param(k, marks=pytest.mark.slow) for k in sorted(KINDS)]
)
def test_xla_trains_as_the_default_runtime(kind):
    plain, plain_logs = train(kind, False)
    xla, xla_logs = train(kind, True)
    assert xla.jit_compile is True and plain.jit_compile is False
    assert xla.non_finite_steps.numpy() == plain.non_finite_steps.numpy() == 0
    assert xla.optimizer.iterations.numpy() == 6
    state = [v.path for v in plain.variables]
    for path, a, b in zip(state, plain.variables, xla.variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=TOLERANCE, rtol=0, err_msg=path)
    for key in ("loss", "sam_steps", "mask_density"):
        assert xla_logs[key][0] == pytest.approx(plain_logs[key][0], abs=TOLERANCE), key
