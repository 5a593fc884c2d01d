"""What a traced training step runs, per step kind, against Keras' own `train_step` (issue 30).

    python benchmarks/step_ops.py            # the table of docs/benchmarks.md

Traces `train_step` of plain Keras and of `SSAMModel` for each step kind on
the small MLP (64 -> 512 -> 512 -> 10, SGD with momentum, an accuracy metric)
and counts the ops of the graph that a step runs: the top-level graph plus,
for each `tf.cond`, the branch the step takes. Two counts per step:

- **ops**: every op except constants, placeholders and identities;
- **full-size**: ops that read or write a tensor with the shape of one of
  the model's kernels (64x512, 512x512, 512x10), i.e. O(parameters) work:
  an input or output of that shape, or a variable write of such a value
  (reads of variables alone are not counted: their consumers are). The batch
  (24) is chosen so that no activation has a kernel's shape.

A step kind with SAM and one-pass steps (interval, LookSAM, the trigger) is
counted for both. Which branch a step takes is read from the cond's name:
the true branches of `sam_pass` (the second pass, `keras_ssam.step.gate`),
`looksam_store` and `looksam_add` run on SAM steps only; `apply_if_finite`
(`keras_ssam.step.guard`) and `momentum_store` run on every finite step; any
other cond counts its larger branch.
The counts are deterministic: `tests/test_step_cost.py` pins them.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_ssam  # noqa: E402

BATCH = 24
IGNORED = {"Const", "Placeholder", "Identity", "IdentityN", "NoOp", "ReadVariableOp"}
WRITES = {"AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp"}
CONDS = {"If", "StatelessIf"}
# Conds whose true branch runs on SAM steps only, and conds taken on every
# (finite) step.
SAM_ONLY = ("sam_pass", "looksam_store", "looksam_add")
ALWAYS_TAKEN = ("apply_if_finite", "momentum_store")

# name: SSAMModel keyword arguments (None: the plain Keras model).
KINDS = {
    "keras": None,
    "rho 0": {"rho": 0.0},
    "sam": {},
    "interval 5": {"interval": 5},
    "looksam 5": {"interval": 5, "between": "looksam", "alpha": 0.1},
    "momentum": {"ascent": "momentum"},
    "trigger": {"trigger": "trigger"},
    "structured": {"norm_scope": "masked", "structured": True},
}
# Kinds with both SAM and one-pass steps.
MIXED = ("interval 5", "looksam 5", "trigger")


def mlp():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    h = keras.layers.Dense(512, activation="relu")(inputs)
    h = keras.layers.Dense(512, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def build(kind, jit_compile=False):
    """The compiled, built model of step kind `kind` (`KINDS`)."""
    kwargs = KINDS[kind]
    base = mlp()
    if kwargs is None:
        model = base
    else:
        kwargs = dict(kwargs)
        structured = kwargs.pop("structured", False)
        if kwargs.get("trigger") == "trigger":
            kwargs["trigger"] = keras_ssam.GradientNormTrigger(0.9, 0.0, 1.0, 100)
        model = keras_ssam.SSAMModel(base, **{"rho": 0.1, **kwargs})
        if structured:  # the lowest layer unperturbed: a pruned first pass, a cut
            model.set_masks(
                [
                    np.zeros(m.shape) if i < 2 else np.ones(m.shape)
                    for i, m in enumerate(model.masks)
                ]
            )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    x, y = batch()
    model._symbolic_build(data_batch=(x, y))  # optimizer and metrics, without a step
    model.make_train_function()  # an SSAMModel finds its plan here, eagerly
    return model


def batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 64)).astype("float32")
    return tf.constant(x), tf.constant(rng.integers(0, 10, BATCH), "int64")


def step_graph(model):
    """The graph of `model.train_step` on one batch."""
    x, y = batch()
    spec = (tf.TensorSpec(x.shape, x.dtype), tf.TensorSpec(y.shape, y.dtype))
    return tf.function(model.train_step).get_concrete_function(spec).graph


def kernel_shapes(model):
    return {tuple(v.shape) for v in model.trainable_variables if len(v.shape) == 2}


def count(graph, shapes, sam):
    """`(ops, full-size ops)` a step runs: top level plus the taken branches."""
    ops = full = 0
    for op in graph.get_operations():
        if op.type in CONDS:
            branches = [_branch(graph, op, "then_branch"), _branch(graph, op, "else_branch")]
            counts = [count(b, shapes, sam) for b in branches]
            name = op.name.split("/")[-1]
            if name.startswith(SAM_ONLY):
                taken = counts[0] if sam else counts[1]
            elif name.startswith(ALWAYS_TAKEN):
                taken = counts[0]
            else:
                taken = max(counts, key=lambda c: c[1])
            ops, full = ops + taken[0], full + taken[1]
            continue
        if op.type in IGNORED:
            continue
        ops += 1
        tensors = op.inputs[1:2] if op.type in WRITES else [*op.inputs, *op.outputs]
        full += any(tuple(t.shape) in shapes for t in tensors if t.shape.rank is not None)
    return ops, full


def _branch(graph, op, attr):
    return graph._get_function(op.get_attr(attr).name).graph


def table(kinds=tuple(KINDS)):
    """`{(kind, "sam" or "one pass"): (ops, full-size)}`."""
    rows = {}
    for kind in kinds:
        model = build(kind)
        graph = step_graph(model)
        shapes = kernel_shapes(model)
        if kind == "keras" or kind == "rho 0" or kind in MIXED:
            rows[kind, "one pass"] = count(graph, shapes, sam=False)
        if kind not in ("keras", "rho 0"):
            rows[kind, "sam"] = count(graph, shapes, sam=True)
    return rows


def main():
    rows = table()
    base_ops, base_full = rows["keras", "one pass"]
    print(f"{'step kind':<12} {'step':<9} {'ops':>5} {'full-size':>9} {'vs keras':>9}")
    for (kind, step), (ops, full) in rows.items():
        print(f"{kind:<12} {step:<9} {ops:>5} {full:>9} {full - base_full:>+9}")
    print(f"(Keras' own train_step: {base_ops} ops, {base_full} full-size)")


if __name__ == "__main__":
    main()
