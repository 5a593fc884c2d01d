"""Which step kinds collapse training, by `keras_ssam.CollapseGuard` replayed on the logs.

Two sources (issue 29):

- `--runs DIR`: CLI runs, one folder `<row>-s<seed>` per run holding `keras-ssam
  train`'s `results.json` (docs/EVIDENCE.md, "Defaults in a second regime", has
  the commands);
- `--evidence`: the per-epoch curves of docs/evidence*.json, per row and rho.

Per row: mean test and final-epoch train accuracy, and how many runs the guard
(default arguments) flags as collapsed. Prints Markdown tables.
"""

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from keras_ssam import CollapseGuard, SSAMModel  # noqa: E402


def flagged(curve, num_classes, model):
    """Whether a default `CollapseGuard` acts on these per-epoch logs."""
    guard = CollapseGuard(num_classes)
    guard.set_model(model)
    guard.set_params({"epochs": len(curve)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guard.on_train_begin()
        for epoch, logs in enumerate(curve):
            guard.on_epoch_end(epoch, logs)
    return guard.collapsed_epoch is not None


def cell(values, scale=100.0):
    values = [scale * v for v in values]
    spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.1f}{spread}"


def table(groups, header):
    print(f"| {header} | runs | test acc. % | train acc. % (last epoch) | flagged as collapsed |")
    print("|---" * (header.count("|") + 5) + "|")
    for key, runs in groups.items():
        tests, trains, flags = zip(*runs)
        print(
            f"| {key} | {len(runs)} | {cell(tests)} | {cell(trains)} | {sum(flags)} / {len(runs)} |"
        )


def cli_runs(root, model):
    groups = collections.defaultdict(list)
    for path in sorted(glob.glob(os.path.join(root, "*-s*", "results.json"))):
        row = re.sub(r"-s\d+$", "", os.path.basename(os.path.dirname(path)))
        with open(path) as f:
            result = json.load(f)
        rho = 0.0 if result["args"]["optimizer"] == "sgd" else result["args"]["rho"]
        row = f"{row} | {rho:.3g}"
        history = result["history"]
        curve = [dict(accuracy=a, loss=v) for a, v in zip(history["accuracy"], history["loss"])]
        num_classes = result["dataset"]["num_classes"]
        groups[row].append(
            (result["test_accuracy"], curve[-1]["accuracy"], flagged(curve, num_classes, model))
        )
    return groups


def evidence_runs(pattern, model):
    groups = collections.defaultdict(list)
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            runs = json.load(f)["runs"]
        for run in runs:
            key = f"`{run['method']}` | {run['rho']}"
            last = run["curve"][-1]["accuracy"]
            groups[key].append((run["test_accuracy"], last, flagged(run["curve"], 10, model)))
    return dict(sorted(groups.items()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", help="a folder of CLI runs named <row>-s<seed>")
    parser.add_argument(
        "--evidence", nargs="?", const="docs/evidence*.json", help="glob of evidence files"
    )
    args = parser.parse_args(argv)
    model = SSAMModel(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]))
    if args.runs:
        table(cli_runs(args.runs, model), "row | rho")
    if args.evidence:
        table(evidence_runs(args.evidence, model), "row | rho")


if __name__ == "__main__":
    main()
