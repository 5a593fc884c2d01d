"""Where a step's time goes: a profile of each step kind next to plain Keras (issue 30).

    python benchmarks/step_profile.py capture --model mlp --xla off --logdir /tmp/prof
    python benchmarks/step_profile.py summarize --logdir /tmp/prof    # needs `pip install xprof`

`capture` builds each configuration of `benchmarks/step_cost.py` (the same
models, recipes and data), trains one untimed window to trace and compile
the step, then profiles `--steps` steps of `fit` with TensorFlow's profiler,
one configuration after another, each in its own run directory.

`summarize` reads those runs with XProf (the profiler behind TensorBoard's
Profile tab; `xprof` installs its converter) and prints, per configuration,
the host's self time per step by TensorFlow op type (`framework_op_stats`),
the top contributors with their share of the step, and what each op type
adds to plain Keras' step. XProf is not a dependency of keras-ssam and need
not share its environment: `summarize` imports no TensorFlow.
"""

import argparse
import collections
import glob
import json
import os


def capture(args):
    import step_cost
    import tensorflow as tf

    unknown = sorted(set(args.configs) - set(step_cost.CONFIGS))
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; choose from {list(step_cost.CONFIGS)}")
    shape, batch = step_cost.SIZES[args.model]
    x, y, data = step_cost.synthetic_data(shape, batch, args.steps)
    xla = args.xla == "on"
    for name in args.configs:
        model = step_cost.build(name, args.model, x, y, 10 * args.steps, xla)
        model.fit(data, epochs=1, verbose=0)  # traces and compiles; not profiled
        logdir = os.path.join(args.logdir, _slug(name))
        tf.profiler.experimental.start(logdir)
        model.fit(data, epochs=1, verbose=0)
        tf.profiler.experimental.stop()
        with open(os.path.join(logdir, "run.json"), "w") as f:
            json.dump({"config": name, "model": args.model, "xla": xla, "steps": args.steps}, f)
        print(f"profiled {name}: {logdir}", flush=True)


def _slug(name):
    return name.replace(" ", "_")


def op_stats(logdir):
    """`{op type: host self time in microseconds}` of the run in `logdir`, from XProf."""
    from xprof.convert import raw_to_tool_data

    paths = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    if len(paths) != 1:
        raise SystemExit(f"{logdir}: expected one profile, found {paths}")
    data, _ = raw_to_tool_data.xspace_to_tool_data(paths, "framework_op_stats", {})
    table = json.loads(data)
    table = table[0] if isinstance(table, list) else table
    columns = [c["id"] for c in table["cols"]]
    totals = collections.Counter()
    for row in table["rows"]:
        cells = dict(zip(columns, (c["v"] for c in row["c"])))
        if cells["host_or_device"] == "Host":
            totals[cells["type"]] += cells["total_self_time"]
    return totals


def summarize(args):
    runs = {}
    for path in sorted(glob.glob(os.path.join(args.logdir, "*", "run.json"))):
        with open(path) as f:
            run = json.load(f)
        per_step = {k: v / run["steps"] for k, v in op_stats(os.path.dirname(path)).items()}
        runs[run["config"]] = per_step
    base = runs.get("keras sgd", {})
    base_total = _busy(base)
    for name, stats in runs.items():
        total = _busy(stats)
        print(
            f"\n{name}: ops' self time {total / 1000:.2f} ms/step ({total / base_total:.2f}x "
            f"Keras), threads idle {stats.get('IDLE', 0.0) / 1000:.2f} ms/step"
        )
        print(f"  {'op type':<28} {'us/step':>9} {'share':>6} {'vs Keras':>9}")
        ranked = sorted((kv for kv in stats.items() if kv[0] != "IDLE"), key=lambda kv: -kv[1])
        for op, us in ranked[: args.top]:
            print(f"  {op:<28} {us:>9.1f} {us / total:>6.1%} {us - base.get(op, 0.0):>+9.1f}")
        extra = {op: stats.get(op, 0.0) - base.get(op, 0.0) for op in set(stats) | set(base)}
        extra.pop("IDLE", None)
        grown = sorted(extra.items(), key=lambda kv: -kv[1])[:6]
        print("  largest additions: " + ", ".join(f"{op} {us:+.0f} us" for op, us in grown))


def _busy(stats):
    """Microseconds of ops per step; XProf books the threads' waits as the type `IDLE`."""
    return sum(us for op, us in stats.items() if op != "IDLE")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("capture", help="profile each configuration's steps (needs TensorFlow)")
    cap.add_argument("--model", default="mlp", choices=["mlp", "proxy_cnn", "resnet18"])
    cap.add_argument("--configs", nargs="+", default=["keras sgd", "rho 0", "looksam 5", "sam"])
    cap.add_argument("--xla", default="off", choices=["off", "on"])
    cap.add_argument("--steps", type=int, default=50, help="profiled steps per configuration")
    cap.add_argument("--logdir", required=True)
    summ = sub.add_parser("summarize", help="per-op self time per step (needs xprof)")
    summ.add_argument("--logdir", required=True)
    summ.add_argument("--top", type=int, default=10, help="op types listed per configuration")
    args = parser.parse_args(argv)
    capture(args) if args.command == "capture" else summarize(args)


if __name__ == "__main__":
    main()
