"""Per-step wall time of SGD, SAM and SSAM variants, measured in one process.

    python benchmarks/step_time.py --quick                 # small CNN, ~3 minutes
    python benchmarks/step_time.py --models small_cnn resnet18 --steps 25

Every configuration gets its own model (masks set as their callbacks set
them) and the configurations take turns, one `train_on_batch` step each per
round, on random CIFAR-shaped data at batch 128; the median step time after
`--warmup` rounds is reported, with ratios to SGD and to SAM. The last table is the cost of one
mask update relative to a CIFAR-10 epoch (391 steps of the SAM step time).
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_ssam  # noqa: E402
from keras_ssam.experiments import models, recipes  # noqa: E402
from keras_ssam.masks import mask_distribution  # noqa: E402

STEPS_PER_CIFAR_EPOCH = 391


KINDS = ("fisher", "dynamic", "random", "structured")


def configs(sparsities, kinds=KINDS):
    yield "sgd", None, None
    yield "sam", None, None
    names = {"fisher": "ssam-f", "dynamic": "ssam-d", "random": "random", "structured": "struct"}
    for s in sparsities:
        for kind in kinds:
            yield f"{names[kind]} {s}", kind, s


RECIPES = {"fisher": "ssam-f", "dynamic": "ssam-d", "random": "ssam-random"}


def build(model_name, name, kind, sparsity, x, y):
    """The shared recipe of a configuration, compiled, its first mask set as `fit` sets it."""
    keras.utils.set_random_seed(0)
    method = name if kind is None else RECIPES.get(kind, kind)
    recipe = recipes.build(
        method,
        models.build_model(model_name, 10, (32, 32, 3)),
        0.05,
        rho=0.1,
        sparsity=0.5 if sparsity is None else sparsity,
        train_data=(x, y),
        num_samples=16,
    )
    model = recipe.compile()
    for mask in recipe.callbacks:
        mask.set_model(model)
        mask.set_params({"epochs": 1, "steps": 1})
        mask.on_train_begin()  # SSAM-D registers its in-step update
        mask.on_epoch_begin(0)  # the first mask, as before fit's first step
        mask.on_train_batch_begin(0)
    return model


def support(model):
    """Where the mask's ones are: share of parameters in the support, reuse."""
    if model.rho == 0:
        return ""
    rows = mask_distribution(model)
    total = sum(r["entries"] for r in rows)
    inside = sum(r["entries"] for r in rows if r["perturbed"])
    first = next((r["variable"] for r in rows if r["perturbed"]), "-")
    reuse = model.step_plan()["reuse"]
    return f"support {100 * inside / total:5.1f}% of params from {first}, reuse={reuse}"


def time_interleaved(built, x, y, steps, warmup, batch):
    """Round-robin over the configurations, one step each per round, so that
    load changes on a shared machine hit every configuration alike."""
    times = {name: [] for name in built}
    for step in range(warmup + steps):
        xb = x[(step * batch) % len(x) :][:batch]
        yb = y[(step * batch) % len(y) :][:batch]
        for name, model in built.items():
            start = time.perf_counter()
            model.train_on_batch(xb, yb)
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def mask_update_cost(model_name, x, y, sam_step, num_samples):
    keras.utils.set_random_seed(0)
    model = keras_ssam.SSAMModel(models.build_model(model_name, 10, (32, 32, 3)))
    model.compile(
        optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    fisher = keras_ssam.FisherMask(x, y, num_samples=num_samples, sparsity=0.5)
    fisher.set_model(model)
    fisher.update_mask(0)  # warm-up: tracing
    start = time.perf_counter()
    fisher.update_mask(1)
    seconds = time.perf_counter() - start
    return seconds, 100 * seconds / (STEPS_PER_CIFAR_EPOCH * sam_step)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["small_cnn", "resnet18"])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.9, 0.99])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--no-fisher-cost", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.models, args.steps, args.sparsities = ["small_cnn"], 20, [0.5, 0.9]
    rng = np.random.default_rng(0)
    n = args.batch * (args.warmup + args.steps)
    x = rng.normal(size=(n, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, n)
    for model_name in args.models:
        built = {
            name: build(model_name, name, kind, sparsity, x, y)
            for name, kind, sparsity in configs(args.sparsities, args.kinds)
        }
        rows = list(time_interleaved(built, x, y, args.steps, args.warmup, args.batch).items())
        sgd, sam = rows[0][1], rows[1][1]
        print(
            f"\nmodel={model_name} batch={args.batch} median of {args.steps} interleaved "
            f"steps after {args.warmup} warm-up rounds"
        )
        print(f"{'config':<14} {'ms/step':>9} {'÷ SGD':>7} {'÷ SAM':>7}")
        for name, seconds in rows:
            print(
                f"{name:<14} {1000 * seconds:>9.1f} {seconds / sgd:>7.2f} {seconds / sam:>7.3f}"
                f"  {support(built[name])}"
            )
        if args.no_fisher_cost:
            continue
        seconds, percent = mask_update_cost(model_name, x, y, sam, args.num_samples)
        print(
            f"FisherMask update, Ns={args.num_samples}: {seconds:.2f} s = {percent:.2f} % of a "
            f"CIFAR-10 epoch ({STEPS_PER_CIFAR_EPOCH} SAM steps)"
        )


if __name__ == "__main__":
    main()
