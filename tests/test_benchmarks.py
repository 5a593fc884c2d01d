"""Each benchmark script runs end to end on a tiny budget and prints its table.

These check that the scripts work (they are scripts, not library code); the
numbers they report are measured in docs/, not here.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
SHARED = os.path.join(ROOT, "..", "shared", "data", "cifar10-images.tar.gz")


def script(name, *args, timeout=600):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES=""),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def table_rows(stdout, first_cell):
    return [line for line in stdout.splitlines() if line.startswith(first_cell)]


@pytest.mark.slow
def test_step_time_script():
    out = script(
        "step_time.py", "--models", "small_cnn", "--sparsities", "0.5", "--steps", "2",
        "--warmup", "1", "--batch", "16", "--num-samples", "8",
    )  # fmt: skip
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:1].isalpha()}
    assert {"sgd", "sam", "ssam-f", "ssam-d", "random"} <= set(rows)
    assert float(rows["sgd"][-2]) == 1.0 and float(rows["sam"][-1]) == 1.0  # ratio columns
    assert "FisherMask update, Ns=8" in out


@pytest.mark.slow
def test_analysis_time_script():
    out = script("analysis_time.py", "--model", "small_cnn", "--examples", "32", "--repeats", "1")
    rows = table_rows(out, "| HVP")
    # Seconds can round to 0.000 for a 32-example small CNN; the ratio to a gradient cannot.
    assert len(rows) == 2 and all(float(r.split("|")[3]) > 0 for r in rows)


@pytest.mark.slow
def test_cifar10_script_writes_runs_resumes_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    if not os.path.exists(SHARED):
        pytest.skip(f"shared CIFAR-10 archive not found at {SHARED}")
    args = [
        "--data", SHARED, "--cache", str(tmp_path / "cache"), "--train-images", "128",
        "--epochs", "1", "--seeds", "1", "--curve-every", "1", "--curve-images", "64",
        "--out", str(tmp_path / "runs.json"),
    ]  # fmt: skip
    out = script("cifar10.py", *args, "--plots", str(tmp_path / "fig"))
    runs = json.loads((tmp_path / "runs.json").read_text())["runs"]
    assert [(r["optimizer"], r["sparsity"]) for r in runs] == [
        ("sgd", None), ("sam", None), ("ssam-f", 0.5), ("ssam-f", 0.9), ("ssam-d", 0.5),
        ("ssam-d", 0.9),
    ]  # fmt: skip
    for r in runs:
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert [p["epoch"] for p in r["curve"]] == [1] and "test_accuracy" in r["curve"][0]
        assert ("sharpness" in r["curve"][0]) == (r["optimizer"] != "sgd")
    assert len(table_rows(out, "| ssam")) == 4
    for name in ("accuracy_vs_sparsity", "training_curves", "sharpness"):
        assert (tmp_path / "fig" / f"cifar10_{name}.png").read_bytes()[:4] == b"\x89PNG"
    # A second invocation finds every run already done and trains nothing.
    again = script("cifar10.py", *args)
    assert "resuming: 6 runs" in again and json.loads((tmp_path / "runs.json").read_text()) == {
        "args": json.loads((tmp_path / "runs.json").read_text())["args"],
        "runs": runs,
    }
