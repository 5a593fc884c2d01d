"""The training CLI end to end, offline: digits, an image folder, mocked tfds."""

import json
import os
import tarfile
import time

import numpy as np
import pytest

from keras_ssam import cli
from keras_ssam.experiments import data

SHARED = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-images.tar.gz"
)


def run(tmp_path, *argv):
    out = tmp_path / "out"
    results = cli.run(["train", "--verbose", "0", "--out", str(out), *argv])
    return results, out


@pytest.mark.parametrize("optimizer", cli.OPTIMIZERS)
def test_digits_each_optimizer_trains_with_its_own_perturbation(tmp_path, optimizer):
    start = time.perf_counter()
    _, out = run(tmp_path, "--optimizer", optimizer, "--epochs", "3")
    wall = time.perf_counter() - start
    saved = json.loads((out / "results.json").read_text())
    assert saved["dataset"]["num_test"] == 360
    assert saved["dataset"]["steps_per_epoch"] == 1437 // 64
    assert len(saved["history"]["loss"]) == 3
    assert (out / "history.csv").read_text().count("\n") == 4
    lines = (out / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]
    # Each epoch's own duration: together no more than the fit, itself within the run.
    epoch_seconds = [json.loads(line)["epoch_seconds"] for line in lines]
    assert min(epoch_seconds) > 0
    assert sum(epoch_seconds) <= saved["train_seconds"] <= wall
    assert os.listdir(out / "tensorboard")
    # What sets the optimizers apart, read back from the trained model: the
    # SGD baseline is SSAMModel with rho = 0 (coupled decay), so no step is a
    # SAM step; SAM and SSAM perturb (sharpness > 0) with their mask density.
    import keras

    model = keras.models.load_model(out / "model.keras")
    # The reported test accuracy is the saved model's, counted here on the 360 test
    # images (chance: 0.1).
    _, test_ds, _ = data.load("digits", batch_size=128)
    x_test, y_test = (np.concatenate(t) for t in zip(*((x, y) for x, y in test_ds)))
    predicted = np.argmax(model.predict(x_test, verbose=0), axis=-1)
    assert saved["test_accuracy"] == pytest.approx(np.mean(predicted == y_test), abs=1e-6)
    assert saved["test_accuracy"] > 0.7
    assert model.coupled_weight_decay == 5e-4
    sharpness = saved["history"]["sharpness"]
    if optimizer == "sgd":
        assert float(model.rho) == 0.0 and "mask_density" not in saved
        # The baseline runs one pass per step: rho = 0 makes no step a SAM step.
        assert saved["history"]["sam_steps"] == [0.0, 0.0, 0.0]
    else:
        assert float(model.rho) == 0.05
        assert saved["history"]["sam_steps"] == [1.0, 1.0, 1.0]
        want = 1.0 if optimizer == "sam" else 0.5
        assert saved["mask_density"] == pytest.approx(want, abs=1e-4)
        assert all(s > 0 for s in sharpness)


def built(argv, num_train=50_000, input_shape=(32, 32, 3), num_classes=10, large=False):
    """Resolves `train ARGV` and builds its model for a dataset of that size."""
    from keras_ssam.experiments import data as data_lib

    args = cli.resolve(cli.build_parser().parse_args(["train", *argv]))
    info = data_lib.DatasetInfo(
        "x", num_classes, input_shape, num_train, 0, (0.0,) * 3, (1.0,) * 3, large=large
    )
    info.steps_per_epoch = data_lib.steps_per_epoch(info, args.batch_size, True)
    return args, cli.build(args, info, train_data=_stream()).compile()


def _stream():
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(
        (np.zeros((4, 32, 32, 3), "float32"), np.zeros(4, "int64"))
    ).batch(2)


def schedule(model):
    lr = model.optimizer.get_config()["learning_rate"]
    assert lr["class_name"] == "CosineDecay"
    return lr["config"]["initial_learning_rate"], lr["config"]["decay_steps"]


