"""The evidence experiment's definition, shared by its runner and its report.

`evidence.py` runs the records and `evidence_report.py` tables them; both need
what this module holds, and neither imports the other for it:

- the rows (`METHODS`, their `LABELS`, the cheap-step mechanisms `CHEAP`) and
  the arguments that define a budget (`BUDGET_ARGS`);
- the records as written to the JSON (`read`, with the `upgrade` of records
  made before issue 23) and the step kinds a row can take (`kinds_of`);
- the choice of rho from calibration records (`GRIDS`, `extended_grid`,
  `chosen_rho`);
- a run's cost from its step counts and the per-kind timings (`step_cost`).

It imports neither Keras nor TensorFlow: the report runs without them.
"""

import argparse
import dataclasses
import json

import numpy as np


@dataclasses.dataclass(frozen=True)
class Method:
    """A row: a recipe method, its mask sparsity and a cheap-step mechanism (or none)."""

    kind: str  # a key of RECIPES
    sparsity: float = None
    cheap: str = None  # a key of CHEAP


# AE-SAM's gradient-norm trigger (delta, lambda1, lambda2): chosen on seed 0 of
# this regime so that about 25 % of the steps are SAM steps (docs/EVIDENCE.md,
# "Trigger calibration"); T is the run's number of steps.
TRIGGER = (0.9, 0.25, 0.25)
# Cheap-step mechanisms (issues 21, 22): recipe arguments; `window` is the
# part of training (fractions of the epochs) that has SAM steps, rho 0 outside.
CHEAP = {
    "interval-2": dict(interval=2),
    "interval-5": dict(interval=5),
    "looksam-5": dict(interval=5, between="looksam", alpha=0.7),
    "trigger": dict(trigger=TRIGGER),
    "momentum": dict(ascent="momentum"),
    "late-25": dict(window=(0.75, 1.0)),
    "early-25": dict(window=(0.0, 0.25)),
    # A diagnostic, not a row of the table: LookSAM with a smaller alpha.
    "looksam-5-a0.1": dict(interval=5, between="looksam", alpha=0.1),
}
CHEAP_LABELS = {
    "interval-2": "SAM every 2nd step",
    "interval-5": "SAM every 5th step",
    "looksam-5": "LookSAM, k = 5",
    "trigger": "gradient-norm trigger",
    "momentum": "momentum ascent",
    "late-25": "SAM in the last 25 %",
    "early-25": "SAM in the first 25 %",
    "looksam-5-a0.1": "LookSAM, k = 5, alpha 0.1",
}
METHODS = {
    "sgd": Method("sgd"),
    "sam": Method("sam"),
    "ssam-f-50": Method("fisher", 0.5),
    "ssam-f-90": Method("fisher", 0.9),
    "ssam-d-50": Method("dynamic", 0.5),
    "ssam-d-90": Method("dynamic", 0.9),
    "structured-50": Method("structured", 0.5),
    "structured-30": Method("structured", 0.3),
}
LABELS = {
    "sgd": "SGD",
    "sam": "SAM",
    "ssam-f-50": "SSAM-F 50 %",
    "ssam-f-90": "SSAM-F 90 %",
    "ssam-d-50": "SSAM-D 50 %",
    "ssam-d-90": "SSAM-D 90 %",
    "structured-50": "structured SSAM-F 50 %",
    "structured-30": "structured SSAM-F 30 %",
}
for _name, _label in CHEAP_LABELS.items():
    METHODS[_name] = Method("sam", None, _name)
    LABELS[_name] = _label
    METHODS["ssam-f-50+" + _name] = Method("fisher", 0.5, _name)
    LABELS["ssam-f-50+" + _name] = f"SSAM-F 50 % + {_label}"
# Calibration grids of rho (issue 23): SAM x0.5 to x4 of 0.15; schedules with
# fewer SAM steps larger, momentum ascent larger still (MSAM used 3 against
# SAM's 0.2); a method whose best rho is at an edge of its grid is extended
# (`extended_grid`). A `ssam-f-50+` row uses its mechanism's grid.
GRIDS = {
    "sam": (0.075, 0.15, 0.3, 0.6),
    "ssam-f-50": (0.15, 0.3, 0.6),
    "structured-50": (0.15, 0.3, 0.6, 1.2),
    "interval-2": (0.15, 0.3, 0.6),
    "interval-5": (0.3, 0.6, 1.2),
    "looksam-5": (0.3, 0.6, 1.2),
    "trigger": (0.3, 0.6, 1.2),
    # 1.0 added after 0.6 memorized the noisy labels (99.7 % train accuracy) and
    # 1.5 under-fit (31 %): the only mechanism at about SGD's cost gets its peak.
    "momentum": (0.6, 1.0, 1.5, 3.0),
    "late-25": (0.3, 0.6, 1.2),
    "early-25": (0.3, 0.6, 1.2),
    "looksam-5-a0.1": (0.3, 0.6, 1.2),
}
MAX_EXTENSIONS = 2  # grid points added per method when its best rho is at an edge
COLLAPSE = 3.0  # points below SGD's mean accuracy: larger rhos are not run
# Arguments that define the experiment: a resumed --out must match them.
BUDGET_ARGS = (
    "model",
    "train_images",
    "test_images",
    "epochs",
    "batch",
    "lr",
    "wd_sgd",
    "wd_sam",
    "label_noise",
    "noise_seed",
    "augment",
    "cutout",
    "fisher_samples",
    "hessian_examples",
    "hessian_max_iter",
    "curve_every",
    "curve_images",
    "timing_steps",
    "timing_warmup",
)


