"""SSAM-F on CIFAR-10 through the public keras_ssam API.

Usage: python examples/cifar_ssam.py PATH/TO/cifar10-images  (train/ and test/
class folders, e.g. the extracted shared archive) [--epochs N] [--export DIR]

Augmentation runs in the input pipeline, as in the official code (both SAM
passes see the same augmented batch): a crop of the 4-pixel zero-padded image
(`RandomTranslation` by up to 4 pixels with zero fill: with the range 4.5/32
and nearest rounding every shift -4..4 is equally likely, exactly
`RandomCrop(32, padding=4)`) and a horizontal flip. Weight decay is PyTorch's
coupled L2, the form the paper's 1e-3 was tuned for.
"""

import argparse

import keras

import keras_ssam

parser = argparse.ArgumentParser()
parser.add_argument("folder")
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--sparsity", type=float, default=0.5)
parser.add_argument("--export", default=None)
args = parser.parse_args()

load = dict(image_size=(32, 32), batch_size=128, label_mode="int", seed=0)
train = keras.utils.image_dataset_from_directory(f"{args.folder}/train", **load)
test = keras.utils.image_dataset_from_directory(f"{args.folder}/test", **load)

shift = 4.5 / 32
augment = keras.Sequential(
    [
        keras.layers.RandomTranslation(
            (-shift, shift), (-shift, shift), fill_mode="constant", interpolation="nearest"
        ),
        keras.layers.RandomFlip("horizontal"),
    ]
)
train = train.map(lambda x, y: (augment(x, training=True), y))

inputs = keras.Input((32, 32, 3))
x = keras.layers.Rescaling(1 / 255.0)(inputs)
for width in (32, 64, 128):
    for _ in range(2):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.MaxPooling2D()(x)
outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))

model = keras_ssam.SSAMModel(keras.Model(inputs, outputs), rho=0.05, coupled_weight_decay=1e-3)
steps = args.epochs * int(train.cardinality())
model.compile(
    optimizer=keras.optimizers.SGD(
        keras.optimizers.schedules.CosineDecay(0.05, steps), momentum=0.9
    ),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
fisher = keras_ssam.FisherMask(train, num_samples=16, sparsity=args.sparsity)
model.fit(train, validation_data=test, epochs=args.epochs, callbacks=[fisher])
if args.export:
    model.export(args.export)  # the inner model only: ready for TF Serving
