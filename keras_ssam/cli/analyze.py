"""`keras-ssam analyze`: Hessian spectrum, loss landscape, gradient difference of a model file."""

import json
import os
import time

from keras_ssam_cli.parser import fail


def _first_examples(batches, count, batch_size):
    if count is None:
        return batches
    if count < 1:
        fail(f"--hessian-examples must be >= 1; received {count}.")
    return batches.unbatch().take(count).batch(batch_size)


def _load(args):
    """The model and the analysed batches (every pass reads the same examples in order)."""
    import keras

    import keras_ssam  # noqa: F401  (registers the SSAM classes for loading)
    from keras_ssam.experiments import data

    model = keras.models.load_model(args.model)
    train_ds, test_ds, info = data.load(
        args.dataset,
        args.data_dir,
        args.batch_size,
        args.seed,
        augment=False,
        drop_remainder=False,
        train_limit=args.num_examples,
        test_limit=args.num_examples,
    )
    # Every pass of an analysis (each Hessian-vector product) reads the same
    # examples in the same order: the training stream stays at epoch 0.
    info.follow.assign(1)
    return model, train_ds if args.split == "train" else test_ds


def _hessian(args, model, batches):
    from keras_ssam import analysis
    from keras_ssam.analysis import plots

    start = time.perf_counter()
    result = analysis.hessian_eigenvalues(
        model,
        _first_examples(batches, args.hessian_examples, args.batch_size),
        top_k=args.top_k,
        max_iter=args.max_iter,
        tol=args.tol,
        trace_samples=args.trace_samples,
        seed=args.seed,
        method=args.method,
        hvp_mode=args.hvp_mode,
    )
    report = dict(result, seconds=time.perf_counter() - start)
    plots.plot_eigenvalues(result, os.path.join(args.out, "eigenvalues.png"))
    return report


def _landscape(args, model, batches):
    import numpy as np

    from keras_ssam import analysis
    from keras_ssam.analysis import plots

    start = time.perf_counter()
    result = analysis.loss_landscape(
        model,
        batches,
        resolution=args.resolution,
        span=tuple(args.span),
        dims=args.dims,
        seed=args.seed,
    )
    plots.plot_landscape(result, os.path.join(args.out, f"landscape_{args.dims}d.png"))
    report = {k: np.asarray(v).tolist() for k, v in result.items() if k != "directions"}
    return dict(report, seconds=time.perf_counter() - start)


def _grad_diff(args, model, batches):
    import numpy as np

    from keras_ssam import analysis
    from keras_ssam.analysis import plots

    start = time.perf_counter()
    result = analysis.gradient_difference(model, batches, rho=args.rho)
    plots.plot_gradient_difference(result, os.path.join(args.out, "grad_diff.png"))
    report = {k: np.asarray(v).tolist() for k, v in result.items() if k != "ratio"}
    return dict(report, seconds=time.perf_counter() - start)


ANALYSES = (
    ("hessian", "hessian", _hessian),
    ("landscape", "landscape", _landscape),
    ("grad_diff", "gradient_difference", _grad_diff),
)


def analyze(args):
    """Runs the requested analyses; writes analysis.json and PNG figures."""
    if not (args.hessian or args.landscape or args.grad_diff):
        fail("choose at least one of --hessian, --landscape, --grad-diff.")
    if not os.path.isfile(args.model):
        fail(f"no model file at {args.model!r}.")
    model, batches = _load(args)
    os.makedirs(args.out, exist_ok=True)
    report = {"model": args.model, "dataset": args.dataset, "split": args.split}
    for flag, key, run in ANALYSES:
        if getattr(args, flag):
            report[key] = run(args, model, batches)
    with open(os.path.join(args.out, "analysis.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"analysis written to {args.out}")
    return report
