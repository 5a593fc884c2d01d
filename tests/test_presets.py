"""The CLI's presets against the official code's own commands.

The commands are copied verbatim from github Mi-Peng/Sparse-Sharpness-Aware-
Minimization (release commit 2d17866); the values a command does not pass are
the defaults of that commit's `configs/defaulf_cfg.py`.
"""

import shlex

import pytest

from keras_ssam import cli

# configs/defaulf_cfg.py at 2d17866, the arguments a preset covers.
OFFICIAL_DEFAULTS = {
    "epochs": "200",
    "batch_size": "128",
    "lr": "0.05",
    "weight_decay": "5e-4",
    "rho": "0.05",
    "sparsity": "0.2",
    "update_freq": "5",
    "num_samples": "1024",
    "dataset": "CIFAR10_base",
}
# configs/train.sh at 2d17866 (model=vgg11_bn), the first of its VGG11-BN runs;
# the others differ in --sparsity and in the swept $update_freq / $num_samples.
VGG11_BN = (
    "CUDA_VISIBLE_DEVICES=$cuda python train.py --sparsity 0.9 --update_freq $update_freq "
    "--num_samples $num_samples --dataset CIFAR10_cutout --seed $seed --lr 0.1 "
    "--weight_decay 1e-3 --model $model --opt ssamf-sgd --rho 0.1 --wandb "
    "--output_dir logs/${model}_${data}"
)
# README.md at 2d17866, "Training": ResNet-18 on CIFAR-10 with SGD and with SSAM-F.
RESNET18_SGD = (
    "python train.py --model resnet18 --dataset CIFAR10_cutout --datadir [Path2Data] "
    "--opt sgd --lr 0.05 --weight_decay 5e-4 --seed 1234 --wandb"
)
RESNET18_SSAMF = (
    "python train.py --model resnet18 --dataset CIFAR10_cutout --datadir [Path2Data] "
    "--opt ssamf-sgd --rho 0.1 --weight_decay 1e-3 --sparsity 0.5 --num_samples 16 "
    "--update_freq 1 --seed 1234 --wandb"
)


def official(command):
    """The arguments a command runs with: its flags over the defaults."""
    words = shlex.split(command)
    flags = {w[2:]: v for w, v in zip(words, words[1:] + [""]) if w.startswith("--")}
    return {**OFFICIAL_DEFAULTS, **flags}


def resolved(*argv):
    return cli.resolve(cli.build_parser().parse_args(["train", "--dataset", "cifar10", *argv]))


def fixed(values, *names):
    """The values of `names` the command fixes (not swept as `$name`)."""
    return {n: values[n] for n in names if not values[n].startswith("$")}


def test_vgg11_bn_preset_is_the_official_vgg_command():
    command = official(VGG11_BN)
    args = resolved("--model", "vgg11_bn", "--optimizer", "ssam-f")
    ours = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "rho": args.rho,
    }
    theirs = fixed(command, "epochs", "batch_size", "lr", "weight_decay", "rho")
    assert ours == {name: float(value) for name, value in theirs.items()}
    assert ours["lr"] == 0.1 and ours["weight_decay"] == 1e-3 and ours["rho"] == 0.1
    assert args.cutout is (command["dataset"] == "CIFAR10_cutout")
    # The preset cites the command it takes its values from.
    assert cli.VGG11_BN_CIFAR10_COMMAND in VGG11_BN
    # SAM runs the same values.
    sam = resolved("--model", "vgg11_bn", "--optimizer", "sam")
    assert (sam.lr, sam.weight_decay, sam.rho) == (0.1, 1e-3, 0.1)


@pytest.mark.parametrize("command", [RESNET18_SGD, RESNET18_SSAMF])
def test_resnet18_preset_is_the_official_readme_command(command):
    command = official(command)
    optimizer = {"sgd": "sgd", "ssamf-sgd": "ssam-f"}[command["opt"]]
    args = resolved("--model", "resnet18", "--optimizer", optimizer)
    ours = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "cutout": args.cutout,
    }
    theirs = {
        "epochs": int(command["epochs"]),
        "batch_size": int(command["batch_size"]),
        "lr": float(command["lr"]),
        "weight_decay": float(command["weight_decay"]),
        "cutout": command["dataset"] == "CIFAR10_cutout",
    }
    if optimizer == "ssam-f":
        ours.update(
            rho=args.rho,
            sparsity=args.sparsity,
            num_samples=args.num_samples,
            update_interval=args.update_interval,
        )
        theirs.update(
            rho=float(command["rho"]),
            sparsity=float(command["sparsity"]),
            num_samples=int(command["num_samples"]),
            update_interval=int(command["update_freq"]),
        )
    assert ours == theirs


@pytest.mark.parametrize(
    "flags,rho",
    [
        (["--sam-interval", "5"], 0.1 * 2.0),
        (["--sam-interval", "2"], 0.1),
        (["--sam-interval", "3"], 0.1 * 4 / 3),  # linear between K = 2 and K = 5
        (["--sam-interval", "10"], 0.1 * 2.0),  # held beyond the largest measured K
        (["--sam-interval", "1"], 0.1),
        (["--sam-interval", "5", "--rho", "0.05"], 0.05),  # an explicit rho wins
        (["--ascent", "momentum"], 0.1 / 0.15),
        (["--ascent", "momentum", "--rho", "0.4"], 0.4),
        (["--ascent", "gradient"], 0.1),
    ],
)
def test_cheap_schedules_scale_the_preset_rho(flags, rho):
    assert resolved("--optimizer", "sam", *flags).rho == pytest.approx(rho)


def test_rho_scales_are_the_calibrations_choice():
    """Each measured multiple is rho chosen for `interval-K` (or momentum ascent) ÷ rho
    chosen for SAM, recomputed from the calibration records in docs/EVIDENCE.md's JSON."""
    import os
    import sys

    root = os.path.join(os.path.dirname(__file__), "..")
    sys.path.insert(0, os.path.join(root, "benchmarks"))
    import evidence

    saved = evidence.read(os.path.join(root, "docs", "evidence.json"))
    seeds = [0, 1, 2]
    grids = evidence.parse([])
    sam = evidence.chosen_rho(saved["runs"], "sam", seeds, grids)
    for interval, scale in cli.INTERVAL_RHO_SCALE.items():
        if interval == 1:
            assert scale == 1.0
            continue
        chosen = evidence.chosen_rho(saved["runs"], f"interval-{interval}", seeds, grids)
        assert chosen / sam == pytest.approx(scale), interval
    assert cli.ASCENT_RHO_SCALE["gradient"] == 1.0
    momentum = evidence.chosen_rho(saved["runs"], "momentum", seeds, grids)
    assert momentum / sam == pytest.approx(cli.ASCENT_RHO_SCALE["momentum"])
