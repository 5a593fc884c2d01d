"""End-to-end CLI runs on the offline digits dataset."""

import json

import pytest

from keras_ssam import cli


@pytest.mark.parametrize("optimizer", cli.OPTIMIZERS)
def test_train_on_digits_beats_chance(tmp_path, optimizer):
    out = tmp_path / optimizer
    cli.main(
        [
            "train",
            "--optimizer",
            optimizer,
            "--epochs",
            "3",
            "--verbose",
            "0",
            "--sparsity",
            "0.5",
            "--out",
            str(out),
        ]
    )
    results = json.loads((out / "results.json").read_text())
    assert results["test_accuracy"] > 0.7  # chance is 0.1
    assert len(results["history"]["loss"]) == 3
    assert (out / "history.csv").read_text().count("\n") == 4
    if optimizer in ("ssam-f", "ssam-d", "ssam-random"):
        assert results["mask_density"] == pytest.approx(0.5, abs=1e-4)
    elif optimizer == "sam":
        assert results["mask_density"] == 1.0


@pytest.mark.parametrize(
    "flag,value", [("--optimizer", "adam-sam"), ("--dataset", "mnist"), ("--model", "vit")]
)
def test_unknown_choices_fail_clearly(tmp_path, flag, value):
    with pytest.raises(SystemExit, match=f"received '{value}'"):
        cli.main(["train", flag, value, "--out", str(tmp_path)])
