"""benchmarks/evidence.py and evidence_report.py on a handful of images, and their parts.

The end-to-end tests check that the JSON is the run the command line asked
for (every requested image evaluated, the steps of each kind counted as the
schedule says), recompute what can be recomputed independently (paired gains,
share of SAM's gain, step-kind costs, the rho a calibration chooses, the
label-noise folder) and that a second invocation resumes instead of
re-running. The numbers themselves are measured in docs/EVIDENCE.md, not here.
"""

import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
SHARED = os.path.join(ROOT, "..", "shared", "data", "cifar10-images.tar.gz")
METHODS = ["sgd", "sam", "structured-50", "interval-5", "late-25", "momentum"]
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import evidence  # noqa: E402
import evidence_report  # noqa: E402


def script(*args, check=True):
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


def needs_data():
    pytest.importorskip("matplotlib")
    if not os.path.exists(SHARED):
        pytest.skip(f"shared CIFAR-10 archive not found at {SHARED}: evidence.py needs it")


def flags(**values):
    return [x for k, v in values.items() for x in ("--" + k.replace("_", "-"), str(v))]


# 300 images at batch 128, last partial batch dropped: 2 steps per epoch, 4 in all.
TINY = dict(
    train_images=300, test_images=60, epochs=2, seeds=2, hessian_examples=40,
    hessian_max_iter=3, curve_every=1, curve_images=30, label_noise=0.5, rho=0.07,
    timing_steps=2, timing_warmup=1,
)  # fmt: skip
# Steps of each kind in 2 epochs x 2 steps, written out from each schedule.
COUNTS = {
    "sgd": {"one_pass": 4},
    "sam": {"sam": 4},
    "structured-50": {"sam": 4},
    "interval-5": {"sam": 1, "one_pass": 3},  # iterations 0 only
    "late-25": {"sam": 2, "one_pass": 2},  # the second of 2 epochs
    "momentum": {"momentum": 4},
}


