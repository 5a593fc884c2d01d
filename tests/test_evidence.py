"""benchmarks/evidence.py end to end on a handful of images.

Checks that the JSON is the run the command line asked for (every requested
image evaluated), recomputes what can be recomputed independently (paired
differences and step-time ratios come from the per-seed values, the label-noise
folder holds the requested fraction of wrong labels, the structured mask's
density), and that a second invocation resumes instead of re-running. The
numbers themselves are measured in docs/EVIDENCE.md, not here.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
SHARED = os.path.join(ROOT, "..", "shared", "data", "cifar10-images.tar.gz")
METHODS = ["sgd", "sam", "structured-50"]


def evidence(*args, check=True):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "evidence.py"), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES=""),
    )
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_evidence_quick_run_records_what_was_asked_and_resumes(tmp_path):
    pytest.importorskip("matplotlib")
    if not os.path.exists(SHARED):
        pytest.skip(f"shared CIFAR-10 archive not found at {SHARED}: evidence.py needs it")
    cache, out, fig = tmp_path / "cache", tmp_path / "ev.json", tmp_path / "fig.png"
    requested = dict(
        train_images=160, test_images=60, epochs=1, seeds=2, hessian_examples=40,
        hessian_max_iter=3, curve_every=1, curve_images=30, label_noise=0.5, rho=0.07,
    )  # fmt: skip
    flags = [x for k, v in requested.items() for x in ("--" + k.replace("_", "-"), str(v))]
    common = ["--quick", "--data", SHARED, "--cache", str(cache), "--out", str(out)]
    first = evidence(*common, *flags, "--methods", *METHODS, "--figure", str(fig))
    saved = json.loads(out.read_text())

    # The recorded arguments are the command line's.
    for key, value in requested.items():
        assert saved["args"][key] == value, key
    assert saved["args"]["methods"] == METHODS and saved["args"]["quick"] is True
    runs = {(r["method"], r["seed"]): r for r in saved["runs"]}
    assert sorted(runs) == sorted((m, s) for m in METHODS for s in range(2))

    for r in runs.values():
        # Accuracies are over the requested images, every one evaluated.
        assert r["test_count"] == 60 and r["train_count"] == 160
        assert [p["epoch"] for p in r["curve"]] == [1]
        c = r["curve"][0]["curve_test_accuracy"] * 30
        assert c == pytest.approx(round(c))
        assert r["hessian_examples"] == 40 and np.isfinite(r["hessian_top"])
        # SGD is SSAMModel(rho=0): no step of it is a SAM step.
        assert r["curve"][0]["sam_steps"] == (0.0 if r["method"] == "sgd" else 1.0)
        # 160 images at batch 128, last partial batch dropped: one step per epoch.
        assert r["steps"] == 1

    # Same seed, same subset: SGD and SAM evaluate the same number of images;
    # paired differences and means are recomputed from the per-seed values.
    summary = saved["summary"]
    for method in METHODS:
        accs = [100 * runs[(method, s)]["test_accuracy"] for s in range(2)]
        assert summary[method]["test_accuracy_mean"] == pytest.approx(np.mean(accs))
        assert summary[method]["test_accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
        if method != "sam":
            diffs = [
                100 * (runs[(method, s)]["test_correct"] - runs[("sam", s)]["test_correct"]) / 60
                for s in range(2)
            ]
            assert summary[method]["diff_to_sam"] == pytest.approx(diffs)
            assert summary[method]["diff_to_sam_mean"] == pytest.approx(np.mean(diffs))

    # Step-time ratios are the measured seconds over SGD's, per seed.
    assert [t["seed"] for t in saved["timing"]] == [0, 1]
    for t in saved["timing"]:
        assert sorted(t["seconds_per_step"]) == sorted(METHODS)
        for m, sec in t["seconds_per_step"].items():
            assert t["relative_to_sgd"][m] == pytest.approx(sec / t["seconds_per_step"]["sgd"])

    # The structured mask perturbs exactly half of the entries, all in a
    # top-closed set of variables that is not the whole model.
    for s in range(2):
        sup = runs[("structured-50", s)]["support"]
        rows = sup["variables"]
        perturbed = sum(v["perturbed"] for v in rows)
        entries = sum(v["entries"] for v in rows)
        assert perturbed == round(0.5 * entries)
        inside = [v["perturbed"] > 0 for v in rows]
        assert not inside[0] and inside[-1] and inside == sorted(inside)
        assert sup["first_perturbed"] == rows[inside.index(True)]["variable"]
        assert runs[("sam", s)]["support"]["density"] == 1.0

    # The label-noise folder: every image once, ~50 % in a class it is not from.
    noisy = cache / "cifar10-noise0.5-seed0" / "train"
    names = [(c, f) for c in os.listdir(noisy) for f in os.listdir(noisy / c)]
    assert len(names) == 50_000
    wrong = np.mean([f.split("_", 1)[0] != c for c, f in names])
    assert 0.49 < wrong < 0.51

    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| structured SSAM-F 50 % |" in first.stdout

    # Started again: nothing is re-run; another budget in the same file is refused.
    again = evidence(*common, *flags, "--methods", *METHODS)
    assert "resuming: 6 runs, 2 timings" in again.stdout
    assert json.loads(out.read_text())["runs"] == saved["runs"]
    other = evidence(*common, *flags, "--methods", *METHODS, "--epochs", "2", check=False)
    assert other.returncode != 0 and "epochs" in other.stderr


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "evidence", os.path.join(ROOT, "benchmarks", "evidence.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_method_added_later_retimes_its_seed_with_every_method():
    """Ratios compare methods timed side by side, so a new method re-times the
    whole seed (old and new methods together) and an old record is never narrowed."""
    methods_to_time = load_script().methods_to_time
    timings = [{"seed": 0, "seconds_per_step": {"sgd": 1.0, "sam": 2.0, "ssam-f-50": 2.0}}]
    assert methods_to_time([], 0, ["sam", "sgd"]) == ["sgd", "sam"]
    assert methods_to_time(timings, 0, ["sgd", "sam"]) is None
    assert methods_to_time(timings, 0, ["structured-30", "sgd"]) == [
        "sgd", "sam", "ssam-f-50", "structured-30",
    ]  # fmt: skip
    assert methods_to_time(timings, 1, ["sgd"]) == ["sgd"]


def test_sgd_row_is_pytorch_sgd_with_coupled_decay():
    """The SGD row (the shared recipe, one pass) trains as a hand-written loop that adds
    `wd * w` to the gradient before momentum (PyTorch's SGD), and the decay matters."""
    import keras
    import tensorflow as tf

    from keras_ssam import models

    module = load_script()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 10, 48)
    info = module.data.DatasetInfo("x", 10, (16, 16, 3), 48, 0, (0.0,) * 3, (1.0,) * 3)
    args = module.parse(["--model", "small_cnn", "--wd-sgd", "5e-3", "--lr", "0.05"])
    keras.utils.set_random_seed(1)
    ours, _ = module.build("sgd", info, args, steps=3)

    def base():
        keras.utils.set_random_seed(1)
        return models.build_model(
            "small_cnn", 10, (16, 16, 3), module.data.preprocessing_layers(info)
        )

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    ref, plain = base(), base()
    optimizer = keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.05, 3), momentum=0.9)
    plain.compile(optimizer=keras.optimizers.SGD(
        keras.optimizers.schedules.CosineDecay(0.05, 3), momentum=0.9), loss=loss)  # fmt: skip
    for i in range(3):
        xb, yb = x[16 * i : 16 * (i + 1)], y[16 * i : 16 * (i + 1)]
        ours.train_on_batch(xb, yb)
        plain.train_on_batch(xb, yb)
        with tf.GradientTape() as tape:
            value = loss(yb, ref(xb, training=True))
        grads = tape.gradient(value, ref.trainable_variables)
        grads = [g + 5e-3 * v for g, v in zip(grads, ref.trainable_variables)]
        optimizer.apply_gradients(zip(grads, ref.trainable_variables))
    for a, b in zip(ours.model.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    ours = ours.model
    weights = zip(ours.get_weights(), plain.get_weights())
    assert any(not np.allclose(a, c, atol=1e-6) for a, c in weights)
