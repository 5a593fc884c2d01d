"""The CLI's presets and choices: plain data, no TensorFlow.

Defaults follow the paper and its official code per (dataset, model), see
`PRESETS` and `MODEL_PRESETS`: CIFAR batch 128, 200 epochs, lr 0.05 cosine,
momentum 0.9, weight decay 5e-4 (SGD) / 1e-3 (SAM, SSAM), rho 0.1 (CIFAR-10) /
0.2 (CIFAR-100), Fisher samples 16, crop + flip + Cutout (VGG11-BN on CIFAR-10:
lr 0.1, from the official VGG runs); ImageNet batch 256, lr 0.1, weight decay
1e-4, rho 0.07, Fisher samples 128, random-resized crops.
Weight decay is PyTorch's coupled L2 (`SSAMModel(coupled_weight_decay=...)`)
by default, as the paper's numbers were tuned for it. A `folder:` dataset of
ImageNet-size images gets the ImageNet preset. The offline default, `digits`,
trains a small CNN in seconds.
"""

# keras_ssam.experiments.recipes.METHODS (pinned by a test; not imported here:
# this module must not import TensorFlow).
OPTIMIZERS = ("sgd", "sam", "ssam-f", "ssam-d", "ssam-random", "structured")
# keras_ssam.experiments.models.MODELS, in the same way.
MODELS = ("resnet18", "wrn28_10", "vgg11_bn", "resnet50", "small_cnn", "proxy_cnn")
BETWEEN = ("sgd", "looksam")  # SSAMModel(between=)
ASCENTS = ("gradient", "momentum")  # SSAMModel(ascent=)
METHODS = ("lanczos", "power")  # keras_ssam.analysis.hessian_eigenvalues(method=)
HVP_MODES = ("forward", "reverse")  # keras_ssam.analysis.HVP_MODES
DISTRIBUTE = ("none", "mirrored", "multiworker")
WEIGHT_DECAY_MODES = ("coupled", "decoupled")
SPLITS = ("train", "test")
COLLAPSE_GUARD = ("warn", "stop", "off")  # keras_ssam.CollapseGuard in `train`
# LookSAM's alpha. The paper's 0.7 (Liu et al. 2022) was chosen for ViTs at
# batch 4096; in docs/EVIDENCE.md's regime it collapsed training at every rho
# tried, 0.1 did not (issue 29).
ALPHA = 0.1
_CIFAR = dict(
    model="resnet18",
    epochs=200,
    batch_size=128,
    lr=0.05,
    rho=0.1,
    wd_sgd=5e-4,
    wd_sam=1e-3,
    cutout=True,
    num_samples=16,
)
PRESETS = {
    "digits": dict(
        model="small_cnn",
        epochs=10,
        batch_size=64,
        lr=0.05,
        rho=0.05,
        wd_sgd=5e-4,
        wd_sam=5e-4,
        cutout=False,
        num_samples=16,
    ),
    "cifar10": _CIFAR,
    "cifar100": dict(_CIFAR, rho=0.2),
    "imagenet": dict(
        model="resnet50",
        epochs=90,
        batch_size=256,
        lr=0.1,
        rho=0.07,
        wd_sgd=1e-4,
        wd_sam=1e-4,
        cutout=False,
        num_samples=128,
    ),
}
# (preset, model) -> values that differ from the dataset's preset.
#
# VGG11-BN on CIFAR-10: the official release's own VGG runs, configs/train.sh of
# github Mi-Peng/Sparse-Sharpness-Aware-Minimization at 2d17866 (the file was
# deleted in 76974fd), its first run (the others differ in --sparsity, and in
# the swept values below):
VGG11_BN_CIFAR10_COMMAND = (
    "python train.py --sparsity 0.9 --update_freq $update_freq --num_samples $num_samples "
    "--dataset CIFAR10_cutout --seed $seed --lr 0.1 --weight_decay 1e-3 --model $model "
    "--opt ssamf-sgd --rho 0.1 --wandb --output_dir logs/${model}_${data}"
)
# (model=vgg11_bn, sparsity 0.9/0.95/0.98/0.99, update_freq 1/5, num_samples
# 128/1024). Taken from it: lr 0.1, weight decay 1e-3 (SAM and SSAM), rho 0.1,
# Cutout (CIFAR10_cutout). What it leaves to configs/defaulf_cfg.py, as the CIFAR
# preset: 200 epochs, batch 128, momentum 0.9, cosine schedule. What it sweeps
# keeps the values of the official README's CIFAR SSAM-F command (`--sparsity 0.5
# --num_samples 16 --update_freq 1`): --sparsity 0.5, 16 Fisher samples,
# --update-interval 1. The SGD baseline's weight decay (not in the command) stays
# that of the official README's SGD command, 5e-4.
MODEL_PRESETS = {
    ("cifar10", "vgg11_bn"): dict(lr=0.1, rho=0.1, wd_sam=1e-3, cutout=True),
}
# rho of a SAM step every K steps (`--sam-interval K`, SGD between), as a multiple
# of the preset's: the ratio of the rhos chosen on the calibration seeds of
# docs/EVIDENCE.md (issue 23), where SAM's best rho was 0.15, SAM every 2nd
# step's 0.15 too and every 5th step's 0.3. Between measured intervals the
# multiple is interpolated linearly; beyond the largest it is held, not
# extrapolated. An explicit --rho wins.
INTERVAL_RHO_SCALE = {1: 1.0, 2: 1.0, 5: 2.0}
# rho of each `--ascent`, as a multiple of the preset's: momentum ascent's rho
# chosen on the same calibration seeds (1.0) ÷ SAM's (0.15). Its ascent direction
# is the normalized momentum buffer, which in this regime needs a far larger
# radius to do anything: at SAM's rho it memorizes the noisy labels like SGD.
# A starting point, not a rule: on a second label-noise task (issue 29) the best
# momentum-ascent rho was about 3x SAM's, and 6x lost 17 points. No safe default
# exists; `keras-ssam tune` finds it for a task.
ASCENT_RHO_SCALE = {"gradient": 1.0, "momentum": 1.0 / 0.15}


def interval_rho_scale(interval):
    """The multiple of the preset rho for `--sam-interval interval` (see `INTERVAL_RHO_SCALE`)."""
    points = sorted(INTERVAL_RHO_SCALE.items())
    if interval >= points[-1][0]:
        return points[-1][1]
    for (k0, v0), (k1, v1) in zip(points, points[1:]):
        if k0 <= interval <= k1:
            return v0 + (v1 - v0) * (interval - k0) / (k1 - k0)
    return points[0][1]


def preset_default(field):
    """A help line's default of a preset field, e.g. "digits 0.05, cifar10 0.1, ..."."""
    return ", ".join(f"{name} {values[field]}" for name, values in PRESETS.items())