@pytest.mark.parametrize(
    "argv,rho,wd,lr,steps,samples",
    [
        # CIFAR-10, ResNet-18, SSAM-F: 200 epochs x 390 drop_last steps.
        (["--dataset", "cifar10", "--optimizer", "ssam-f"], 0.1, 1e-3, 0.05, 200 * 390, 16),
        (["--dataset", "cifar100", "--optimizer", "sam"], 0.2, 1e-3, 0.05, 200 * 390, 16),
        (["--dataset", "cifar10", "--model", "vgg11_bn", "--optimizer", "ssam-d"],
         0.1, 1e-3, 0.1, 200 * 390, 16),
        (["--dataset", "cifar10", "--optimizer", "sgd"], 0.0, 5e-4, 0.05, 200 * 390, 16),
    ],
)  # fmt: skip
def test_cifar_presets_as_built(argv, rho, wd, lr, steps, samples):
    args, model = built(argv)
    from keras_ssam.experiments import data as data_lib

    info = data_lib.DatasetInfo("x", 10, (32, 32, 3), 50_000, 0, (0.0,) * 3, (1.0,) * 3)
    info.steps_per_epoch = data_lib.steps_per_epoch(info, args.batch_size, True)
    callbacks = cli.build(args, info, train_data=_stream()).callbacks
    assert float(model.rho) == rho
    assert model.coupled_weight_decay == wd
    assert model.optimizer.weight_decay is None  # coupled: nothing decoupled on top
    assert float(model.optimizer.momentum) == 0.9
    assert schedule(model) == (lr, steps)
    if args.optimizer == "ssam-f":
        assert callbacks[0].num_samples == samples
    assert args.num_samples == samples and args.cutout is True and args.batch_size == 128


def test_decoupled_weight_decay_mode_uses_the_optimizer():
    _, model = built(["--dataset", "cifar10", "--model", "small_cnn", "--optimizer", "ssam-f",
                      "--weight-decay-mode", "decoupled"])  # fmt: skip
    assert model.coupled_weight_decay == 0.0 and model.optimizer.weight_decay == 1e-3
    _, sgd = built(["--dataset", "cifar10", "--model", "small_cnn", "--optimizer", "sgd",
                    "--weight-decay-mode", "decoupled"])  # fmt: skip
    assert float(sgd.rho) == 0.0 and sgd.coupled_weight_decay == 0.0
    assert sgd.optimizer.weight_decay == 5e-4


