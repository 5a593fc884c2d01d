"""Eager checks of `SSAMModel`'s arguments: a clear error naming the argument and value."""

import math
import numbers

from keras_ssam.gradient_norm_trigger import GradientNormTrigger
from keras_ssam.perturbation import NORM_SCOPES

PERTURBATIONS = ("global", "local")
NON_FINITE = ("skip", "stop")
BETWEEN = ("sgd", "looksam")
ASCENTS = ("gradient", "momentum")


def check_rho(rho):
    """Returns `rho` as a float after checking it is a finite number >= 0."""
    return check_non_negative("rho", rho)


def check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}; received {name}={value!r}.")


def check_flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool; received {name}={value!r}.")


def check_non_negative(name, value):
    """Returns `value` as a float after checking it is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a float; received {name}={value!r}.")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0; received {name}={value!r}.")
    return float(value)


def check_positive_int(name, value):
    """Returns `value` as an int after checking it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1; received {name}={value!r}.")
    return int(value)


def check_arguments(**arguments):
    """`SSAMModel`'s arguments, checked eagerly and normalized (floats, ints).

    Returns:
        A dict with the same keys; raises a `ValueError`/`TypeError` naming the
        argument and the value received otherwise.
    """
    a = dict(arguments)
    a["rho"] = check_rho(a["rho"])
    for name, allowed in (
        ("norm_scope", NORM_SCOPES),
        ("perturbation", PERTURBATIONS),
        ("non_finite", NON_FINITE),
        ("between", BETWEEN),
        ("ascent", ASCENTS),
    ):
        check_choice(name, a[name], allowed)
    for name in ("adaptive", "reuse_activations"):
        check_flag(name, a[name])
    for name in ("eta", "epsilon", "coupled_weight_decay", "alpha", "momentum"):
        a[name] = check_non_negative(name, a[name])
    for name in ("num_batch_splits", "interval"):
        a[name] = check_positive_int(name, a[name])
    _check_step_kinds(a, GradientNormTrigger)
    return a


def _check_step_kinds(a, trigger_class):
    """The combinations of interval, trigger, LookSAM and momentum ascent."""
    interval, trigger = a["interval"], a["trigger"]
    if trigger is not None and not isinstance(trigger, trigger_class):
        raise TypeError(
            "`trigger` must be a `keras_ssam.GradientNormTrigger` or None; "
            f"received trigger={trigger!r}."
        )
    if trigger is not None and interval > 1:
        raise ValueError(
            "`interval` and `trigger` both choose the SAM steps: pass one of them; "
            f"received interval={interval!r} and trigger={trigger!r}."
        )
    if a["momentum"] >= 1.0:
        raise ValueError(f"`momentum` must be in [0, 1); received momentum={a['momentum']!r}.")
    if a["ascent"] == "momentum" and (
        interval > 1 or trigger is not None or a["between"] != "sgd" or a["num_batch_splits"] > 1
    ):
        raise ValueError(
            "`ascent='momentum'` takes no SAM steps to choose between and one pass per "
            "batch: it does not combine with `interval`, `trigger`, `between` or "
            f"`num_batch_splits`; received interval={interval!r}, trigger={trigger!r}, "
            f"between={a['between']!r}, num_batch_splits={a['num_batch_splits']!r}."
        )
    if a["between"] == "looksam" and interval == 1 and trigger is None:
        raise ValueError(
            "`between='looksam'` needs steps between SAM steps: set `interval > 1` or a "
            "`trigger`; received interval=1 and trigger=None."
        )
