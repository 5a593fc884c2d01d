"""The evidence table from `evidence.py`'s records: paired gains, share of SAM's gain, cost.

Every number here is recomputed from the records (one per method, seed and
rho) and the per-seed step-kind timings, so a table can be rebuilt from the
JSON alone:

    python benchmarks/evidence_report.py docs/evidence-heldout.json [--figure PNG]

Several files of the same budget on disjoint seeds are pooled into one table.
"""

import argparse
import math
import os
from collections import Counter

import numpy as np
from evidence_spec import (  # a sibling script in benchmarks/
    BUDGET_ARGS,
    LABELS,
    calibration_grids,
    chosen_rho,
    read,
    step_cost,
)

BOOTSTRAP = 10_000


def mean_std(values):
    values = np.asarray(values, float)
    if not len(values):
        return None, None
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def group_name(method, rho):
    return f"{method}@{rho:g}"


def groups(runs):
    """`{(method, rho): {seed: record}}`."""
    out = {}
    for r in runs:
        out.setdefault((r["method"], r["rho"]), {})[r["seed"]] = r
    return out


def reference_sam(grouped, chosen):
    """The SAM group gains are shared against: the chosen rho, else the best mean accuracy."""
    if "sam" in chosen and ("sam", chosen["sam"]) in grouped:
        return grouped[("sam", chosen["sam"])]
    sams = {k: v for k, v in grouped.items() if k[0] == "sam"}
    if not sams:
        return {}
    return max(sams.values(), key=lambda g: np.mean([r["test_accuracy"] for r in g.values()]))


def share_of_gain(gains, sam_gains, rng):
    """Mean paired gain over SGD ÷ SAM's, with a 95 % bootstrap interval over seeds.

    Resampling whole seeds keeps each seed's method and SAM gains together; a
    per-seed ratio is not used because it blows up where SAM's gain is near 0.
    """
    gains, sam_gains = np.asarray(gains, float), np.asarray(sam_gains, float)
    share = float(gains.mean() / sam_gains.mean()) if sam_gains.mean() else math.nan
    if len(gains) < 2:
        return share, None
    idx = rng.integers(0, len(gains), (BOOTSTRAP, len(gains)))
    denominators = sam_gains[idx].mean(1)
    ok = denominators > 0  # a resample where SAM gains nothing has no share
    ratios = gains[idx].mean(1)[ok] / denominators[ok]
    return share, [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))]


def merge(results, budget_args):
    """One result from several files of the same experiment on disjoint seeds.

    Pooling seeds across files (e.g. held-out seeds 3–7 and a replication on
    8–12) is only meaningful when every file ran the same budget at the same
    chosen rhos, so anything else is refused rather than averaged.
    """
    first = results[0]
    merged = {"args": first["args"], "runs": [], "timing": [], "chosen_rho": {}}
    for result in results:
        changed = [k for k in budget_args if result["args"].get(k) != first["args"].get(k)]
        if changed:
            raise ValueError(f"files of different budgets cannot be pooled: {changed} differ")
        for method, rho in result.get("chosen_rho", {}).items():
            if merged["chosen_rho"].setdefault(method, rho) != rho:
                raise ValueError(
                    f"{method!r} was run at rho {merged['chosen_rho'][method]} and at {rho}"
                )
        merged["runs"] += result["runs"]
        merged["timing"] += [t for t in result["timing"] if "rhos" in t]
    keys = Counter((r["method"], r["seed"], r["rho"]) for r in merged["runs"])
    keys.update(("timing", t["seed"]) for t in merged["timing"])
    twice = sorted(k for k, n in keys.items() if n > 1)
    if twice:
        raise ValueError(f"records found in more than one file: {twice}")
    return merged


