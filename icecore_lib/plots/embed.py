"""Embedding figures: 2-D maps that stay readable at 100k points, a map without a class beside the one with every
class, the LOCO heat map.

Each map draws all points as a log-density background (``np.histogram2d``) and a seeded subsample as
small translucent dots on top (rasterised, so PDFs stay small); a held-out class is drawn larger, on
top, with up to ``max_points`` of its own. Every function returns a Figure (built without pyplot, so
nothing is shown twice in a notebook) and writes a PNG when given ``path``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..frames import ArrayOrFrame, as_matrix
from ..schema import CLASSES, NEW_CLASS, display_name
from .common import class_colors, save

LOCO_METRICS = ("knn_purity", "distance_auroc", "cluster_purity", "cluster_recall", "ari")


def class_order(keys: Iterable[str]) -> list[str]:
    """Known classes in the reference study's order, then other keys sorted, the new class last."""
    present = set(keys)
    known = [k for k in CLASSES if k in present]
    others = sorted(present - set(CLASSES) - {NEW_CLASS})
    return known + others + ([NEW_CLASS] if NEW_CLASS in present else [])


def _density(ax: Axes, Y: np.ndarray, bins: int) -> None:
    """All points as a grey log-count background, so dense regions read as dense however many dots are shown."""
    counts, xedges, yedges = np.histogram2d(Y[:, 0], Y[:, 1], bins=bins)
    ax.imshow(
        np.log1p(counts.T), origin="lower", cmap="Greys", alpha=0.6, aspect="auto", interpolation="nearest",
        extent=(xedges[0], xedges[-1], yedges[0], yedges[-1]), zorder=0,
    )


