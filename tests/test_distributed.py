"""MirroredStrategy on 2 logical CPUs (in a subprocess; see distributed_checks.py)."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def facts():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, "distributed_checks.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith("FACTS ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("FACTS ") :])


def test_global_perturbation_matches_one_device(facts):
    # Same global batches, no BatchNorm: the 2-replica run is the 1-device run.
    # This also rules out a double all-reduce of the final gradient.
    assert facts["global_vs_one_device"] <= 1e-5
    assert facts["masked_global_vs_one_device"] <= 1e-5


def test_replicas_stay_bitwise_identical(facts):
    for key in ("global", "local", "fisher", "dynamic", "dynamic_local", "nonfinite"):
        assert facts[f"{key}_replicas_identical"], key


def test_local_perturbation_is_per_replica(facts):
    # Matches a reference where each half-batch perturbs with its own gradient;
    # the two replicas' perturbations differ, and the result differs from global.
    assert facts["local_vs_reference"] <= 1e-5
    assert facts["local_perturbation_gap"] > 1e-2
    assert facts["local_vs_global"] > 1e-3


@pytest.mark.parametrize("name,updates", [("fisher", 3), ("dynamic", 6)])
def test_masks_identical_and_equal_to_one_device(facts, name, updates):
    # 3 epochs x 2 steps; the update count itself is pinned in test_masks.py.
    assert facts[f"{name}_updates"] == facts[f"{name}_updates_one_device"] >= updates
    assert facts[f"{name}_density"] == 0.5
    assert facts[f"{name}_vs_one_device"] <= 1e-5


def test_non_finite_on_one_replica_skips_the_step_everywhere(facts):
    assert facts["nonfinite_unchanged"] == 0.0


def test_dynamic_mask_with_local_perturbation_stays_identical_on_replicas(facts):
    # Before the scores were all-reduced, 24 entries differed after 4 steps.
    assert facts["dynamic_local_replicas_identical"]
    assert facts["dynamic_local_changed"] > 0


def test_coupled_weight_decay_on_two_replicas_matches_one_device(facts):
    assert facts["coupled_decay_vs_one_device"] <= 1e-5
    assert facts["coupled_decay_effect"] > 1e-3


def test_reused_second_pass_equals_recompute_on_two_replicas(facts):
    assert facts["reuse_plans"] == [True, False]
    assert facts["reuse_vs_recompute"] <= 1e-5
    assert facts["reuse_replicas_identical"]


@pytest.mark.parametrize("name", ["interval", "looksam", "trigger", "trigger_looksam", "momentum"])
def test_cheap_steps_on_two_replicas_match_one_device(facts, name):
    assert facts[f"{name}_vs_one_device"] <= 1e-5
    assert facts[f"{name}_replicas_identical"]
    assert facts[f"{name}_vs_sam"] > 1e-4  # not SAM on every step
