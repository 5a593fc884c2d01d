"""LookSAM's stored direction changes only on finite SAM steps (issue 30).

The direction `g_v / ||g_v||` is computed and stored inside the SAM branch;
a SAM step skipped because its gradient is not finite must leave it as the
last finite SAM step stored it (the non-finite one would store NaN).
"""

import keras
import numpy as np
from reference import counted_mlp, make_data, make_params
from reference_cnn import LOSS

from keras_ssam import SSAMModel


def looksam_after(x, y):
    inner, _ = counted_mlp(make_params())
    model = SSAMModel(inner, rho=0.4, interval=2, between="looksam", alpha=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=LOSS)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    return model


def test_a_skipped_sam_step_keeps_the_stored_direction():
    x, y = make_data()
    x_bad = x[:12].copy()
    x_bad[9, 0] = np.nan  # the third batch: iterations == 2, a SAM step
    skipped = looksam_after(x_bad, y[:12])
    clean = looksam_after(x[:8], y[:8])  # the two steps before it
    assert int(skipped.non_finite_steps.numpy()) == 1
    assert int(skipped.optimizer.iterations.numpy()) == 2
    stored = [b.numpy() for b in skipped._looksam]
    want = [b.numpy() for b in clean._looksam]
    assert any(np.abs(w).max() > 0 for w in want)  # step 0 stored a direction
    for got, w in zip(stored, want):
        np.testing.assert_array_equal(got, w)
