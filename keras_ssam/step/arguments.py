"""Eager checks of `SSAMModel`'s arguments: a clear error naming the argument and value."""

import math
import numbers

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