def summarize(result):
    """Per (method, rho): accuracies, paired gains over SGD, share of SAM's gain, cost."""
    grouped = groups(result["runs"])
    chosen = result.get("chosen_rho", {})
    sgd = next((g for (m, _), g in grouped.items() if m == "sgd"), {})
    sam = reference_sam(grouped, chosen)
    timings = {t["seed"]: t for t in result["timing"] if "rhos" in t}
    out = {}
    for (method, rho), by_seed in sorted(grouped.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        seeds = sorted(by_seed)
        picked = [by_seed[s] for s in seeds]
        paired = [s for s in seeds if s in sgd]
        gains = [100 * (by_seed[s]["test_accuracy"] - sgd[s]["test_accuracy"]) for s in paired]
        both = [s for s in paired if s in sam]
        share, interval = (None, None)
        if both and method != "sgd":
            # One generator per row: a row's interval does not move when rows are added.
            rng = np.random.default_rng(0)
            share, interval = share_of_gain(
                [100 * (by_seed[s]["test_accuracy"] - sgd[s]["test_accuracy"]) for s in both],
                [100 * (sam[s]["test_accuracy"] - sgd[s]["test_accuracy"]) for s in both],
                rng,
            )
        costs = [step_cost(by_seed[s], timings[s]) for s in seeds if s in timings]
        costs = [c for c in costs if c is not None]
        fit = [by_seed[s]["seconds"] / sgd[s]["seconds"] for s in paired]
        sam_share = [100 * r["step_counts"].get("sam", 0) / r["steps"] for r in picked]
        hessian = [r["hessian_top"] for r in picked if r.get("hessian_top") is not None]
        row = {
            "method": method,
            "rho": rho,
            "chosen": chosen.get(method) == rho,
            "seeds": seeds,
            "test_accuracy": [100 * r["test_accuracy"] for r in picked],
            "gain_over_sgd": gains,
            "share_of_sam_gain": share,
            "share_interval": interval,
            "share_seeds": both,
            "sam_steps_percent_mean": mean_std(sam_share)[0],
            "cost_ratio": costs,
            "fit_time_ratio": fit,
            "train_accuracy_mean": mean_std([100 * r["train_accuracy"] for r in picked])[0],
            "non_finite_steps": sum(r.get("non_finite_steps", 0) for r in picked),
            "minutes_per_run": float(np.mean([r["seconds"] for r in picked]) / 60),
        }
        for name, values in (
            ("test_accuracy", row["test_accuracy"]),
            ("gain_over_sgd", gains),
            ("cost_ratio", costs),
            ("fit_time_ratio", fit),
            ("hessian_top", hessian),
        ):
            row[name + "_mean"], row[name + "_std"] = mean_std(values)
        sup = [r["support"] for r in picked if r.get("support")]
        if sup:
            row["density_mean"] = float(np.mean([s["density"] for s in sup]))
            row["support_fraction_mean"] = float(np.mean([s["support_fraction"] for s in sup]))
        out[group_name(method, rho)] = row
    return out


def _fmt(mean, std, digits=2, signed=False):
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:{'+' if signed else ''}.{digits}f} ± {std:.{digits}f}"


def _share(row):
    if row["share_of_sam_gain"] is None or math.isnan(row["share_of_sam_gain"]):
        return "—"
    text = f"{round(100 * row['share_of_sam_gain'])} %"  # round(): no "-0"
    if row["share_interval"]:
        low, high = row["share_interval"]
        text += f" [{round(100 * low)}, {round(100 * high)}]"
    return text


