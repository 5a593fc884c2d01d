"""The paper's architectures: parameter counts of the official PyTorch models."""

import numpy as np
import pytest

from keras_ssam.experiments import models


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


# Counts of the official code's models (`sum(p.numel() for p in model.parameters())`,
# github Mi-Peng/Sparse-Sharpness-Aware-Minimization, models/*.py), CIFAR-10 heads.
# The 100-class counts add 90 rows to the last linear layer: 90 * (fan_in + 1).
OFFICIAL = {
    "resnet18": (11_173_962, 512),
    "wrn28_10": (36_479_194, 640),
    "vgg11_bn": (28_149_514, 4096),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
@pytest.mark.parametrize("classes", [10, 100])
def test_paper_models_have_the_official_parameter_counts(name, classes):
    count, fan_in = OFFICIAL[name]
    model = models.build_model(name, classes, (32, 32, 3))
    assert trainable_count(model) == count + (classes - 10) * (fan_in + 1)
    assert model.output_shape == (None, classes)


def test_vgg11_bn_has_the_papers_classifier():
    model = models.vgg11_bn(10)
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    assert [(d.kernel.shape[0], d.units) for d in dense] == [(512, 4096), (4096, 4096), (4096, 10)]
    assert [d.get_config()["activation"] for d in dense] == ["relu", "relu", "linear"]
    drops = [layer.rate for layer in model.layers if layer.__class__.__name__ == "Dropout"]
    assert drops == [0.5, 0.5]
    # Dropout is active in training only: two training calls differ, inference is fixed.
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    assert not np.allclose(model(x, training=True), model(x, training=True))
    np.testing.assert_array_equal(model(x, training=False), model(x, training=False))


def test_vgg11_bn_rejects_inputs_it_cannot_flatten_to_512():
    with pytest.raises(ValueError, match=r"input_shape=\(64, 64, 3\)"):
        models.vgg11_bn(10, input_shape=(64, 64, 3))


def test_resnet50_is_keras_applications_resnet50():
    # Keras' ResNet-50 (convolutions with bias): 25,583,592 with 1000 classes;
    # torchvision's (no conv bias) has 25,557,032.
    assert trainable_count(models.build_model("resnet50", 1000, (224, 224, 3))) == 25_583_592


def test_unknown_model_name_fails_clearly():
    with pytest.raises(ValueError, match="received model='vit'"):
        models.build_model("vit", 10, (32, 32, 3))
