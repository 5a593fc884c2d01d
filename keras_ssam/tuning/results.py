"""`tuning.json`, its table and figure, and reading a chosen rho back (no KerasTuner)."""

import json
import os

from keras_ssam.tuning.methods import method_name

# What a chosen rho depends on: `rho_from` refuses a file tuned with other values.
CONTEXT = ("dataset", "model", "label_noise")


def chosen(rows, score="last"):
    """The best row by `val_accuracy_<score>`, ties to the smaller rho (None if no rows)."""
    key = f"val_accuracy_{score}"
    if not rows:
        return None
    return max(rows, key=lambda row: (row[key], -row["rho"]))


def write(result, out):
    """Writes `out/tuning.json`, `out/tuning.png` (when matplotlib is there) and
    `out/tuning.txt` (the table); returns the table."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tuning.json"), "w") as f:
        json.dump(result, f, indent=2)
    text = table(result)
    with open(os.path.join(out, "tuning.txt"), "w") as f:
        f.write(text + "\n")
    try:
        plot(result, os.path.join(out, "tuning.png"))
    except ImportError:
        pass
    return text


def read(path):
    """A `tuning.json` as written by `write`."""
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--rho-from {path}: not a readable tuning.json ({err}).") from None
    if not isinstance(result, dict) or "methods" not in result:
        raise ValueError(f"--rho-from {path}: not a tuning.json of `keras-ssam tune`.")
    return result


def table(result):
    """One line per trial, the chosen point of each method marked `*`."""
    score = result["score"]
    lines = [
        f"{'method':<12}{'rho':>9}{'alpha':>7}{'K':>4}{'val last':>10}{'val best':>10}"
        f"{'best ep':>9}",
        "-" * 61,
    ]
    for method, entry in result["methods"].items():
        pick = entry["chosen"]
        for row in sorted(entry["trials"], key=lambda r: (r["rho"], r["alpha"] or 0)):
            mark = " *" if pick is not None and row["trial"] == pick["trial"] else ""
            alpha = "" if row["alpha"] is None else f"{row['alpha']:g}"
            interval = "" if row["interval"] is None else str(row["interval"])
            lines.append(
                f"{method:<12}{row['rho']:>9g}{alpha:>7}{interval:>4}"
                f"{row['val_accuracy_last']:>10.4f}{row['val_accuracy_best']:>10.4f}"
                f"{int(row['best_epoch']) + 1:>9}{mark}"
            )
    lines.append(f"* chosen by the validation accuracy of the {score} epoch")
    return "\n".join(lines)


def plot(result, path):
    """Validation accuracy against rho per method (log axis), the chosen point circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = f"val_accuracy_{result['score']}"
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, entry in result["methods"].items():
        rows = sorted(entry["trials"], key=lambda r: r["rho"])
        if not rows or method == "sgd":
            continue
        (line,) = ax.plot([r["rho"] for r in rows], [r[key] for r in rows], "o-", label=method)
        pick = entry["chosen"]
        ax.plot(pick["rho"], pick[key], "o", ms=14, mfc="none", color=line.get_color())
    if "sgd" in result["methods"] and result["methods"]["sgd"]["chosen"]:
        ax.axhline(result["methods"]["sgd"]["chosen"][key], color="gray", ls="--", label="sgd")
    ax.set_xscale("log")
    ax.set_xlabel("rho")
    ax.set_ylabel(f"validation accuracy ({result['score']} epoch)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rho_from(path, args):
    """The rho `path` chose for the method and data of `keras-ssam train` `args`.

    Raises a `ValueError` naming the mismatch if the file was tuned for another
    method, dataset, model or label noise, or for another alpha or interval.
    """
    result = read(path)
    method = method_name(args.optimizer, args.sam_interval, args.between, args.ascent)
    entry = result["methods"].get(method)
    if entry is None or entry["chosen"] is None:
        raise ValueError(
            f"--rho-from {path}: tuned {', '.join(result['methods'])}, not "
            f"{method} (the method these flags train)."
        )
    for field in CONTEXT:
        want, have = result["context"].get(field), getattr(args, field)
        if want != have:
            raise ValueError(
                f"--rho-from {path}: tuned with --{field.replace('_', '-')} "
                f"{want}, this run has {have}."
            )
    pick = entry["chosen"]
    for field, flag, have in (
        ("alpha", "--alpha", args.alpha),
        ("interval", "--sam-interval", args.sam_interval),
    ):
        if pick[field] is not None and pick[field] != have:
            raise ValueError(
                f"--rho-from {path}: {method}'s rho was chosen at {flag} "
                f"{pick[field]:g}; pass {flag} {pick[field]:g}."
            )
    return float(pick["rho"])
