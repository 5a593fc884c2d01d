"""Share of SAM steps a `GradientNormTrigger` would take in the evidence regime (issue 23).

    python benchmarks/trigger_share.py --seed 0     # ~3 min on 2 cores

Trains the evidence regime's SGD-type run (the proxy CNN, its seed's noisy
1,000-image subset, 40 epochs x 7 steps, cosine lr 0.05, momentum 0.9,
coupled decay 1e-3) with a plain tape loop, recording `||g_t||^2` (every
variable, no decay: what the trigger sees), then replays that sequence
through `GradientNormTrigger.decide` for a grid of settings and prints the
share of SAM steps each would take, overall and per quarter of training.
SAM steps change the trajectory a little, so the share of a chosen setting is
read back from the real runs' `step_counts` (docs/EVIDENCE.md).
"""

import argparse
import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import evidence  # noqa: E402  (a sibling script in benchmarks/)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_ssam  # noqa: E402
from keras_ssam import data, models  # noqa: E402


def norms(args):
    """`||g_t||^2` at every step of the seed's SGD-type run."""
    ev = evidence.parse(["--epochs", str(args.epochs)])
    root = evidence.noisy_folder(
        evidence.extract(ev.data, ev.cache), ev.label_noise, ev.noise_seed, ev.cache
    )
    keras.utils.set_random_seed(args.seed)
    train, _, info = evidence.load(root, args.seed, ev)
    model = models.build_model(
        ev.model, info.num_classes, info.input_shape, data.preprocessing_layers(info)
    )
    steps = ev.epochs * info.steps_per_epoch
    optimizer = keras.optimizers.SGD(
        keras.optimizers.schedules.CosineDecay(ev.lr, steps), momentum=0.9
    )
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        variables = model.trainable_variables
        grads = tape.gradient(loss, variables)
        norm_sq = tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])
        optimizer.apply_gradients([(g + ev.wd_sam * v, v) for g, v in zip(grads, variables)])
        return norm_sq

    out = []
    epoch_key = data.epoch_callback(info)
    for epoch in range(ev.epochs):
        epoch_key.on_epoch_begin(epoch)
        out += [float(step(x, y)) for x, y in train]
    return np.asarray(out)


def share(sequence, delta, lambda1, lambda2):
    """The trigger's decisions over `sequence` (the library's own `decide`)."""
    trigger = keras_ssam.GradientNormTrigger(delta, lambda1, lambda2, len(sequence))
    mean = variance = tf.constant(0.0)
    fired = []
    for t, n in enumerate(sequence):
        sam, mean, variance = trigger.decide(tf.constant(n), mean, variance, t)
        fired.append(bool(sam))
    return np.asarray(fired)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    sequence = norms(args)
    print(f"||g||^2: first {sequence[:3].round(3)}, median {np.median(sequence):.3f}")
    print("| delta | lambda1 | lambda2 | SAM steps % | by quarter % |")
    print("|---|---|---|---|---|")
    for delta, (lambda1, lambda2) in itertools.product(
        (0.9, 0.99), ((0.0, 0.0), (0.25, 0.25), (0.5, 0.5), (0.75, 0.75), (1.0, 1.0), (-1.0, 1.0))
    ):
        fired = share(sequence, delta, lambda1, lambda2)
        quarters = " / ".join(f"{100 * q.mean():.0f}" for q in np.array_split(fired, 4))
        print(f"| {delta} | {lambda1} | {lambda2} | {100 * fired.mean():.1f} | {quarters} |")


if __name__ == "__main__":
    main()
