"""The methods `keras-ssam tune` searches: a recipe method and its cheap-step arguments."""

# name -> (keras_ssam.experiments.recipes method, SSAMModel cheap-step arguments).
# looksam and interval take their interval (and LookSAM its alpha) from the search.
TUNED_METHODS = {
    "sgd": ("sgd", {}),
    "sam": ("sam", {}),
    "ssam-f": ("ssam-f", {}),
    "ssam-d": ("ssam-d", {}),
    "ssam-random": ("ssam-random", {}),
    "structured": ("structured", {}),
    "looksam": ("sam", {"between": "looksam"}),
    "momentum": ("sam", {"ascent": "momentum"}),
    "interval": ("sam", {}),
}
USES_INTERVAL = ("looksam", "interval")
USES_ALPHA = ("looksam",)


def recipe_arguments(method, rho, alpha=None, interval=None):
    """`(recipes method, keyword arguments)` of a tuned method at one point of its grid."""
    if method not in TUNED_METHODS:
        raise ValueError(
            f"`method` must be one of {tuple(TUNED_METHODS)}; received method={method!r}."
        )
    kind, cheap = TUNED_METHODS[method]
    kwargs = dict(cheap, rho=rho)
    if method in USES_INTERVAL:
        kwargs["interval"] = interval
    if method in USES_ALPHA:
        kwargs["alpha"] = alpha
    return kind, kwargs


def method_name(optimizer, sam_interval=1, between="sgd", ascent="gradient"):
    """The tuned method that `keras-ssam train`'s flags run (e.g. `"momentum"`), or a
    name no tuning covers (e.g. `"ssam-f+momentum"`)."""
    cheap = None
    if ascent == "momentum":
        cheap = "momentum"
    elif between == "looksam":
        cheap = "looksam"
    elif sam_interval > 1:
        cheap = "interval"
    if cheap is None:
        return optimizer
    return cheap if optimizer == "sam" else f"{optimizer}+{cheap}"