def _thin(mask: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``max_points`` of the True entries of ``mask``, chosen at random."""
    rows = np.flatnonzero(mask)
    if len(rows) > max_points:
        rows = rng.choice(rows, size=max_points, replace=False)
    thinned = np.zeros_like(mask)
    thinned[rows] = True
    return thinned


def draw_embedding(
    ax: Axes,
    Y: ArrayOrFrame,
    labels: Sequence[str] | np.ndarray | pd.Series,
    *,
    highlight: str | None = None,
    names: dict[str, str] | None = None,
    max_points: int = 20000,
    bins: int = 200,
    seed: int = 0,
) -> None:
    """Draw one density-aware class-coloured map on ``ax``; the ``highlight`` class gets its own ``max_points``, on top."""
    values, _ = as_matrix(Y, "Y")
    if values.shape[1] != 2:
        raise ValueError(f"Y must be a 2-D map (N x 2), got {values.shape[1]} columns")
    labels = np.asarray(labels).astype(str)
    if len(labels) != len(values):
        raise ValueError(f"labels has {len(labels)} entries but Y has {len(values)} rows")
    _density(ax, values, bins)
    rng = np.random.default_rng(seed)
    shown = _thin(np.ones(len(values), dtype=bool), max_points, rng)
    colors = class_colors(class_order(labels))
    handles = []
    for key in class_order(labels):
        color = colors[key]
        is_key = labels == key
        special = key == highlight
        rows = _thin(is_key, max_points, rng) if special else is_key & shown
        ax.scatter(
            values[rows, 0], values[rows, 1], s=8 if special else 2, c=color, alpha=0.9 if special else 0.35,
            linewidths=0.4 if special else 0, edgecolors="black" if special else "none",
            zorder=3 if special else 2, rasterized=True,
        )
        label = display_name(key, names) + (" (held out)" if special else "") + f"  n={int(is_key.sum())}"
        handles.append(Line2D([], [], ls="", marker="o", ms=6, color=color, label=label))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    ax.set(xlabel="UMAP 1", ylabel="UMAP 2", xticks=[], yticks=[])


def plot_embedding(
    Y: ArrayOrFrame,
    labels: Sequence[str] | np.ndarray | pd.Series,
    *,
    title: str = "",
    highlight: str | None = None,
    names: dict[str, str] | None = None,
    max_points: int = 20000,
    seed: int = 0,
    path: Path | str | None = None,
) -> Figure:
    """A 2-D map coloured by class (true labels for training data, predicted classes for the core)."""
    fig = Figure(figsize=(7.5, 5.5), layout="constrained")
    ax = fig.subplots()
    draw_embedding(ax, Y, labels, highlight=highlight, names=names, max_points=max_points, seed=seed)
    ax.set_title(title)
    return save(fig, path)


def _side_by_side(
    panels: Sequence[tuple[ArrayOrFrame, Sequence[str] | np.ndarray | pd.Series, str]],
    highlight: str | None,
    names: dict[str, str] | None,
    max_points: int,
    path: Path | str | None,
    same_map: bool,
) -> Figure:
    """Maps drawn next to each other, one (Y, labels, title) per panel; ``same_map`` shares their axes."""
    fig = Figure(figsize=(7.0 * len(panels), 5.5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False, sharex=same_map, sharey=same_map)[0]
    for ax, (Y, labels, title) in zip(axes, panels):
        draw_embedding(ax, Y, labels, highlight=highlight, names=names, max_points=max_points)
        ax.set_title(title)
    return save(fig, path)


def plot_train_core(
    Y_train: ArrayOrFrame,
    y_train: Sequence[str] | np.ndarray | pd.Series,
    Y_core: ArrayOrFrame,
    pred_core: Sequence[str] | np.ndarray | pd.Series,
    *,
    names: dict[str, str] | None = None,
    max_points: int = 20000,
    path: Path | str | None = None,
) -> Figure:
    """Training particles by true class beside core particles by predicted class, on the same map."""
    panels = [(Y_train, y_train, "training set: true class"), (Y_core, pred_core, "core: predicted class")]
    return _side_by_side(panels, None, names, max_points, path, same_map=True)


def plot_holdout_comparison(
    Y_without: ArrayOrFrame,
    Y_with: ArrayOrFrame,
    labels: Sequence[str] | np.ndarray | pd.Series,
    holdout_class: str,
    *,
    names: dict[str, str] | None = None,
    max_points: int = 20000,
    path: Path | str | None = None,
) -> Figure:
    """The same particles mapped by a model trained without ``holdout_class`` and by one trained on all classes."""
    n_all = len(set(np.asarray(labels).astype(str).tolist()))
    held = display_name(holdout_class, names)
    panels = [
        (Y_without, labels, f"trained on {n_all - 1} classes ({held} held out)"),
        (Y_with, labels, f"trained on all {n_all} classes"),
    ]
    return _side_by_side(panels, holdout_class, names, max_points, path, same_map=False)


def plot_loco_heatmap(
    table: pd.DataFrame,
    metrics: Sequence[str] = LOCO_METRICS,
    *,
    names: dict[str, str] | None = None,
    path: Path | str | None = None,
) -> Figure:
    """Leave-one-class-out results as a heat map: one row per held-out class, one column per metric (0-1)."""
    if "holdout_class" in table.columns:
        table = table.set_index("holdout_class")
    missing = [m for m in metrics if m not in table.columns]
    if missing:
        raise ValueError(f"LOCO table lacks column(s) {missing}; it has {list(table.columns)}")
    values = table.loc[:, list(metrics)].to_numpy(dtype=float)
    fig = Figure(figsize=(1.3 * len(metrics) + 2.5, 0.5 * len(table) + 1.5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        text, color = (f"{v:.2f}", "black" if v > 0.6 else "white") if np.isfinite(v) else ("n/a", "black")
        ax.text(j, i, text, ha="center", va="center", fontsize=9, color=color)
    ax.set_xticks(range(len(metrics)), [m.replace("_", " ") for m in metrics], rotation=30, ha="right")
    ax.set_yticks(range(len(table)), [display_name(str(k), names) for k in table.index])
    ax.set_ylabel("held-out class")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return save(fig, path)


__all__ = [
    "class_order",
    "draw_embedding",
    "plot_embedding",
    "plot_holdout_comparison",
    "plot_loco_heatmap",
    "plot_train_core",
]
