"""Small KerasHub tasks built from config (no download), shared by tests/test_keras_hub*.py."""

import keras
import keras_hub
import numpy as np

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "the a quick brown fox jumps over lazy dog good bad great dull movie film plot".split()
)
TEXTS = np.array(
    [
        "the quick fox",
        "a bad movie",
        "good film",
        "lazy dog jumps",
        "great plot",
        "a dull film",
        "the brown dog",
        "bad bad plot",
    ]
)
TEXT_LABELS = np.array([0, 1, 1, 0, 1, 0, 0, 1], "int32")


def bert_classifier(dropout=0.0, dtype=None, seed=0):
    """A one-layer BERT text classifier with its preprocessor, from a vocabulary in code."""
    keras.utils.set_random_seed(seed)
    tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=VOCAB)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=8)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCAB),
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=8,
        dropout=dropout,
        dtype=dtype,
    )
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=preprocessor, dropout=dropout
    )


def images(n=8, size=20, seed=0):
    """Raw uint8 images (not the classifier's 16 x 16) and labels of 3 classes."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, size, size, 3)).astype("float32")
    return x, (np.arange(n) % 3).astype("int32")


def resnet_classifier(dropout=0.0, dtype=None, seed=0):
    """A two-stage ResNet image classifier whose preprocessor resizes to 16 x 16 and rescales."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(None, None, 3),
        dtype=dtype,
    )
    converter = keras_hub.layers.ResNetImageConverter(image_size=(16, 16), scale=1 / 255.0)
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)
    return keras_hub.models.ResNetImageClassifier(
        backbone=backbone, num_classes=3, preprocessor=preprocessor, dropout=dropout
    )


def text_data():
    return TEXTS, TEXT_LABELS


def loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def vit_classifier(dropout=0.0, seed=0):
    """A three-layer ViT image classifier on 4 x 4 patches of 16 x 16 images, with preprocessor."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(16, 16, 3), patch_size=4, num_layers=3, num_heads=2, hidden_dim=8, mlp_dim=16
    )
    converter = keras_hub.layers.ViTImageConverter(image_size=(16, 16), scale=1 / 255.0)
    preprocessor = keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter)
    return keras_hub.models.ViTImageClassifier(
        backbone=backbone, num_classes=3, preprocessor=preprocessor, dropout=dropout
    )
