"""PNG figures for the analysis results (needs the `plots` extra: matplotlib)."""

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("Plots need matplotlib: pip install 'keras-ssam[plots]'.") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_landscape(result, path, title="Loss landscape"):
    """1-D: loss and accuracy along the line; 2-D: contour map and 3-D surface."""
    plt = _pyplot()
    coords, loss = result["coords"], np.asarray(result["loss"])
    if loss.ndim == 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(coords, loss, "o-", color="tab:blue")
        ax.set_xlabel("step along the direction")
        ax.set_ylabel("loss", color="tab:blue")
        acc = ax.twinx()
        acc.plot(coords, np.asarray(result["accuracy"]) * 100, "s--", color="tab:orange")
        acc.set_ylabel("accuracy (%)", color="tab:orange")
    else:
        fig = plt.figure(figsize=(12, 5))
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
    return _save(plt, fig, path)


def plot_eigenvalues(result, path, title="Top Hessian eigenvalues"):
    plt = _pyplot()
    values = result["eigenvalues"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([f"λ{i + 1}" for i in range(len(values))], values, color="tab:blue")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"{title}  (λ1/λ{len(values)} = {result['ratio']:.2f})")
    return _save(plt, fig, path)


def plot_gradient_difference(result, path, title="|g_SAM − g_SGD| / |g_SGD|"):
    plt = _pyplot()
    edges, hist = result["bin_edges"], result["hist"]
    fig, ax = plt.subplots(figsize=(6, 4))
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
    return _save(plt, fig, path)