@pytest.mark.slow
def test_report_run_records_what_was_asked_and_resumes(tmp_path):
    needs_data()
    cache, out, fig = tmp_path / "cache", tmp_path / "ev.json", tmp_path / "fig.png"
    common = ["--quick", "--data", SHARED, "--cache", str(cache), "--out", str(out)]
    first = script(*common, *flags(**TINY), "--methods", *METHODS, "--figure", str(fig))
    saved = json.loads(out.read_text())

    for key, value in TINY.items():
        assert saved["args"][key] == value, key
    runs = {(r["method"], r["seed"]): r for r in saved["runs"]}
    assert sorted(runs) == sorted((m, s) for m in METHODS for s in range(2))
    for (method, _), r in runs.items():
        assert r["rho"] == (0.0 if method == "sgd" else 0.07)
        assert r["test_count"] == 60 and r["train_count"] == 300
        assert [p["epoch"] for p in r["curve"]] == [1, 2]
        c = r["curve"][0]["curve_test_accuracy"] * 30
        assert c == pytest.approx(round(c))
        assert r["hessian_examples"] == 40 and np.isfinite(r["hessian_top"])
        assert r["steps"] == 4 and r["step_counts"] == COUNTS[method], method
        # The structured mask is an epoch-wise Fisher mask: the first and epoch 1's.
        assert r["mask_updates"] == (2 if method == "structured-50" else 0), method
    assert [p["rho"] for p in runs[("late-25", 0)]["curve"]] == pytest.approx([0.0, 0.07])

    # Every (method, kind) of the schedule was timed, per seed.
    assert sorted(t["seed"] for t in saved["timing"]) == [0, 1]
    for t in saved["timing"]:
        assert {m: sorted(k) for m, k in t["seconds_per_step"].items()} == {
            m: sorted(COUNTS[m]) for m in METHODS
        }
        assert sorted(t["seconds_per_mask_update"]) == ["structured-50"]

    # Paired gains over SGD, the share of SAM's gain and the costs, recomputed.
    summary = saved["summary"]
    sgd = {s: runs[("sgd", s)]["test_correct"] for s in range(2)}
    sam_gain = [100 * (runs[("sam", s)]["test_correct"] - sgd[s]) / 60 for s in range(2)]
    for method in METHODS:
        row = summary[f"{method}@{runs[(method, 0)]['rho']:g}"]
        gains = [100 * (runs[(method, s)]["test_correct"] - sgd[s]) / 60 for s in range(2)]
        assert row["gain_over_sgd"] == pytest.approx(gains)
        if method != "sgd" and np.mean(sam_gain):
            assert row["share_of_sam_gain"] == pytest.approx(np.mean(gains) / np.mean(sam_gain))
        costs = []
        for s in range(2):
            timing = next(t for t in saved["timing"] if t["seed"] == s)
            kinds = timing["seconds_per_step"]
            spent = sum(n * kinds[method][k] for k, n in COUNTS[method].items())
            if method == "structured-50":
                spent += 2 * timing["seconds_per_mask_update"][method]
            costs.append(spent / (4 * kinds["sgd"]["one_pass"]))
        assert row["cost_ratio"] == pytest.approx(costs)
        assert row["sam_steps_percent_mean"] == pytest.approx(
            100 * COUNTS[method].get("sam", 0) / 4
        )

    # The structured mask perturbs exactly half of the entries, in a top-closed set.
    for s in range(2):
        sup = runs[("structured-50", s)]["support"]
        rows = sup["variables"]
        assert sum(v["perturbed"] for v in rows) == round(0.5 * sum(v["entries"] for v in rows))
        inside = [v["perturbed"] > 0 for v in rows]
        assert not inside[0] and inside[-1] and inside == sorted(inside)
        assert runs[("sam", s)]["support"]["density"] == 1.0 and runs[("sgd", s)]["support"] is None

    # The label-noise folder: every image once, ~50 % in a class it is not from.
    noisy = cache / "cifar10-noise0.5-seed0" / "train"
    names = [(c, f) for c in os.listdir(noisy) for f in os.listdir(noisy / c)]
    assert len(names) == 50_000
    assert 0.49 < np.mean([f.split("_", 1)[0] != c for c, f in names]) < 0.51

    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| SAM every 5th step | 0.07 |" in first.stdout

    # Started again: nothing is re-run; another budget in the same file is refused.
    again = script(*common, *flags(**TINY), "--methods", *METHODS)
    assert f"resuming: {2 * len(METHODS)} runs, 2 timings" in again.stdout
    assert json.loads(out.read_text())["runs"] == saved["runs"]
    other = script(*common, *flags(**dict(TINY, epochs=3)), "--methods", *METHODS, check=False)
    assert other.returncode != 0 and "epochs" in other.stderr


@pytest.mark.slow
def test_calibration_extends_an_edge_and_the_report_runs_the_chosen_rho(tmp_path):
    needs_data()
    cache, calib, held = tmp_path / "cache", tmp_path / "calib.json", tmp_path / "held.json"
    budget = flags(**dict(TINY, epochs=1, seeds=1, train_images=256))
    common = ["--quick", "--data", SHARED, "--cache", str(cache), *budget]
    script(*common, "--out", str(calib), "--calibrate", "--rhos", "0.05", "0.4",
           "--methods", "sgd", "sam")  # fmt: skip
    saved = json.loads(calib.read_text())
    assert all("hessian_top" not in r for r in saved["runs"]) and saved["timing"] == []
    acc = {r["rho"]: r["test_accuracy"] for r in saved["runs"] if r["method"] == "sam"}
    # The grid grows by factors of 2 at whichever edge holds the best rho.
    grid = [0.05, 0.4]
    for _ in range(evidence.MAX_EXTENSIONS):
        best = max(grid, key=lambda rho: acc[rho])
        if best not in (grid[0], grid[-1]):
            break
        grid = [grid[0] / 2, *grid] if best == grid[0] else [*grid, grid[-1] * 2]
    assert sorted(acc) == pytest.approx(grid)
    chosen = max(grid, key=lambda rho: acc[rho])

    script(*common, "--out", str(held), "--rho-from", str(calib), "--only-seeds", "5",
           "--no-hessian", "--methods", "sgd", "sam")  # fmt: skip
    report = json.loads(held.read_text())
    assert report["chosen_rho"] == {"sgd": 0.0, "sam": chosen}
    assert sorted((r["method"], r["seed"], r["rho"]) for r in report["runs"]) == [
        ("sam", 5, chosen), ("sgd", 5, 0.0),
    ]  # fmt: skip