# ------------------------------------------------------------------ records
def rho_of(method, rho):
    return 0.0 if method == "sgd" else float(rho)


def kinds_of(method):
    """The step kinds a method's run can take (see `step_counts`)."""
    spec = METHODS[method]
    if spec.kind == "sgd":
        return ("one_pass",)
    if spec.cheap == "momentum":
        return ("momentum",)
    return ("sam", "one_pass") if spec.cheap else ("sam",)


def upgrade(saved):
    """Records written before issue 23 ran every SAM-type row at the file's one rho,
    and every step of theirs was of one kind."""
    for r in saved["runs"]:
        r.setdefault("rho", rho_of(r["method"], saved["args"].get("rho", 0.15)))
        if "step_counts" not in r:
            r["step_counts"] = {kinds_of(r["method"])[0]: r["steps"]}
        if "mask_updates" not in r:  # at most one an epoch, each logging its seconds
            r["mask_updates"] = sum(p.get("mask_seconds", 0.0) > 0 for p in r.get("curve", []))
    saved.setdefault("chosen_rho", {})
    return saved


def read(path):
    with open(path) as f:
        return upgrade(json.load(f))


# ------------------------------------------------------------------ the rho choice
def records_of(runs, method, rho=None):
    return [r for r in runs if r["method"] == method and (rho is None or r["rho"] == rho)]


def mean_accuracy(runs, method, rho, seeds):
    """Mean test accuracy of `method` at `rho` over `seeds`, or None until all are done."""
    done = {r["seed"]: r["test_accuracy"] for r in records_of(runs, method, rho)}
    return np.mean([done[s] for s in seeds]) if all(s in done for s in seeds) else None


def extended_grid(runs, method, seeds, args):
    """`method`'s calibration grid, extended by factors of 2 while its best rho is at an edge.

    Best: the highest mean test accuracy over `seeds` (the same seeds for every
    rho, so this is the highest mean gain over SGD, paired). An extension is
    only decided when every grid point has all of `seeds`. A rho whose mean is
    more than `COLLAPSE` points below SGD's ends the grid: larger ones are not
    run (in this regime a larger rho only under-fits more; the grid then grows
    at its lower edge, keeping 3 points at least).
    """
    grid = sorted(args.rhos or GRIDS.get(METHODS[method].cheap or method, (args.rho,)))
    if len(grid) < 2:
        return grid
    sgd = mean_accuracy(runs, "sgd", 0.0, seeds)
    for extensions in range(MAX_EXTENSIONS + 1):
        means = []
        for rho in grid:
            means.append(mean_accuracy(runs, method, rho, seeds))
            if sgd is not None and means[-1] is not None and means[-1] < sgd - COLLAPSE / 100:
                grid = grid[: len(means)]
                break
        if None in means:
            return grid
        best = int(np.argmax(means))
        if 0 < best < len(grid) - 1 or extensions == MAX_EXTENSIONS:
            return grid
        grid = [grid[0] / 2] + grid if best == 0 else grid + [grid[-1] * 2]
    return grid


def chosen_rho(runs, method, seeds, args):
    """The calibration choice: the grid's rho with the highest mean test accuracy over `seeds`.

    None until every point of the (extended) grid has all of `seeds`.
    """
    if method == "sgd":
        return 0.0
    means = {
        rho: mean_accuracy(runs, method, rho, seeds)
        for rho in extended_grid(runs, method, seeds, args)
    }
    if None in means.values():
        return None
    return max(means, key=means.get)


def calibration_grids(saved_args):
    """The grids a calibration file ran, its own `--rhos` / `--rho`, for `extended_grid`."""
    return argparse.Namespace(rhos=saved_args.get("rhos"), rho=float(saved_args["rho"]))


# ------------------------------------------------------------------ cost
def step_cost(record, timing):
    """The run's training seconds ÷ those of as many SGD steps, from the per-kind medians.

    Training seconds: each step kind's count × its median time, plus the mask
    updates × the median update (an SSAM-F refresh draws Ns per-example
    gradients). None when a kind or the updates were not timed.
    """
    kinds = timing["seconds_per_step"]
    method = record["method"]
    if method not in kinds or "sgd" not in kinds:
        return None
    counts = record["step_counts"]
    if any(k not in kinds[method] for k, n in counts.items() if n):
        return None
    seconds = sum(n * kinds[method][k] for k, n in counts.items() if n)
    if record.get("mask_updates"):
        per_update = timing.get("seconds_per_mask_update", {}).get(method)
        if per_update is None:
            return None
        seconds += record["mask_updates"] * per_update
    return seconds / (sum(counts.values()) * kinds["sgd"]["one_pass"])
