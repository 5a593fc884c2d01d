"""Files saved with an earlier layout still load (issue 20).

`tests/data/layout-2026-12.*` were written by `tests/data/make_layout_files.py`
with the layout of 2026-12 (before the step was split into parts). New step
state must not break them: every value comes back as it was saved.
"""

import os
import sys

import keras
import numpy as np
import pytest

import keras_ssam

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
sys.path.insert(0, HERE)
from make_layout_files import inner, known_values  # noqa: E402


def check_values(ssam):
    weights, masks = known_values(ssam.model)
    for got, want in zip(ssam.model.get_weights(), weights):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(ssam.masks, masks):
        np.testing.assert_array_equal(got.numpy(), want)
    assert ssam.rho == 0.125
    assert int(ssam.masks_initialized.numpy()) == 1
    assert int(ssam.non_finite_steps.numpy()) == 3
    assert ssam.masks_valid()
    assert ssam.mask_density() == pytest.approx(
        sum(m.sum() for m in masks) / sum(m.size for m in masks)
    )


def test_weights_file_of_the_2026_12_layout_loads():
    ssam = keras_ssam.SSAMModel(inner(), rho=0.5)
    ssam.load_weights(os.path.join(HERE, "layout-2026-12.weights.h5"))
    check_values(ssam)


def test_keras_file_of_the_2026_12_layout_loads():
    ssam = keras.saving.load_model(os.path.join(HERE, "layout-2026-12.keras"))
    assert isinstance(ssam, keras_ssam.SSAMModel)
    check_values(ssam)


def test_files_saved_before_optional_state_load_into_models_that_have_it():
    """LookSAM's buffers and the trigger's estimates start from zero; the rest loads."""
    ssam = keras_ssam.SSAMModel(
        inner(),
        rho=0.5,
        interval=1,
        between="looksam",
        trigger=keras_ssam.GradientNormTrigger(0.9, 0.0, 1.0, 10),
    )
    ssam.load_weights(os.path.join(HERE, "layout-2026-12.weights.h5"))
    check_values(ssam)
    assert float(ssam.trigger_mean.numpy()) == 0.0
    buffers = [v for v in ssam.weights if v.name.startswith("looksam_")]
    assert len(buffers) == len(ssam.masks) and not any(np.any(v.numpy()) for v in buffers)