# ------------------------------------------------------------------ parts
def record(method, seed, rho, acc):
    return {"method": method, "seed": seed, "rho": rho, "test_accuracy": acc}


def test_extended_grid_waits_for_every_seed_and_grows_at_the_best_edge():
    args = evidence.parse(["--rhos", "0.1", "0.2", "0.4"])
    runs = [record("sam", s, rho, 0.3) for s in (0, 1) for rho in (0.1, 0.2)]
    assert evidence.extended_grid(runs, "sam", [0, 1], args) == [0.1, 0.2, 0.4]  # 0.4 not done
    runs += [record("sam", 0, 0.4, 0.5), record("sam", 1, 0.4, 0.5)]  # best at the top
    assert evidence.extended_grid(runs, "sam", [0, 1], args) == [0.1, 0.2, 0.4, 0.8]
    runs += [record("sam", s, 0.8, 0.1) for s in (0, 1)]  # peak inside: no more
    assert evidence.extended_grid(runs, "sam", [0, 1], args) == [0.1, 0.2, 0.4, 0.8]
    assert evidence.chosen_rho(runs, "sam", [0, 1], args) == 0.4
    low = [record("sam", s, rho, 0.5 - rho) for s in (0, 1) for rho in (0.1, 0.2, 0.4)]
    assert evidence.extended_grid(low, "sam", [0, 1], args) == [0.05, 0.1, 0.2, 0.4]
    # A cheap row combined with a mask uses its mechanism's grid.
    plain = evidence.parse([])
    assert evidence.extended_grid([], "ssam-f-50+momentum", [0], plain) == sorted(
        evidence.GRIDS["momentum"]
    )


def test_a_rho_far_below_sgd_ends_the_grid_which_grows_below():
    args = evidence.parse(["--rhos", "0.1", "0.2", "0.4"])
    sgd = [record("sgd", s, 0.0, 0.33) for s in (0, 1)]
    # 0.2 is 4 points below SGD (> COLLAPSE = 3): 0.4 is not run, the grid grows below.
    runs = sgd + [record("sam", s, 0.1, 0.35) for s in (0, 1)]
    runs += [record("sam", 0, 0.2, 0.28), record("sam", 1, 0.2, 0.30)]
    assert evidence.extended_grid(runs, "sam", [0, 1], args) == [0.05, 0.1, 0.2]
    # 2 points below SGD is not a collapse: the grid stays.
    runs[-2:] = [record("sam", s, 0.2, 0.31) for s in (0, 1)]
    assert evidence.extended_grid(runs, "sam", [0, 1], args) == [0.1, 0.2, 0.4]


def test_share_of_gain_and_its_bootstrap():
    rng = np.random.default_rng(0)
    share, interval = evidence_report.share_of_gain([2.0, 4.0], [2.0, 4.0], rng)
    assert share == 1.0 and interval == pytest.approx([1.0, 1.0])
    gains, sam = np.array([1.0, 3.0, 2.0]), np.array([2.0, 4.0, 3.0])
    share, (low, high) = evidence_report.share_of_gain(gains, sam, rng)
    assert share == pytest.approx(6 / 9)
    # Every resample's ratio lies between the smallest and largest possible ones.
    ratios = [gains[list(i)].mean() / sam[list(i)].mean() for i in np.ndindex(3, 3, 3)]
    assert min(ratios) <= low < share < high <= max(ratios)
    assert low != high
    # Resamples where SAM gains nothing or loses have no share: they are left out.
    share, (low, high) = evidence_report.share_of_gain([1.0, 1.0], [-1.0, 3.0], rng)
    assert share == 1.0 and 1 / 3 <= low <= high <= 1.0


