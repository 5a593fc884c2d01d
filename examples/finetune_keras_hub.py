"""Fine-tune KerasHub tasks with SSAM: a BERT text classifier and a ResNet image classifier.

Both are built from config (no download) and trained on small synthetic tasks
that run offline in a few minutes on a CPU. The sequence is the usual one:

1. freeze the backbone and train the head with SSAM-F (`FisherMask`);
2. unfreeze, recompile with a new optimizer whose learning rate warms up
   (recompiling resets `iterations`, so the warm-up and the interval's phase
   start again, while the masks and the LookSAM buffers persist), and train
   everything with LookSAM between SAM steps every 2 steps.

`SSAMModel(task)` applies the task's preprocessor, so `fit` takes raw strings
and raw images, as the task's own `fit` does. With a pretrained preset, replace
the `*_from_config` builders with e.g.
`keras_hub.models.BertTextClassifier.from_preset("bert_tiny_en_uncased", num_classes=2)`.

Usage: python examples/finetune_keras_hub.py [text|image|both]
"""

import sys

import keras
import keras_hub
import numpy as np

import keras_ssam

POSITIVE = "good great fine superb lovely brilliant".split()
NEGATIVE = "bad awful dull poor boring terrible".split()
FILLER = "the a movie film plot story was is very quite".split()


def text_data(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    texts = [
        " ".join(rng.choice(FILLER, 4).tolist() + [rng.choice(POSITIVE if label else NEGATIVE)])
        for label in labels
    ]
    return np.array(texts), labels.astype("int32")


def text_task_from_config():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POSITIVE + NEGATIVE + FILLER
    tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=vocab)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=12)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocab),
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=12,
    )
    return keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=preprocessor)


def image_data(n, seed):
    """Noise images whose class is the brightest colour channel."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.integers(0, 160, (n, 40, 40, 3)).astype("float32")
    images[np.arange(n), :, :, labels] += 60
    return images, labels.astype("int32")


def image_task_from_config():
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(None, None, 3),
    )
    converter = keras_hub.layers.ResNetImageConverter(image_size=(32, 32), scale=1 / 255.0)
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)
    return keras_hub.models.ResNetImageClassifier(
        backbone=backbone, num_classes=3, preprocessor=preprocessor
    )


def compile_with_warmup(model, peak, steps):
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps, warmup_target=peak, warmup_steps=max(1, steps // 10)
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def finetune(name, task, data, peak, epochs=(2, 3), batch_size=32):
    (x, y), (x_test, y_test) = data(512, 0), data(256, 1)
    model = keras_ssam.SSAMModel(task, rho=0.05, interval=2, between="looksam")
    steps = len(y) // batch_size

    task.backbone.trainable = False  # 1. the head, with SSAM-F
    compile_with_warmup(model, peak, steps * epochs[0])
    fisher = keras_ssam.FisherMask(x, y, num_samples=32, sparsity=0.5)
    model.fit(x, y, batch_size=batch_size, epochs=epochs[0], callbacks=[fisher], verbose=0)
    head = model.evaluate(x_test, y_test, verbose=0)[1]

    task.backbone.trainable = True  # 2. everything; the warm-up starts again
    compile_with_warmup(model, peak, steps * epochs[1])
    history = model.fit(
        x, y, batch_size=batch_size, epochs=epochs[1], callbacks=[fisher], verbose=0
    )
    full = model.evaluate(x_test, y_test, verbose=0)[1]
    print(
        f"{name}: test accuracy {head:.3f} after the head, {full:.3f} after unfreezing; "
        f"mask density {model.mask_density():.2f}, SAM steps {history.history['sam_steps'][-1]:.2f}"
    )
    return model


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "both"
    keras.utils.set_random_seed(0)
    if which in ("text", "both"):
        finetune("text (BERT)", text_task_from_config(), text_data, peak=1e-2, epochs=(2, 6))
    if which in ("image", "both"):
        finetune("image (ResNet)", image_task_from_config(), image_data, peak=1e-3)
