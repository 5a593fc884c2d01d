"""PNG figures for the analysis results (needs the `plots` extra: matplotlib).

The figures are drawn on `matplotlib.figure.Figure` objects with their own
Agg canvas: `matplotlib.pyplot` is never imported, so the caller's backend,
its open figures and its pyplot state are left alone (in a notebook, in a
GUI application, or in a script that set another backend).
"""

import numpy as np


def _figure(**kwargs):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("Plots need matplotlib: pip install 'keras-ssam[plots]'.") from err
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_landscape(result, path, title="Loss landscape"):
    """Writes a loss landscape figure.

    1-D: loss (and accuracy, when `result["accuracy"]` is not `None`) along
    the line; 2-D: contour map and 3-D surface of the loss.

    Args:
        result: The dict returned by `keras_ssam.analysis.loss_landscape`.
        path: String. Where to write the PNG.
        title: String. Figure title. Defaults to `"Loss landscape"`.

    Returns:
        `path`.
    """
    coords, loss = result["coords"], np.asarray(result["loss"])
    accuracy = result.get("accuracy")
    if loss.ndim == 1:
        fig = _figure(figsize=(6, 4))
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(coords, loss, "o-", color="tab:blue")
        ax.set_xlabel("step along the direction")
        ax.set_ylabel("loss", color="tab:blue")
        if accuracy is not None:
            acc = ax.twinx()
            acc.plot(coords, np.asarray(accuracy) * 100, "s--", color="tab:orange")
            acc.set_ylabel("accuracy (%)", color="tab:orange")
    else:
        fig = _figure(figsize=(12, 5))
        ax = fig.add_subplot(1, 2, 1)
        a, b = np.meshgrid(coords, coords, indexing="ij")
        contour = ax.contour(a, b, loss, levels=20, cmap="viridis")
        ax.clabel(contour, inline=True, fontsize=7)
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        surface = fig.add_subplot(1, 2, 2, projection="3d")
        surface.plot_surface(a, b, loss, cmap="viridis", linewidth=0)
        surface.set_zlabel("loss")
    fig.suptitle(title)
    return _save(fig, path)


def plot_eigenvalues(result, path, title="Top Hessian eigenvalues"):
    """Writes a bar chart of the top Hessian eigenvalues.

    Args:
        result: The dict returned by `keras_ssam.analysis.hessian_eigenvalues`.
        path: String. Where to write the PNG.
        title: String. Figure title. Defaults to `"Top Hessian eigenvalues"`.

    Returns:
        `path`.
    """
    values = result["eigenvalues"]
    fig = _figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar([f"λ{i + 1}" for i in range(len(values))], values, color="tab:blue")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"{title}  (λ1/λ{len(values)} = {result['ratio']:.2f})")
    return _save(fig, path)


def plot_gradient_difference(result, path, title="|g_SAM − g_SGD| / |g_SGD|"):
    """Writes the histogram of the SAM-vs-SGD relative gradient difference.

    Args:
        result: The dict returned by `keras_ssam.analysis.gradient_difference`.
        path: String. Where to write the PNG.
        title: String. Figure title. Defaults to `"|g_SAM − g_SGD| / |g_SGD|"`.

    Returns:
        `path`.
    """
    edges, hist = np.asarray(result["bin_edges"]), np.asarray(result["hist"])
    fig = _figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(
        edges[:-1],
        hist / max(hist.sum(), 1) * 100,
        width=np.diff(edges),
        align="edge",
        color="tab:green",
    )
    ax.axvline(0.0, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("log10 relative difference")
    ax.set_ylabel("parameters (%)")
    ax.set_title(f"{title}: median {result['median']:.3g}")
    return _save(fig, path)
