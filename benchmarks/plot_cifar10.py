"""Figures for `benchmarks/cifar10.py` results (also usable on a partial run).

    python benchmarks/plot_cifar10.py runs/cifar10-benchmark.json docs/figures

Writes accuracy vs sparsity (the paper's Fig. 3), training curves (Fig. 2)
and sharpness L(w + e) - L(w) over training, each as mean ± std over seeds.
"""

import json
import os
import sys

import numpy as np

COLORS = {"sgd": "tab:gray", "sam": "tab:blue", "ssam-f": "tab:green", "ssam-d": "tab:red"}


def _figure(**kwargs):
    # A Figure with its own Agg canvas: the caller's matplotlib backend and
    # pyplot state stay as they were (cifar10.py imports this module).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _groups(runs):
    groups = {}
    for r in runs:
        groups.setdefault((r["optimizer"], r["sparsity"]), []).append(r)
    return groups


def _label(optimizer, sparsity):
    return optimizer if sparsity is None else f"{optimizer} {int(round(sparsity * 100))}%"


def _stat(values):
    values = np.asarray(values, "float64") * 100
    return values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0


def accuracy_vs_sparsity(runs, ax):
    groups = _groups(runs)
    if ("sgd", None) in groups:
        mean, std = _stat([r["test_accuracy"] for r in groups[("sgd", None)]])
        ax.axhspan(mean - std, mean + std, color=COLORS["sgd"], alpha=0.2)
        ax.axhline(mean, color=COLORS["sgd"], label="SGD")
    sam = groups.get(("sam", None), [])
    for name in ("ssam-f", "ssam-d"):
        # SAM is the 0 %-sparsity end of both SSAM lines.
        points = [(0.0, sam)] if sam else []
        points += sorted((s, rs) for (o, s), rs in groups.items() if o == name)
        if len(points) < 2:
            continue
        stats = [_stat([r["test_accuracy"] for r in rs]) for _, rs in points]
        ax.errorbar(
            [s * 100 for s, _ in points],
            [m for m, _ in stats],
            yerr=[e for _, e in stats],
            marker="o",
            capsize=4,
            color=COLORS[name],
            label=name.upper(),
        )
    ax.set_xlabel("sparsity (% of weights not perturbed); 0 % = SAM")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()


def _curve(rs, key):
    epochs = [p["epoch"] for p in rs[0]["curve"] if key in p]
    values = [[p[key] for p in r["curve"] if key in p] for r in rs]
    values = np.asarray([v for v in values if len(v) == len(epochs)], "float64")
    return np.asarray(epochs), values.mean(0), values.std(0)


def curves(runs, ax, key, scale=100.0):
    for (optimizer, sparsity), rs in _groups(runs).items():
        if not all(any(key in p for p in r["curve"]) for r in rs):
            continue
        epochs, mean, std = _curve(rs, key)
        style = "-" if sparsity in (None, 0.5) else "--"
        color = COLORS[optimizer]
        ax.plot(
            epochs, mean * scale, style, marker=".", color=color, label=_label(optimizer, sparsity)
        )
        ax.fill_between(epochs, (mean - std) * scale, (mean + std) * scale, color=color, alpha=0.15)
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)


def plot_all(runs, folder):
    os.makedirs(folder, exist_ok=True)
    written = []
    fig = _figure(figsize=(6, 4))
    ax = fig.subplots()
    accuracy_vs_sparsity(runs, ax)
    ax.set_title("CIFAR-10 proxy: accuracy vs sparsity (mean ± std over seeds)")
    written.append(_save(fig, os.path.join(folder, "cifar10_accuracy_vs_sparsity.png")))

    fig = _figure(figsize=(12, 4))
    axes = fig.subplots(1, 2)
    curves(runs, axes[0], "train_accuracy")
    axes[0].set_ylabel("train accuracy (%, epoch mean)")
    curves(runs, axes[1], "test_accuracy")
    axes[1].set_ylabel("test accuracy (%, curve subset)")
    written.append(_save(fig, os.path.join(folder, "cifar10_training_curves.png")))

    fig = _figure(figsize=(6, 4))
    ax = fig.subplots()
    curves(runs, ax, "sharpness", scale=1.0)
    ax.set_ylabel("sharpness L(w+e) - L(w), epoch mean")
    written.append(_save(fig, os.path.join(folder, "cifar10_sharpness.png")))
    return written


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: plot_cifar10.py RESULTS.json OUT_FOLDER")
    with open(sys.argv[1]) as f:
        runs = json.load(f)["runs"]
    for path in plot_all(runs, sys.argv[2]):
        print("wrote", path)


if __name__ == "__main__":
    main()
