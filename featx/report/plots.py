"""Plots of a leaderboard and of a head's confusion matrix, written as PNG files.

matplotlib is imported when a plot is drawn, never with featx. The figures are drawn on
matplotlib's Agg canvas directly (no ``pyplot``): no global figure state, no GUI backend, safe in
threads and on machines without a display.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_leaderboard", "plot_confusion_matrix", "plot_embedding_map", "plot_depth"]

_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def _axes(width: float, height: float) -> tuple[Any, Any]:
    """A figure of that size (inches) on its own Agg canvas, and its one set of axes."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is a core dependency
        raise ImportError("featx's plots need matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _offsets(n: int, spread: float) -> np.ndarray:
    """Where ``n`` series sit around each position so they do not overlap (0 for one series)."""
    return np.linspace(-spread, spread, n) if n > 1 else np.zeros(1)


def _colour(k: int) -> str:
    return _COLOURS[k % len(_COLOURS)]


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def plot_leaderboard(
    boards: Any,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Plot tuned heads' scores: cross-validated mean ± std, and the test score.

    Parameters
    ----------
    boards : Leaderboard or mapping of name -> Leaderboard
        One leaderboard, or several on the same heads (e.g. ``{"MobileNet features": a,
        "raw pixels": b}``), drawn side by side per head in distinct colours.
    path : path
        The PNG file to write.
    title : str, optional

    Returns
    -------
    path : Path
    """
    named: Mapping[str, Any] = boards if isinstance(boards, Mapping) else {"": boards}
    first = next(iter(named.values()))
    # Heads in the order of the first board (best first), then any others.
    heads = list(dict.fromkeys(r.head for board in named.values() for r in board))
    n_sets = len(named)
    fig, ax = _axes(8.0, 1.2 + 0.55 * len(heads) * max(1, n_sets) ** 0.5 + 0.4 * n_sets)
    offsets = _offsets(n_sets, 0.18)
    lows: list[float] = []
    highs: list[float] = []
    for k, (name, board) in enumerate(named.items()):
        colour = _colour(k)
        results = {r.head: r for r in board}
        for j, head in enumerate(heads):
            r = results.get(head)
            if r is None:
                continue
            y = j + offsets[k]
            holdout = not np.isfinite(r.cv_std)  # one validation block: no spread to draw
            std = 0.0 if holdout else r.cv_std
            what = "validation" if holdout else "cv mean ± std"
            label_cv = f"{name}: {what}" if name else what
            ax.errorbar(r.cv_mean, y, xerr=std, fmt="o", color=colour, capsize=4,
                        label=label_cv if j == 0 else None)
            lows.append(r.cv_mean - std)
            highs.append(r.cv_mean + std)
            text = f"{'valid' if holdout else 'cv'} {r.cv_mean:.3f}"
            if r.test_score is not None:
                label_test = f"{name}: test" if name else "test"
                ax.plot(r.test_score, y, marker="D", color=colour, markerfacecolor="white",
                        linestyle="none", label=label_test if j == 0 else None)
                lows.append(r.test_score)
                highs.append(r.test_score)
                text += f", test {r.test_score:.3f}"
            ax.annotate(text, (max(r.cv_mean + std, r.test_score or 0), y),
                        xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(range(len(heads)), heads)
    ax.invert_yaxis()  # best at the top
    low = max(0.0, min(lows) - 0.03) if lows else 0.0
    high = max(highs) if highs else 1.0
    ax.set_xlim(low, high + (high - low) * 0.5)  # room for the value labels on the right
    scoring = getattr(first, "scoring", "score")
    ax.set_xlabel(f"{scoring} ({first.cv}-fold stratified cross-validation; test = held out)")
    ax.set_ylabel("head")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14 - 0.1 / max(len(heads), 1)),
              ncol=2, fontsize=8, frameon=False)
    ax.set_title(title or f"Tuned heads, best first ({first.n_train} training samples)")
    return _save(fig, path)


def plot_confusion_matrix(
    y_true: Any,
    y_pred: Any,
    path: str | os.PathLike[str],
    *,
    labels: Sequence[Any] | None = None,
    title: str | None = None,
) -> Path:
    """Plot a confusion matrix: counts in the cells, colour by the share of the true class.

    Parameters
    ----------
    y_true, y_pred : array-like
    path : path
        The PNG file to write.
    labels : sequence, optional
        The classes in the order to show them (default: sorted).
    title : str, optional

    Returns
    -------
    path : Path
    """
    from sklearn.metrics import confusion_matrix

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    classes = list(labels) if labels is not None else sorted(set(y_true) | set(y_pred))
    counts = confusion_matrix(y_true, y_pred, labels=classes)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    size = max(4.5, 1.6 + 0.62 * n)
    fig, ax = _axes(size + 1.2, size)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    names = [str(c) for c in classes]
    ax.set_xticks(range(n), names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), names)
    fontsize = 9 if n <= 12 else 7
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                colour = "white" if share[i, j] > 0.6 else "black"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour,
                        fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = float(np.trace(counts) / max(counts.sum(), 1))
    ax.set_title(title or f"Confusion matrix ({len(y_true)} samples, accuracy {accuracy:.1%})")
    return _save(fig, path)


def plot_embedding_map(
    coords: Any,
    labels: Any,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Plot a 2-D map of embeddings (e.g. t-SNE coordinates), one colour per class.

    Parameters
    ----------
    coords : array-like of shape (n, 2)
    labels : array-like of shape (n,)
        The class of each point; the legend lists the classes, sorted.
    path : path
        The PNG file to write.
    title : str, optional

    Returns
    -------
    path : Path
    """
    from matplotlib import colormaps

    coords = np.asarray(coords, dtype=float)
    labels = np.asarray(labels)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(labels):
        raise ValueError(
            f"expected coords of shape (n, 2) and n labels; got {coords.shape} and "
            f"{labels.shape}."
        )
    classes = sorted(set(labels.tolist()), key=str)
    cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    fig, ax = _axes(7.5, 6.0)
    for k, cls in enumerate(classes):
        mask = labels == cls
        ax.scatter(coords[mask, 0], coords[mask, 1], s=9, alpha=0.75, linewidths=0,
                   color=cmap(k % cmap.N), label=f"{cls} ({int(mask.sum())})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False,
              markerscale=2.0)
    ax.set_title(title or f"Embeddings in 2-D ({len(coords)} points)")
    return _save(fig, path)


def plot_depth(
    probe: Any,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Plot a layer probe: cross-validated score (mean ± std) against depth, one line per head.

    Parameters
    ----------
    probe : LayerProbe
        What :func:`featx.probe_layers` returned.
    path : path
        The PNG file to write.
    title : str, optional

    Returns
    -------
    path : Path
    """
    layers = [p.name for p in probe.layers]
    heads = list(dict.fromkeys(r.head for r in probe))
    fig, ax = _axes(max(6.0, 1.2 + 0.9 * len(layers)), 4.6)
    x = np.arange(len(layers))
    offsets = _offsets(len(heads), 0.08)
    for k, head in enumerate(heads):
        rows = {r.extra["layer"]: r for r in probe if r.head == head}
        mean = np.array([rows[n].cv_mean if n in rows else np.nan for n in layers])
        std = np.array([rows[n].cv_std if n in rows else np.nan for n in layers])
        ax.errorbar(x + offsets[k], mean, yerr=std, fmt="o-", capsize=3, label=head,
                    color=_colour(k))
    best = probe.best
    i = layers.index(best.extra["layer"]) + offsets[heads.index(best.head)]
    ax.plot(i, best.cv_mean, marker="*", markersize=16, color="gold", markeredgecolor="black",
            linestyle="none", label=f"best: {best.head} at {best.extra['layer']}", zorder=5)
    for j, p in enumerate(probe.layers):
        if p.is_default:
            ax.axvline(j, color="grey", linestyle=":", linewidth=1)
            ax.annotate("default cut", (j, 0), xycoords=("data", "axes fraction"),
                        xytext=(-4, 4), textcoords="offset points", ha="right", fontsize=8,
                        color="grey")
    ticks = [f"{p.name}\n({p.width})" for p in probe.layers]
    ax.set_xticks(x, ticks, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_xlabel("layer, shallow to deep (features per image)")
    ax.set_ylabel(f"cv {probe.scoring} ({probe.cv}-fold, mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or f"Score by depth ({probe.n_train} training samples)")
    return _save(fig, path)