def test_imagenet_preset_as_built():
    args, model = built(
        ["--dataset", "imagenet2012", "--model", "small_cnn", "--optimizer", "ssam-f"],
        num_train=1_281_167,
        input_shape=(224, 224, 3),
        num_classes=1000,
        large=True,
    )
    assert (args.batch_size, args.epochs, args.num_samples) == (256, 90, 16 * 8)
    assert float(model.rho) == 0.07 and model.coupled_weight_decay == 1e-4
    assert schedule(model) == (0.1, 90 * (1_281_167 // 256))
    args = cli.resolve(cli.build_parser().parse_args(["train", "--dataset", "imagenet2012"]))
    assert args.model == "resnet50"


def test_folder_of_imagenet_size_images_gets_the_imagenet_preset(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("a", "b"):
            os.makedirs(tmp_path / "imgs" / split / cls)
            for i in range(n):
                image = rng.integers(0, 255, size=(90, 120, 3)).astype("uint8")
                tf.io.write_file(str(tmp_path / "imgs" / split / cls / f"{i}.png"),
                                 tf.io.encode_png(image))  # fmt: skip
    results, out = run(tmp_path, "--dataset", f"folder:{tmp_path / 'imgs'}", "--model",
                       "small_cnn", "--epochs", "1", "--batch-size", "4")  # fmt: skip
    args = results["args"]
    assert args["preset"] == "imagenet"
    assert (args["lr"], args["rho"], args["num_samples"], args["cutout"]) == (0.1, 0.07, 128, False)
    assert results["dataset"]["steps_per_epoch"] == 12 // 4
    import keras

    model = keras.models.load_model(out / "model.keras")
    assert model.model.input_shape == (None, 224, 224, 3)
    assert float(model.rho) == 0.07 and model.coupled_weight_decay == 1e-4
    assert schedule(model) == (0.1, 1 * 12 // 4)


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    if not os.path.exists(SHARED):
        pytest.skip(f"shared CIFAR-10 archive not found at {SHARED}")
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    with tarfile.open(SHARED) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        # Files are grouped by class: a seeded sample keeps every class.
        keep = [members[i] for i in rng.permutation(len(members))[:600]]
        # In archive order: a gzip stream seeks back by decompressing from the start.
        keep.sort(key=lambda m: m.offset)
        tar.extractall(root, members=keep, filter="data")
    return root


def test_folder_dataset_end_to_end(tmp_path, cifar_folder):
    results, out = run(
        tmp_path,
        "--dataset",
        f"folder:{cifar_folder}",
        "--model",
        "small_cnn",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--optimizer",
        "ssam-d",
        "--export",
        str(tmp_path / "export"),
    )
    assert results["dataset"]["num_classes"] == 10
    assert results["dataset"]["num_train"] + results["dataset"]["num_test"] == 600
    assert results["mask_density"] == pytest.approx(0.5, abs=1e-4)
    assert (tmp_path / "export" / "saved_model.pb").exists()


def test_folder_pipeline_values(cifar_folder):
    train, test, info = data.load(f"folder:{cifar_folder}", batch_size=8, seed=1, augment=False)
    x, y = next(iter(test))
    assert x.shape == (8, 32, 32, 3) and x.dtype == "float32"
    assert 0 <= float(np.min(x)) and float(np.max(x)) <= 255
    assert info.input_shape == (32, 32, 3) and len(info.mean) == 3


def test_tfds_path_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=48):
        results, _ = run(
            tmp_path,
            "--dataset",
            "cifar10",
            "--model",
            "small_cnn",
            "--epochs",
            "1",
            "--optimizer",
            "ssam-f",
            "--num-samples",
            "8",
            "--batch-size",
            "16",
        )
    assert results["dataset"] == {
        "name": "cifar10",
        "num_train": 48,
        "num_test": 48,
        "num_classes": 10,
        "steps_per_epoch": 3,
    }


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--optimizer", "adam-sam"], "received 'adam-sam'"),
        (["--model", "vit"], "received 'vit'"),
        (["--dataset", "no_such_dataset_xyz"], "not 'digits', 'folder:PATH'"),
        (["--dataset", "folder:/nonexistent/place"], "no such folder"),
        (["--distribute", "tpu"], "received 'tpu'"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--weight-decay-mode", "l2"], "received 'l2'"),
        (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
        (["--num-samples", "0"], "--num-samples must be >= 1"),
    ],
)
def test_bad_arguments_fail_clearly(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        run(tmp_path, *argv)


def test_folder_without_images_fails_clearly(tmp_path):
    for split in ("train/cat", "test/cat"):
        os.makedirs(tmp_path / "imgs" / split)
    with pytest.raises(SystemExit, match="no images"):
        run(tmp_path, "--dataset", f"folder:{tmp_path / 'imgs'}")


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["ssam-f", "ssam-d"])
def test_checkpoint_dir_resume_is_bitwise(tmp_path, optimizer):
    import subprocess
    import sys

    import h5py

    script = os.path.join(os.path.dirname(__file__), "cli_resume_run.py")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")

    def go(out, ckpt, crash):
        return subprocess.run(
            [sys.executable, script, str(out), str(ckpt), crash, optimizer],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )

    assert go(tmp_path / "full", "-", "no").returncode == 0
    assert go(tmp_path / "cut", tmp_path / "ckpt", "crash").returncode == 3
    done = go(tmp_path / "cut", tmp_path / "ckpt", "no")
    assert done.returncode == 0, done.stderr[-2000:]

    def weights(path):
        values = []
        with h5py.File(path / "final.weights.h5") as f:
            f.visititems(
                lambda name, obj: (
                    values.append((name, obj[()])) if isinstance(obj, h5py.Dataset) else None
                )
            )
        return values

    full, resumed = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert [n for n, _ in full] == [n for n, _ in resumed] and len(full) > 10
    for (name, a), (_, b) in zip(full, resumed):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_training_stream_is_a_full_pass_keyed_by_epoch():
    train, _, info = data.load("digits", batch_size=64)
    assert int(train.cardinality()) == info.num_train // 64
    labels = {}
    info.follow.assign(1)
    for epoch in (0, 1, 0):
        info.epoch.assign(epoch)
        batches = [b[1].numpy() for b in train]
        assert sum(len(b) for b in batches) == info.num_train // 64 * 64
        order = np.concatenate(batches)
        if epoch in labels:
            np.testing.assert_array_equal(labels[epoch], order)  # same epoch, same order
        labels[epoch] = order
    assert np.any(labels[0] != labels[1])


def test_console_entry_point_exits_zero(tmp_path):
    assert cli.main(["train", "--epochs", "1", "--verbose", "0", "--out", str(tmp_path)]) == 0


def test_trained_model_file_reloads_and_feeds_analyze(tmp_path):
    import keras

    import keras_ssam

    results, out = run(tmp_path, "--optimizer", "ssam-f", "--epochs", "1")
    model = keras.models.load_model(out / "model.keras")
    assert isinstance(model, keras_ssam.SSAMModel)
    assert model.mask_density() == pytest.approx(results["mask_density"], abs=1e-6)
    # Same weights and masks as the weight file written beside it.
    train_ds, _, info = data.load("digits")
    args = cli.resolve(cli.build_parser().parse_args(["train"]))
    reference = cli.build(args, info, train_data=train_ds).compile()
    reference.load_weights(out / "final.weights.h5")
    for a, b in zip(model.weights, reference.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, test_ds, _ = data.load("digits", batch_size=128)
    scores = model.evaluate(test_ds, verbose=0, return_dict=True)
    assert scores["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-6)
    start = time.perf_counter()
    report = cli.run(
        ["analyze", str(out / "model.keras"), "--num-examples", "32", "--hessian", "--top-k",
         "1", "--max-iter", "2", "--out", str(tmp_path / "analysis")]
    )  # fmt: skip
    wall = time.perf_counter() - start
    assert len(report["hessian"]["eigenvalues"]) == 1
    assert 0 < report["hessian"]["seconds"] <= wall  # the Hessian's own time, within the run


@pytest.mark.parametrize("classes,preset", [(100, "cifar100"), (10, "cifar10")])
def test_folder_of_small_images_gets_the_cifar_preset_by_class_count(tmp_path, classes, preset):
    import tensorflow as tf

    image = tf.io.encode_png(np.zeros((32, 32, 3), "uint8"))
    for split in ("train", "test"):
        for c in range(classes):
            os.makedirs(tmp_path / split / f"c{c:03d}")
            tf.io.write_file(str(tmp_path / split / f"c{c:03d}" / "0.png"), image)
    args = cli.resolve(cli.build_parser().parse_args(["train", "--dataset", f"folder:{tmp_path}"]))
    assert (args.preset, args.rho, args.model, args.num_samples) == (
        preset, 0.2 if classes == 100 else 0.1, "resnet18", 16
    )  # fmt: skip


def test_train_passes_no_shuffle_to_fit(tmp_path, recwarn):
    # The stream orders itself per epoch; fit's default shuffle=True only warned.
    run(tmp_path, "--optimizer", "sgd", "--epochs", "1")
    assert not [w for w in recwarn if "shuffle" in str(w.message)]


def test_collapse_guard_is_on_by_default_and_stop_ends_a_collapsed_run(tmp_path):
    # rho 20 sends SAM's steps far uphill: the digits CNN sits at chance (10 classes).
    argv = ("--optimizer", "sam", "--rho", "20", "--epochs", "8", "--train-limit", "512")
    with pytest.warns(UserWarning, match="rho=20"):
        warned, _ = run(tmp_path / "warn", *argv)
    assert warned["collapsed_epoch"] is not None
    assert len(warned["history"]["loss"]) == 8  # the default only warns
    stopped, _ = run(tmp_path / "stop", *argv, "--collapse-guard", "stop")
    assert stopped["collapsed_epoch"] == warned["collapsed_epoch"]
    assert len(stopped["history"]["loss"]) == stopped["collapsed_epoch"] + 1 < 8
    healthy, _ = run(
        tmp_path / "sgd", "--optimizer", "sgd", "--epochs", "8", "--train-limit", "512"
    )
    assert healthy["collapsed_epoch"] is None
    off, _ = run(tmp_path / "off", *argv, "--collapse-guard", "off")
    assert "collapsed_epoch" not in off
