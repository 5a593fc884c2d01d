"""`keras-ssam` answers --help, --version and refused values without TensorFlow (issue 29)."""

import os
import subprocess
import sys

import pytest

import keras_ssam_cli
from keras_ssam_cli import parser, presets

ROOT = os.path.join(os.path.dirname(__file__), "..")


def entry(argv):
    """Runs `keras_ssam_cli.main(argv)` in a fresh interpreter; reports what it imported."""
    code = (
        "import sys\nfrom keras_ssam_cli import main\ntry:\n    main(sys.argv[1:])\n"
        "except SystemExit as exit:\n    print('EXIT', exit.code)\n"
        "print('IMPORTED', 'tensorflow' in sys.modules, 'keras_ssam' in sys.modules)"
    )
    env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120
    )
    return done.stdout + done.stderr


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["train", "--help"], ["tune", "--help"], ["analyze", "--help"], ["--version"]],
)
def test_help_and_version_import_no_tensorflow(argv):
    assert "IMPORTED False False" in entry(argv)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--epochs", "0"], "--epochs must be >= 1; received 0."),
        (["train", "--model", "vit"], "--model must be one of resnet18,"),
        (["train", "--alpha", "-1"], "--alpha must be >= 0; received -1.0."),
        (["train", "--label-noise", "1"], "--label-noise must be in [0, 1); received 1.0."),
        (["train", "--between", "looksam"], "needs --sam-interval > 1 or --trigger"),
        (["tune", "--methods", "adam"], "--methods must be one of sgd, sam,"),
        (["tune", "--rho-grid", "-0.1"], "--rho-grid must be >= 0; received -0.1."),
        (["tune", "--rho", "0.1"], "unrecognized arguments: --rho 0.1"),
        (["tune", "--optimizer", "sam"], "unrecognized arguments: --optimizer sam"),
        (["analyze", os.path.abspath(__file__)], "choose at least one of --hessian"),
        (["analyze", "no.keras", "--hessian"], "no model file at 'no.keras'."),
        (["train", "--dataset", "folder:/no/such"], "--dataset folder:/no/such: no such folder."),
    ],
)
def test_bad_values_are_refused_before_tensorflow_loads(argv, message):
    output = entry(argv)
    assert message in output and "IMPORTED False False" in output


def help_of(*argv):
    with pytest.raises(SystemExit):
        parser.build_parser().parse_args([*argv, "--help"])


def test_every_flag_has_a_help_line_with_its_default(capsys):
    for command in ("train", "tune", "analyze"):
        sub = parser.build_parser()._subparsers._group_actions[0].choices[command]
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, (command, action.option_strings)
                assert "default" in action.help or action.nargs == 0, (command, action.dest)


def test_train_help_names_choices_and_preset_defaults(capsys):
    help_of("train")
    text = " ".join(capsys.readouterr().out.split())
    assert "{sgd,sam,ssam-f,ssam-d,ssam-random,structured}" in text
    assert "{resnet18,wrn28_10,vgg11_bn,resnet50,small_cnn,proxy_cnn}" in text
    assert "(default: preset, digits 0.05, cifar10 0.1, cifar100 0.2, imagenet 0.07;" in text
    assert "epochs (default: preset, digits 10, cifar10 200, cifar100 200, imagenet 90)" in text
    # LookSAM's alpha: the default and why it is not the paper's.
    assert "LookSAM's alpha (default: 0.1; the LookSAM paper's 0.7" in text
    assert parser.parse(["train"]).alpha == 0.1
    # Momentum ascent's rho scale: a starting point, and the tool that finds it.
    assert "no safe default exists, find it with `keras-ssam tune --methods momentum`" in text
    assert "--label-noise" in text and "--rho-from" in text


def test_static_lists_are_the_librarys():
    import keras_ssam
    from keras_ssam import tuning
    from keras_ssam.experiments import models, recipes

    assert sorted(presets.MODELS) == sorted(models.MODELS)
    assert presets.OPTIMIZERS == recipes.METHODS
    assert parser.TUNED_METHODS == tuple(tuning.TUNED_METHODS)
    assert keras_ssam_cli.__version__ == keras_ssam.__version__


def test_console_entry_is_the_light_module():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        lines = f.read().splitlines()
    assert 'keras-ssam = "keras_ssam_cli:main"' in lines
    packages = next(line for line in lines if line.startswith("include = "))
    assert '"keras_ssam_cli"' in packages and '"keras_ssam.*"' in packages


def quiet_import(env):
    code = (
        "import keras_ssam_cli\nkeras_ssam_cli.quiet_tensorflow()\nimport keras_ssam\n"
        "import tensorflow as tf\nprint(float(tf.constant(1.0) + 1))"  # devices in use
    )
    env = dict(env, PYTHONPATH=os.path.abspath(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr


def test_a_command_starts_tensorflow_without_its_start_up_lines():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    assert quiet_import(env) == ""


def test_tensorflow_log_level_is_set_unless_the_user_chose_one(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    keras_ssam_cli.quiet_tensorflow()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    keras_ssam_cli.quiet_tensorflow()  # tensorflow is imported already: only the level is set
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