def table(summary, labels, chosen_only=None):
    """Markdown rows: each method's chosen rho if the file has choices, else every (method, rho)."""
    rows = list(summary.values())
    if chosen_only is None:
        chosen_only = any(r["chosen"] for r in rows)
    if chosen_only:
        rows = [r for r in rows if r["chosen"]]
    order = list(labels)
    rows.sort(key=lambda r: (order.index(r["method"]) if r["method"] in order else 99, r["rho"]))
    lines = [
        "| method | rho | test acc. % | per seed | gain over SGD, paired | share of SAM's gain "
        "[95 % bootstrap] | train acc. % (noisy labels) | cost ÷ SGD (step kinds) "
        "| fit time ÷ SGD | SAM steps % | top Hessian eigenvalue |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sgd = r["method"] == "sgd"
        gain = _fmt(r["gain_over_sgd_mean"], r["gain_over_sgd_std"], signed=True)
        lines.append(
            f"| {labels.get(r['method'], r['method'])} | {'—' if sgd else format(r['rho'], 'g')}"
            f" | {_fmt(r['test_accuracy_mean'], r['test_accuracy_std'])}"
            f" | {' / '.join(f'{a:.1f}' for a in r['test_accuracy'])}"
            f" | {'—' if sgd else gain}"
            f" | {'—' if sgd else _share(r)}"
            f" | {r['train_accuracy_mean']:.1f}"
            f" | {_fmt(r['cost_ratio_mean'], r['cost_ratio_std'])}"
            f" | {_fmt(r['fit_time_ratio_mean'], r['fit_time_ratio_std'])}"
            f" | {r['sam_steps_percent_mean']:.0f}"
            f" | {_fmt(r['hessian_top_mean'], r['hessian_top_std'], 1)} |"
        )
    return "\n".join(lines)


def grid_table(summary, labels, chosen=None):
    """Markdown: every (method, rho) of a calibration file, with the choice marked.

    `chosen`: `{method: rho}` (e.g. from `evidence_spec.chosen_rho`); the chosen row is bold.
    """
    chosen = chosen or {}
    order = list(labels)
    rows = sorted(
        summary.values(),
        key=lambda r: (order.index(r["method"]) if r["method"] in order else 99, r["rho"]),
    )
    lines = [
        "| method | rho | test acc. % per seed | gain over SGD, paired | train acc. % "
        "| SAM steps % | non-finite steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["method"] == "sgd":
            continue
        mark = "**" if chosen.get(r["method"]) == r["rho"] else ""
        lines.append(
            f"| {labels.get(r['method'], r['method'])} | {mark}{r['rho']:g}{mark}"
            f" | {' / '.join(f'{a:.1f}' for a in r['test_accuracy'])}"
            f" | {mark}{_fmt(r['gain_over_sgd_mean'], r['gain_over_sgd_std'], signed=True)}{mark}"
            f" | {r['train_accuracy_mean']:.1f} | {r['sam_steps_percent_mean']:.0f}"
            f" | {r['non_finite_steps']} |"
        )
    return "\n".join(lines)


def figure(summary, labels, path, title=None):
    """Paired gain over SGD against cost ÷ SGD, one point per chosen method, ± std bars."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rows = [r for r in summary.values() if r["chosen"]] or list(summary.values())
    sam = next((r for r in rows if r["method"] == "sam"), None)
    rows = [r for r in rows if None not in (r["cost_ratio_mean"], r["gain_over_sgd_mean"])]
    for i, r in enumerate(rows):
        # The default colour cycle has 10 colours and the table more rows; tab20
        # has 20, in dark/light pairs, so the dark ones come first.
        color = colormaps["tab20"]((2 * i) % 20 + (i // 10) % 2)
        ax.errorbar(
            r["cost_ratio_mean"],
            r["gain_over_sgd_mean"] if r["method"] != "sgd" else 0.0,
            xerr=r["cost_ratio_std"],
            yerr=r["gain_over_sgd_std"],
            fmt="o" if "+" not in r["method"] else "s",
            color=color,
            capsize=3,
            label=f"{labels.get(r['method'], r['method'])} (rho {r['rho']:g})",
        )
    if sam and sam["gain_over_sgd_mean"] is not None:
        ax.axhline(0.8 * sam["gain_over_sgd_mean"], color="grey", ls="--", lw=1)
        line = 0.8 * sam["gain_over_sgd_mean"]
        ax.text(1.0, line, " 80 % of SAM's gain", va="bottom", fontsize=7)
    ax.axvline(1.25, color="grey", ls=":", lw=1)
    ax.set_xlabel("cost ÷ SGD (median time of each step kind × the run's count, + mask refreshes)")
    ax.set_ylabel("test accuracy gain over SGD, points (paired)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", nargs="+", help="one file, or several with disjoint seeds")
    parser.add_argument("--figure", default=None)
    parser.add_argument("--title", default=None)
    parser.add_argument("--all", action="store_true", help="every (method, rho), not the chosen")
    parser.add_argument(
        "--grid", action="store_true", help="a calibration file's grid, with each choice"
    )
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods")
    args = parser.parse_args(argv)
    result = merge([read(path) for path in args.json], BUDGET_ARGS)
    if args.methods:
        result["runs"] = [r for r in result["runs"] if r["method"] in args.methods]
    summary = summarize(result)
    if args.grid:
        seeds = sorted({r["seed"] for r in result["runs"]})
        grids = calibration_grids(result["args"])
        methods = sorted({r["method"] for r in result["runs"]})
        chosen = {m: chosen_rho(result["runs"], m, seeds, grids) for m in methods}
        print(grid_table(summary, LABELS, chosen))
        return
    print(table(summary, LABELS, chosen_only=False if args.all else None))
    if args.figure:
        print("wrote", figure(summary, LABELS, args.figure, args.title))


if __name__ == "__main__":
    main()
