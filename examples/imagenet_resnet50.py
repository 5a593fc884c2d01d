"""SSAM-F on ImageNet with ResNet-50 (paper Sec. 5.1 settings), on every local GPU.

Usage: python examples/imagenet_resnet50.py /data/imagenet  (train/ and val/ class
folders) [--epochs 90] [--sparsity 0.5]. tfds users can instead run
`keras-ssam train --dataset imagenet2012 --data-dir DIR --optimizer ssam-f`.

The training stream is keyed by the epoch: `data.epoch_callback(info)` (first
in the list) sets it from fit's epoch, so every epoch sees a new order and new
crops, FisherMask samples that epoch's stream, and a run resumed by
BackupAndRestore repeats the uninterrupted run's batches.
"""

import argparse

import keras
import tensorflow as tf

import keras_ssam
from keras_ssam.experiments import data, models

parser = argparse.ArgumentParser()
parser.add_argument("folder")
parser.add_argument("--epochs", type=int, default=90)
parser.add_argument("--sparsity", type=float, default=0.5)
parser.add_argument("--batch-size", type=int, default=256)
args = parser.parse_args()

train, val, info = data.load(f"folder:{args.folder}", batch_size=args.batch_size)
strategy = tf.distribute.MirroredStrategy()
with strategy.scope():
    base = models.resnet50(info.num_classes, preprocessing=data.preprocessing_layers(info))
    # PyTorch's coupled weight decay 1e-4, as the paper's SGD(weight_decay=1e-4).
    model = keras_ssam.SSAMModel(base, rho=0.07, coupled_weight_decay=1e-4)
    steps = args.epochs * info.steps_per_epoch  # full batches only (drop_last)
    model.compile(
        optimizer=keras.optimizers.SGD(
            keras.optimizers.schedules.CosineDecay(0.1, steps), momentum=0.9
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
model.fit(
    train,
    validation_data=val,
    epochs=args.epochs,
    callbacks=[
        data.epoch_callback(info),  # first: it keys this epoch's stream
        keras_ssam.FisherMask(train, num_samples=128, sparsity=args.sparsity),
        keras.callbacks.BackupAndRestore("checkpoints/imagenet"),
    ],
)
model.export("serving/resnet50/1")