def test_step_cost_weights_each_kind_by_its_count():
    timing = {"seconds_per_step": {"sgd": {"one_pass": 0.1}, "m": {"sam": 0.3, "one_pass": 0.12}}}
    run = {"method": "m", "step_counts": {"sam": 2, "one_pass": 8}}
    assert evidence_report.step_cost(run, timing) == pytest.approx((2 * 0.3 + 8 * 0.12) / 1.0)
    assert evidence_report.step_cost(dict(run, method="x"), timing) is None
    # Mask refreshes are training time too; a run with updates but none timed has no cost.
    masked = dict(run, mask_updates=3)
    assert evidence_report.step_cost(masked, timing) is None
    timing["seconds_per_mask_update"] = {"m": 0.5}
    assert evidence_report.step_cost(masked, timing) == pytest.approx(
        (2 * 0.3 + 8 * 0.12 + 3 * 0.5) / 1.0
    )
    assert evidence_report.step_cost(dict(run, mask_updates=0), timing) == pytest.approx(1.56)


def test_old_records_get_their_rho_and_step_kinds():
    refreshed = [{"mask_seconds": 1.2}, {"mask_seconds": 0.0}, {"mask_seconds": 0.9}]
    old = {"args": {"rho": 0.15}, "runs": [
        {"method": "sgd", "steps": 280, "curve": [{"loss": 1.0}]},
        {"method": "ssam-f-50", "steps": 280, "curve": refreshed},
    ]}  # fmt: skip
    runs = evidence.upgrade(old)["runs"]
    assert [(r["rho"], r["step_counts"], r["mask_updates"]) for r in runs] == [
        (0.0, {"one_pass": 280}, 0), (0.15, {"sam": 280}, 2),
    ]  # fmt: skip


def test_processes_sharing_an_out_claim_different_records(tmp_path):
    args = evidence.parse(["--out", str(tmp_path / "ev.json")])
    empty = {"args": vars(args), "runs": [], "timing": [], "chosen_rho": {}}
    first = evidence.Store(args, json.loads(json.dumps(empty)))
    second = evidence.Store(args, json.loads(json.dumps(empty)))
    todo = [("sam", 0, 0.1), ("sam", 1, 0.1)]
    assert first.claim(todo) == todo[0]
    assert second.claim(todo) == todo[1]
    assert second.claim(todo) is None
    done = dict(record("sam", 0, 0.1, 0.5), steps=1, step_counts={"sam": 1}, seconds=1.0,
                train_accuracy=0.5)  # fmt: skip
    first.add(todo[0], done)
    second.update()
    assert [r["seed"] for r in second.result["runs"]] == [0]
    assert list(second.result["claims"]) == [json.dumps(todo[1])]
    # The claim of a process that is gone no longer blocks its record.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout  # fmt: skip
    second.result["claims"] = {json.dumps(todo[1]): int(gone)}
    with open(args.out) as f:
        on_disk = json.load(f)
    on_disk["claims"] = second.result["claims"]
    with open(args.out, "w") as f:
        json.dump(on_disk, f)
    third = evidence.Store(args, json.loads(json.dumps(empty)))
    assert third.claim(todo) == todo[1]


def test_a_method_added_later_retimes_its_seed_with_every_method():
    """Ratios compare methods timed side by side, so a new method re-times the
    whole seed (old and new methods together) and an old record is never narrowed."""
    methods_to_time = evidence.methods_to_time
    kinds = {"sgd": {"one_pass": 1.0}, "sam": {"sam": 2.0}, "ssam-f-50": {"sam": 2.0}}
    timings = [{"seed": 0, "rhos": {}, "seconds_per_step": kinds}]
    assert methods_to_time([], 0, ["sam", "sgd"]) == ["sgd", "sam"]
    assert methods_to_time(timings, 0, ["sgd", "sam"]) is None
    assert methods_to_time(timings, 0, ["structured-30", "sgd"]) == [
        "sgd", "sam", "ssam-f-50", "structured-30",
    ]  # fmt: skip
    assert methods_to_time(timings, 1, ["sgd"]) == ["sgd"]
    # A record of the single-step timing before issue 23 is redone.
    old = [{"seed": 0, "seconds_per_step": {"sgd": 1.0, "sam": 2.0}}]
    assert methods_to_time(old, 0, ["sgd"]) == ["sgd"]


def test_sgd_row_is_pytorch_sgd_with_coupled_decay():
    """The SGD row (the shared recipe, one pass) trains as a hand-written loop that adds
    `wd * w` to the gradient before momentum (PyTorch's SGD), and the decay matters."""
    import keras
    import tensorflow as tf

    from keras_ssam import models

    module = evidence
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


