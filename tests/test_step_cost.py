"""A step's parameter-sized work, counted in its traced graph against Keras' own step (issue 30).

A one-pass step must do what Keras' `train_step` does plus the skip of
non-finite steps and O(1) bookkeeping; a step kind's own O(parameters) work
(the trigger's norm, LookSAM's alpha term, momentum ascent's buffer) is named
here op by op. The counts are deterministic (no timing): an O(parameters) op
added to a step that does not need it fails this test.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import step_ops  # noqa: E402

# Full-size ops beyond Keras' own step, per (step kind, step), on the small
# MLP (3 kernels; every per-tensor op below counts 3 times).
SKIP = 3  # the non-finite skip: one Sum per gradient (`guard.grads_finite`)
NORM = 3  # a global norm: one L2Loss per gradient (`gate.global_norm_sq`)
EXTRA = {
    ("rho 0", "one pass"): SKIP,
    ("interval 5", "one pass"): SKIP,
    # ||g|| and g + factor * direction (Mul, AddV2).
    ("looksam 5", "one pass"): SKIP + NORM + 2 * 3,
    # ||g||^2 for the trigger's decision.
    ("trigger", "one pass"): SKIP + NORM,
    # Second pass at w + e: e (norm, factor * g * m), w + e (AddV2), the
    # forward MatMuls at w + e, weight gradients and their skip.
    ("sam", "sam"): 29,
    ("interval 5", "sam"): 29,
    ("trigger", "sam"): 29 + NORM,
    # ... plus LookSAM's direction and its store: g_v's dot, norms, the
    # projection and the division (Mul, Sum, L2Loss, Mul, Sub, L2Loss,
    # DivNoNan per tensor = 7 * 3, plus the 3 writes).
    ("looksam 5", "sam"): 29 + 24,
    # One pass at w + e: e's norm and factor * v * m (Square, Sum, Mul, Mul),
    # w + e, the skip, and the buffer update (Mul, AddV2, write).
    ("momentum", "sam"): 27,
    # The pruned first pass and the pass 2 from the cut: the lowest kernel
    # is not perturbed (its mask is read by the support check).
    ("structured", "sam"): 26,
}


@pytest.fixture(scope="module")
def table():
    return step_ops.table()


def test_keras_step_is_the_reference(table):
    # Forward MatMuls (3), weight-gradient MatMuls (3), the two backward
    # MatMuls with a kernel as input, SGD with momentum (Mul, Mul, Sub and
    # two writes per kernel): 3 + 3 + 2 + 5 * 3.
    assert table["keras", "one pass"][1] == 23


@pytest.mark.parametrize("row", sorted(EXTRA), ids=lambda r: f"{r[0]}-{r[1]}")
def test_full_size_ops_beyond_keras(table, row):
    base = table["keras", "one pass"][1]
    assert table[row][1] - base == EXTRA[row], table[row]


def test_one_pass_steps_cost_keras_plus_the_skip(table):
    """rho 0 and the steps between SAM steps: nothing O(params) but the non-finite skip."""
    base = table["keras", "one pass"][1]
    for row in (("rho 0", "one pass"), ("interval 5", "one pass")):
        assert table[row][1] == base + SKIP


@pytest.mark.slow
def test_step_cost_script_prints_its_table_and_resumes(tmp_path):
    import json
    import subprocess

    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "step_cost.py")
    out_file = str(tmp_path / "cost.json")
    args = ["--window", "6", "--configs", "keras sgd", "rho 0", "--xla", "off", "--out", out_file]

    def run(rounds):
        out = subprocess.run(
            [sys.executable, script, *args, "--rounds", str(rounds)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        with open(out_file) as f:
            return out.stdout, json.load(f)["models"]["mlp"]["rounds"]

    stdout, first = run(1)
    tables = [t for t in stdout.split("\n\n") if t.strip()]
    rows = [line for line in tables[0].splitlines() if "| xla off" in line]  # the ratio table
    assert [r.split("|")[0].strip() for r in rows] == ["keras sgd", "rho 0"]
    assert tables[1].startswith("stalls of mlp") and tables[2].startswith("outside the timed")
    _, both = run(2)  # resumes: round 0 kept as it was, round 1 added
    assert len(first) == 1 and both[0] == first[0] and len(both) == 2
    assert len(both[1]["rho 0 | xla off"]["times"]) == 5  # the window's first step is dropped


def test_stalls_are_judged_against_their_own_kind_of_step():
    import numpy as np
    import step_cost

    # Four one-pass steps (one of them a 10 s stall) and three SAM steps.
    record = {
        "times": [1.0, 1.0, 1.0, 10.0, 4.0, 4.0, 4.5],
        "sam": [False] * 4 + [True] * 3,
        "cpu": [2.0, 2.0, 2.0, 2.5, 8.0, 8.0, 8.0],
        "busy": [2.0, 2.0, 2.0, 7.0, 8.0, 8.0, 8.0],
        "steal": [0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0],
    }
    cost, stalls = step_cost._step_cost(record, stall=3.0)
    assert cost == pytest.approx(np.median([1, 1, 1, 10]) * 4 / 7 + 4.0 * 3 / 7)
    assert stalls == {
        "n": 1,  # a SAM step (4 s) is no stall of the one-pass steps (median 1 s)
        "wall": 10.0,
        "cpu": 2.5,
        "busy": 7.0,
        "steal": 3.0,
        "extra_wall": 9.0,
        "extra_cpu": 0.5,
        "working": 0,  # 2.5 s of own CPU is < 1.5x the median step's 2 s: it waited
    }


@pytest.mark.parametrize(
    "values,dtype,want",
    [
        ([1.0, 2.0], "float32", True),
        ([1.0, float("nan")], "float32", False),
        ([1.0, float("inf")], "float32", False),
        ([float("inf"), float("-inf")], "float32", False),  # the sum is NaN
        ([-3e38, -3e38], "float32", False),  # the sum overflows: counted as non-finite
        ([60000.0, 60000.0], "float16", True),  # finite entries whose sum overflows float16
        ([1.0, float("inf")], "float16", False),
        ([1.0, float("nan")], "float64", False),
    ],
)
def test_grads_finite_by_sums(values, dtype, want):
    import tensorflow as tf

    from keras_ssam.step import guard

    grads = [tf.constant([0.5], dtype), None, tf.constant(values, dtype)]
    assert bool(guard.grads_finite(grads)) is want
