"""Step time on a KerasHub ResNet image classifier: SGD, SAM and structured SSAM (reused pass).

    python benchmarks/keras_hub_step_time.py            # ~3 minutes on 2 CPU cores

Each configuration has its own task built from config (two ResNet stages,
32 x 32 inputs from 40 x 40 raw images through the task's preprocessor,
batch 32). SGD is the task's own `train_on_batch`; the others wrap it in
`SSAMModel`. Configurations take turns, one step each per pass, for
`--rounds` rounds; each round reports the median step time, and the table
gives the median over rounds of the ratio to SGD with its range. The
structured rows set a `StructuredFisherMask` (`norm_scope="masked"`) and
differ only in `reuse_activations`: the reused second pass starts from the
first pass's activations at a cut inside the backbone.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

import keras_ssam  # noqa: E402

CONFIGS = ("sgd", "sam", "struct 50% reuse", "struct 50% recompute", "struct 90% reuse")


def task():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 128],
        stackwise_num_blocks=[2, 2],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(None, None, 3),
    )
    converter = keras_hub.layers.ResNetImageConverter(image_size=(32, 32), scale=1 / 255.0)
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)
    return keras_hub.models.ResNetImageClassifier(
        backbone=backbone, num_classes=10, preprocessor=preprocessor
    )


def build(name, x, y):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if name == "sgd":
        model = task()
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
        return model
    kwargs = {}
    if name.startswith("struct"):
        kwargs = {"norm_scope": "masked", "reuse_activations": name.endswith("reuse")}
    model = keras_ssam.SSAMModel(task(), rho=0.05, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
    if name.startswith("struct"):
        sparsity = float(name.split()[1].rstrip("%")) / 100
        mask = keras_ssam.StructuredFisherMask(x, y, num_samples=16, sparsity=sparsity)
        mask.set_model(model)
        mask.set_params({"epochs": 1, "steps": 1})
        mask.on_train_begin()
        mask.on_epoch_begin(0)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (256, 40, 40, 3)).astype("float32")
    y = rng.integers(0, 10, 256).astype("int32")
    built = {name: build(name, x, y) for name in CONFIGS}
    for name, model in built.items():
        if name != "sgd":
            plan = model.step_plan()
            print(f"{name:22s} reuse={plan['reuse']} cut={plan['cut']} {plan['reason']}")
    rounds = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        times = {name: [] for name in CONFIGS}
        for step in range(args.steps + 2):  # 2 warm-up passes (tracing)
            xb = x[(step * args.batch) % len(x) :][: args.batch]
            yb = y[(step * args.batch) % len(y) :][: args.batch]
            for name, model in built.items():
                start = time.perf_counter()
                model.train_on_batch(xb, yb)
                if step >= 2:
                    times[name].append(time.perf_counter() - start)
        for name in CONFIGS:
            rounds[name].append(float(np.median(times[name])))
    sgd = np.array(rounds["sgd"])
    print(f"\n{'config':22s} {'ms/step':>8s} {'x SGD':>6s} {'range':>13s}")
    for name in CONFIGS:
        ratio = np.array(rounds[name]) / sgd
        ms = 1000 * float(np.median(rounds[name]))
        span = f"{ratio.min():.2f}-{ratio.max():.2f}"
        print(f"{name:22s} {ms:8.1f} {float(np.median(ratio)):6.2f} {span:>13s}")


if __name__ == "__main__":
    main()