def test_a_rows_share_interval_does_not_move_when_rows_are_added():
    def full(method, seed, acc):
        return dict(record(method, seed, 0.1, acc), steps=1, step_counts={"sam": 1},
                    seconds=1.0, train_accuracy=0.5)  # fmt: skip

    # 8 seeds of uneven gains: the bootstrap's percentiles depend on the draws.
    rng = np.random.default_rng(1)
    accuracy = {m: 0.3 + rng.uniform(0, 0.05, 8) for m in ("sgd", "sam", "momentum", "a-row")}
    accuracy["sam"] += 0.03
    runs = [full(m, s, accuracy[m][s]) for m in ("sgd", "sam", "momentum") for s in range(8)]
    result = {"runs": runs, "timing": [], "chosen_rho": {}}
    alone = evidence_report.summarize(result)["momentum@0.1"]["share_interval"]
    # "a-row" sorts before "momentum": with one shared generator it would take the first draws.
    result["runs"] = runs + [full("a-row", s, accuracy["a-row"][s]) for s in range(8)]
    assert evidence_report.summarize(result)["momentum@0.1"]["share_interval"] == alone


def test_merge_pools_files_of_disjoint_seeds_and_refuses_what_cannot_be_pooled():
    rng = np.random.default_rng(2)
    accuracy = {m: 0.3 + rng.uniform(0, 0.05, 10) for m in ("sgd", "sam", "momentum")}
    kind = {"sgd": "one_pass", "sam": "sam", "momentum": "momentum"}
    seconds = {"sgd": 0.1, "sam": 0.2, "momentum": 0.11}

    def run(method, seed):
        return dict(record(method, seed, 0.1, accuracy[method][seed]), steps=2,
                    step_counts={kind[method]: 2}, seconds=1.0, train_accuracy=0.5)  # fmt: skip

    def part(seeds):
        timing = [
            {
                "seed": s,
                "rhos": {},
                "seconds_per_step": {m: {kind[m]: seconds[m] * (1 + s / 10)} for m in kind},
            }
            for s in seeds
        ]
        runs = [run(m, s) for m in kind for s in seeds]
        chosen = {"sgd": 0.1, "sam": 0.1, "momentum": 0.1}
        return {"args": {"epochs": 40}, "runs": runs, "timing": timing, "chosen_rho": chosen}

    a, b = part(range(5)), part(range(5, 10))
    row = evidence_report.summarize(evidence_report.merge([a, b], ["epochs"]))["momentum@0.1"]
    gains = 100 * (accuracy["momentum"] - accuracy["sgd"])
    sam_gains = 100 * (accuracy["sam"] - accuracy["sgd"])
    assert row["seeds"] == list(range(10))
    assert row["gain_over_sgd"] == pytest.approx(gains)
    assert row["share_of_sam_gain"] == pytest.approx(gains.mean() / sam_gains.mean())
    assert row["cost_ratio"] == pytest.approx([1.1] * 10)

    with pytest.raises(ValueError, match="more than one file"):
        evidence_report.merge([a, part([4, 5])], ["epochs"])
    with pytest.raises(ValueError, match="more than one file"):  # a timing seed twice
        evidence_report.merge([a, dict(b, timing=b["timing"] + a["timing"][:1])], ["epochs"])
    with pytest.raises(ValueError, match="'momentum' was run at rho 0.1 and at 0.2"):
        evidence_report.merge([a, dict(b, chosen_rho={"momentum": 0.2})], ["epochs"])
    with pytest.raises(ValueError, match="epochs"):
        evidence_report.merge([a, dict(b, args={"epochs": 20})], ["epochs"])


def imported(script):
    """The top-level packages a script in benchmarks/ imports, in functions too."""
    with open(os.path.join(ROOT, "benchmarks", script + ".py")) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_report_and_the_definition_import_neither_the_runner_nor_keras():
    """The runner imports the report and the definition (evidence_spec), never the reverse:
    the report rebuilds a table from the JSON alone, without TensorFlow."""
    heavy = {"evidence", "keras", "keras_ssam", "tensorflow"}
    assert not heavy & imported("evidence_report")
    assert not heavy & imported("evidence_spec")
    assert "evidence_report" not in imported("evidence_spec")
    assert {"evidence_report", "evidence_spec"} <= imported("evidence")
