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


def parse_step_table(stdout):
    """{config: (ms per step, ratio to SGD, ratio to SAM)} from step_time.py's table."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("config"))
    rows = {}
    for line in lines[start + 1 :]:
        if not line[:1].isalpha() or line.startswith("FisherMask"):
            break
        # A 14-character name column, three numbers, then a free-text support column.
        ms, per_sgd, per_sam = line[14:].split()[:3]
        rows[line[:14].strip()] = (float(ms), float(per_sgd), float(per_sam))
    return rows


@pytest.mark.slow
def test_step_time_script():
    out = script(
        "step_time.py", "--models", "small_cnn", "--sparsities", "0.5", "--steps", "2",
        "--warmup", "1", "--batch", "16", "--num-samples", "8",
    )  # fmt: skip
    # The run is the one requested on the command line.
    assert "model=small_cnn batch=16 median of 2 interleaved steps after 1 warm-up rounds" in out
    assert "FisherMask update, Ns=8:" in out
    rows = parse_step_table(out)
    assert list(rows) == ["sgd", "sam", "ssam-f 0.5", "ssam-d 0.5", "random 0.5", "struct 0.5"]
    # The structured mask's step reuses activations; the entry-wise ones cannot.
    support = {line[:14].strip(): line for line in out.splitlines() if "support" in line}
    assert "reuse=True" in support["struct 0.5"] and "reuse=False" in support["ssam-f 0.5"]
    # The ratio columns are the ms column divided by SGD's and SAM's. Every printed number is
    # rounded, so the check is interval arithmetic on the printed precision: ms to 0.05,
    # ÷ SGD to 0.005 and ÷ SAM to 0.0005.
    sgd, sam = rows["sgd"][0], rows["sam"][0]
    for ms, per_sgd, per_sam in rows.values():
        assert ratio_bounds(ms, sgd, 0.005)[0] <= per_sgd <= ratio_bounds(ms, sgd, 0.005)[1]
        assert ratio_bounds(ms, sam, 0.0005)[0] <= per_sam <= ratio_bounds(ms, sam, 0.0005)[1]


def ratio_bounds(num, den, ratio_half_step, ms_half_step=0.05):
    """Range a printed ratio can take when num and den were printed to 0.1 ms."""
    low = (num - ms_half_step) / (den + ms_half_step) - ratio_half_step
    high = (num + ms_half_step) / (den - ms_half_step) + ratio_half_step
    return low - 1e-9, high + 1e-9


@pytest.mark.slow
def test_analysis_time_script():
    out = script("analysis_time.py", "--model", "small_cnn", "--examples", "32", "--repeats", "1")
    assert "model=small_cnn examples=32 repeats=1" in out
    rows = [r.split("|") for r in table_rows(out, "| ")][1:]  # after the header
    names = [r[1].strip() for r in rows]
    assert names == [
        "loss + accuracy (1 landscape point)", "gradient", "HVP, forward-over-reverse",
        "HVP, double backprop",
    ]  # fmt: skip
    # Seconds can round to 0.000 for a 32-example small CNN; the ratio to a gradient cannot.
    ratios = {name: float(r[3]) for name, r in zip(names, rows)}
    assert ratios["HVP, forward-over-reverse"] > 0 and ratios["HVP, double backprop"] > 0


def count_images(archive, split):
    import tarfile

    with tarfile.open(archive) as tar:
        return sum(1 for m in tar.getmembers() if m.isfile() and f"/{split}/" in f"/{m.name}")


@pytest.mark.slow
def test_cifar10_script_writes_runs_resumes_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    if not os.path.exists(SHARED):
        pytest.skip(f"shared CIFAR-10 archive not found at {SHARED}")
    requested = {
        "data": SHARED, "cache": str(tmp_path / "cache"), "train_images": 128, "epochs": 1,
        "seeds": 1, "curve_every": 1, "curve_images": 64, "out": str(tmp_path / "runs.json"),
    }  # fmt: skip
    args = [x for k, v in requested.items() for x in ("--" + k.replace("_", "-"), str(v))]
    out = script("cifar10.py", *args, "--plots", str(tmp_path / "fig"))
    saved_text = (tmp_path / "runs.json").read_text()
    saved = json.loads(saved_text)
    # The arguments recorded are those requested (and the documented defaults).
    assert saved["args"] == dict(requested, rho=0.05, quick=False, plots=str(tmp_path / "fig"))
    runs = saved["runs"]
    assert [(r["optimizer"], r["sparsity"]) for r in runs] == [
        ("sgd", None), ("sam", None), ("ssam-f", 0.5), ("ssam-f", 0.9), ("ssam-d", 0.5),
        ("ssam-d", 0.9),
    ]  # fmt: skip
    # Final accuracy is on every test image of the archive (counted as the script went
    # through them), curve accuracy on the 64-image subset: a whole count over 64.
    n_test = count_images(SHARED, "test")
    for r in runs:
        assert r["test_count"] == n_test
        curve_accuracy = r["curve"][0]["test_accuracy"]
        assert abs(curve_accuracy * 64 - round(curve_accuracy * 64)) < 1e-3
        assert [p["epoch"] for p in r["curve"]] == [1]
        assert ("sharpness" in r["curve"][0]) == (r["optimizer"] != "sgd")
    # What the script printed is what it saved: one JSON line per run, then the table.
    printed = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert printed == [{k: v for k, v in r.items() if k != "curve"} for r in runs]
    table = {line.split("|")[1].strip(): line.split("|") for line in table_rows(out, "| s")}
    for r in runs:
        name = (
            r["optimizer"]
            if r["sparsity"] is None
            else f"{r['optimizer']} {int(r['sparsity'] * 100)}%"
        )
        assert table[name][2].split("±")[0].strip() == f"{r['test_accuracy'] * 100:.2f}"
        assert table[name][5].strip() == f"{r['curve'][-1]['train_accuracy'] * 100:.1f}"
    for name in ("accuracy_vs_sparsity", "training_curves", "sharpness"):
        assert (tmp_path / "fig" / f"cifar10_{name}.png").read_bytes()[:4] == b"\x89PNG"
    # A second invocation finds every run already done, trains nothing, rewrites nothing.
    again = script("cifar10.py", *args)
    assert "resuming: 6 runs" in again and not any(
        line.startswith("{") for line in again.splitlines()
    )
    assert (tmp_path / "runs.json").read_text() == saved_text


@pytest.mark.slow
def test_xla_cond_script_times_each_step_with_and_without_xla():
    out = script("xla_cond.py", "--batch", "4", "--repeats", "1")
    rows = [line.rsplit(None, 3) for line in out.splitlines()[1:]]
    assert [(name.strip(), xla) for name, xla, _, _ in rows] == [
        (step, xla)
        for step in ("one pass", "two passes", "two, 2nd in cond")
        for xla in ("off", "on")
    ]
    assert all(float(ms) > 0 for *_, ms in rows)
