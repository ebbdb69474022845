"""Classification figures: confusion, per-class scores, calibration, thresholds, importance, SHAP, model
comparison and core composition. Each returns a matplotlib Figure (no pyplot state) and saves a PNG given a path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..evaluate import ece_from_curve, row_normalise
from ..schema import DEPTH, display_name
from .common import class_colors, save


def _names(keys: Sequence[Any]) -> list[str]:
    """Display names of class keys."""
    return [display_name(str(k)) for k in keys]


def _heatmap(ax: Any, table: pd.DataFrame, fmt: str, title: str) -> Any:
    """Draw one annotated confusion heatmap on ``ax``; returns the image for a colour bar."""
    values = table.to_numpy(dtype=float)
    image = ax.imshow(np.nan_to_num(values), cmap="Blues", vmin=0)
    ax.set_xticks(range(table.shape[1]), _names(table.columns), rotation=45, ha="right")
    ax.set_yticks(range(table.shape[0]), _names(table.index))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = np.nanmax(values) if np.isfinite(values).any() else 0.0
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=7,
                    color="white" if value > top / 2 else "black")
    return image


def plot_confusion(counts: pd.DataFrame, path: Path | str | None = None) -> Figure:
    """Confusion matrix as counts and row-normalised (recall on the diagonal), with class display names."""
    fig = Figure(figsize=(12, 5.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    fig.colorbar(_heatmap(left, counts, ".0f", "counts"), ax=left, shrink=0.8)
    normalised = _heatmap(right, row_normalise(counts), ".2f", "row-normalised (recall on the diagonal)")
    fig.colorbar(normalised, ax=right, shrink=0.8)
    return save(fig, path)


def plot_per_class(per_class: pd.DataFrame, path: Path | str | None = None) -> Figure:
    """Per-class precision, recall and F1 as grouped bars (support in the tick labels)."""
    fig = Figure(figsize=(max(6, 1.1 * len(per_class)), 4), layout="constrained")
    ax = fig.subplots()
    scores = ["precision", "recall", "f1"]
    width = 0.8 / len(scores)
    x = np.arange(len(per_class))
    for k, score in enumerate(scores):
        ax.bar(x + (k - 1) * width, per_class[score].to_numpy(dtype=float), width, label=score)
    labels = [f"{n}\n(n={int(s)})" for n, s in zip(_names(per_class.index), per_class["support"])]
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.legend(loc="lower right")
    ax.set_title("Per-class precision, recall, F1")
    return save(fig, path)


def plot_reliability(curves: Mapping[str, pd.DataFrame], path: Path | str | None = None) -> Figure:
    """Reliability diagram of one or more curves (e.g. before/after temperature scaling), ECE in the title;
    marker area shows how many particles a bin holds."""
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    eces = []
    for name, curve in curves.items():
        filled = curve[curve["count"] > 0]
        ece = ece_from_curve(curve)
        eces.append(f"{name} {ece:.3f}")
        line = ax.plot(filled["confidence"], filled["accuracy"], label=f"{name} (ECE {ece:.3f})")[0]
        ax.scatter(filled["confidence"], filled["accuracy"], s=200 * filled["count"] / filled["count"].max(),
                   color=line.get_color(), alpha=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability; ECE " + ", ".join(eces))
    ax.legend(loc="upper left", fontsize=8)
    return save(fig, path)


def plot_threshold_coverage(coverage: pd.DataFrame, target_precision: float | None = None,
                            path: Path | str | None = None) -> Figure:
    """Fraction of each class's predictions kept by its precision threshold; unreachable classes are hatched."""
    fig = Figure(figsize=(max(6, 1.1 * len(coverage)), 4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(coverage))
    kept = coverage["kept_fraction"].fillna(0).to_numpy(dtype=float)
    bars = ax.bar(x, kept, color="tab:blue")
    for bar, reachable, threshold in zip(bars, coverage["reachable"], coverage["threshold"]):
        if not reachable:
            bar.set_hatch("//")
            ax.text(bar.get_x() + bar.get_width() / 2, 0.02, "unreachable", rotation=90, ha="center", va="bottom",
                    fontsize=8)
        else:
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, f"t={threshold:.2f}", ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks(x, _names(coverage.index), rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("fraction of predictions kept")
    target = f" at precision {target_precision:.2f}" if target_precision is not None else ""
    ax.set_title(f"Threshold coverage{target}")
    return save(fig, path)


def plot_feature_importance(importance: pd.Series, top: int = 20, path: Path | str | None = None) -> Figure:
    """Horizontal bars of the ``top`` most important features, largest on top."""
    shown = importance.sort_values(ascending=False).head(top)[::-1]
    fig = Figure(figsize=(6, 0.3 * len(shown) + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.barh(range(len(shown)), shown.to_numpy(dtype=float), color="tab:blue")
    ax.set_yticks(range(len(shown)), shown.index, fontsize=8)
    ax.set_xlabel(f"importance ({importance.name or 'score'})")
    ax.set_title("Feature importance")
    return save(fig, path)


def _shap_arrays(explanation: Any) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """SHAP values as (n, features, classes), the feature data, feature names and class names."""
    values = np.asarray(explanation.values, dtype=float)
    if values.ndim == 2:
        values = values[:, :, None]
    features = list(explanation.feature_names) if explanation.feature_names is not None else [
        f"feature {i}" for i in range(values.shape[1])]
    outputs = getattr(explanation, "output_names", None)
    classes = list(outputs) if outputs is not None else [str(i) for i in range(values.shape[2])]
    return values, np.asarray(explanation.data, dtype=float), features, classes


def plot_shap_bar(explanation: Any, top: int = 15, path: Path | str | None = None) -> Figure:
    """Mean |SHAP| per feature, stacked by class: which features drive the classifier overall."""
    values, _, features, classes = _shap_arrays(explanation)
    mean_abs = np.abs(values).mean(axis=0)
    order = np.argsort(mean_abs.sum(axis=1))[::-1][:top][::-1]
    fig = Figure(figsize=(7, 0.3 * len(order) + 1.5), layout="constrained")
    ax = fig.subplots()
    left = np.zeros(len(order))
    colors = class_colors(classes)
    for j, key in enumerate(classes):
        ax.barh(range(len(order)), mean_abs[order, j], left=left, label=display_name(key), color=colors[key])
        left += mean_abs[order, j]
    ax.set_yticks(range(len(order)), [features[i] for i in order], fontsize=8)
    ax.set_xlabel("mean |SHAP value|")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("SHAP feature importance by class")
    return save(fig, path)


def plot_shap_beeswarm(explanation: Any, class_key: Any, top: int = 15, seed: int = 0,
                       path: Path | str | None = None) -> Figure:
    """SHAP beeswarm for one class: each dot a particle, x its SHAP value, colour its feature value (rank)."""
    values, data, features, classes = _shap_arrays(explanation)
    if str(class_key) not in classes:
        raise ValueError(f"class {class_key!r} not in the explanation's classes {classes}")
    shap_class = values[:, :, classes.index(str(class_key))]
    order = np.argsort(np.abs(shap_class).mean(axis=0))[::-1][:top][::-1]
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(7, 0.35 * len(order) + 1.5), layout="constrained")
    ax = fig.subplots()
    scatter = None
    for row, i in enumerate(order):
        colour = pd.Series(data[:, i]).rank(pct=True).fillna(0.5).to_numpy()
        jitter = rng.uniform(-0.3, 0.3, size=len(shap_class))
        scatter = ax.scatter(shap_class[:, i], row + jitter, c=colour, cmap="coolwarm", s=6, vmin=0, vmax=1)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(order)), [features[i] for i in order], fontsize=8)
    ax.set_xlabel(f"SHAP value (impact on {display_name(str(class_key))})")
    if scatter is not None:
        fig.colorbar(scatter, ax=ax, label="feature value (rank: low to high)")
    ax.set_title(f"SHAP beeswarm: {display_name(str(class_key))}")
    return save(fig, path)


def plot_model_comparison(table: pd.DataFrame, metrics: Sequence[str] = ("accuracy", "balanced_accuracy", "macro_f1"),
                          path: Path | str | None = None) -> Figure:
    """Grouped bars of the models' metrics (images vs metadata vs both); accuracy intervals when present."""
    shown = [m for m in metrics if m in table.columns]
    fig = Figure(figsize=(max(6, 2.2 * len(table)), 4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(shown), 1)
    x = np.arange(len(table))
    for k, metric in enumerate(shown):
        heights = table[metric].to_numpy(dtype=float)
        error = None
        if metric == "accuracy" and {"accuracy_ci_low", "accuracy_ci_high"} <= set(table.columns):
            error = np.vstack([heights - table["accuracy_ci_low"].to_numpy(dtype=float),
                               table["accuracy_ci_high"].to_numpy(dtype=float) - heights])
        bars = ax.bar(x + (k - (len(shown) - 1) / 2) * width, heights, width, yerr=error, capsize=3, label=metric)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, list(table.index))
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("score")
    ax.legend(loc="upper center", ncol=max(len(shown), 1), fontsize=8)
    ax.set_title("Model comparison (test split)")
    return save(fig, path)


def _as_composition(value: pd.DataFrame | pd.Series) -> pd.DataFrame:
    """A composition as a frame with fraction, ci_low and ci_high (NaN when no interval)."""
    table = value.to_frame("fraction") if isinstance(value, pd.Series) else value.copy()
    for column in ("ci_low", "ci_high"):
        if column not in table.columns:
            table[column] = np.nan
    return table


def plot_composition(compositions: Mapping[str, pd.DataFrame | pd.Series], truth: pd.Series | None = None,
                     path: Path | str | None = None, title: str = "Core composition") -> Figure:
    """Class fractions by method (e.g. raw vs corrected) with bootstrap intervals; with the truth, also each
    method's error (estimate - truth) below, where the small classes' differences show."""
    tables = {name: _as_composition(v) for name, v in compositions.items()}
    classes = list(next(iter(tables.values())).index)
    series = dict(tables)
    if truth is not None:
        series["truth"] = _as_composition(truth.reindex(classes, fill_value=0.0))
    fig = Figure(figsize=(max(7, 1.2 * len(classes)), 4.2 if truth is None else 6.6), layout="constrained")
    axes = fig.subplots(1 if truth is None else 2, 1, sharex=True, squeeze=False,
                        height_ratios=None if truth is None else [3, 2])[:, 0]
    _composition_bars(axes[0], series, classes)
    axes[0].set_ylabel("fraction of particles")
    axes[0].set_title(title)
    if truth is not None:
        errors = {name: table.reindex(classes)[["fraction", "ci_low", "ci_high"]].sub(series["truth"]["fraction"], axis=0)
                  for name, table in tables.items()}
        _composition_bars(axes[1], errors, classes, offset_of=list(series))
        axes[1].axhline(0.0, color="black", lw=0.8)
        axes[1].set_ylabel("estimate - truth")
    axes[-1].set_xticks(np.arange(len(classes)), _names(classes), rotation=30, ha="right", fontsize=8)
    axes[0].legend(fontsize=8)
    return save(fig, path)


def _composition_bars(ax: Any, series: Mapping[str, pd.DataFrame], classes: list[str],
                      offset_of: list[str] | None = None) -> None:
    """Grouped bars per class, one per series, with interval whiskers where the series has them."""
    slots = offset_of or list(series)
    width = 0.8 / len(slots)
    x = np.arange(len(classes))
    for name, table in series.items():
        table = table.reindex(classes)
        k = slots.index(name)
        fraction = table["fraction"].to_numpy(dtype=float)
        error = np.vstack([fraction - table["ci_low"].to_numpy(dtype=float),
                           table["ci_high"].to_numpy(dtype=float) - fraction])
        ax.bar(x + (k - (len(slots) - 1) / 2) * width, fraction, width, label=name,
               yerr=None if np.isnan(error).all() else np.nan_to_num(error), capsize=3,
               color="black" if name == "truth" else f"C{k}", alpha=0.35 if name == "truth" else 1.0)


def plot_composition_depth(long: pd.DataFrame, depth: str = DEPTH, path: Path | str | None = None) -> Figure:
    """Fraction of each class against depth (depth downwards, as in a core log), with interval bands."""
    if depth not in long.columns:
        raise ValueError(f"composition table has no depth column {depth!r}; columns are {list(long.columns)}")
    fig = Figure(figsize=(7.5, 7), layout="constrained")
    ax = fig.subplots()
    colors = class_colors([str(k) for k in long["class"].unique()])
    for key, part in long.groupby("class", sort=False):
        part = part.sort_values(depth)
        color = colors[str(key)]
        ax.plot(part["fraction"], part[depth], marker="o", ms=3, color=color, label=display_name(str(key)))
        if part["ci_low"].notna().any():
            ax.fill_betweenx(part[depth], part["ci_low"], part["ci_high"], color=color, alpha=0.2)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of particles")
    ax.set_ylabel("depth (m)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    ax.set_title("Composition with depth")
    return save(fig, path)


__all__ = [
    "plot_composition",
    "plot_composition_depth",
    "plot_confusion",
    "plot_feature_importance",
    "plot_model_comparison",
    "plot_per_class",
    "plot_reliability",
    "plot_shap_bar",
    "plot_shap_beeswarm",
    "plot_threshold_coverage",
    "stratigraphic_diagram",
]


def stratigraphic_diagram(composition: pd.DataFrame, concentrations: pd.DataFrame | None = None,
                          unknown: pd.Series | None = None, layers: Sequence[float] = (), depth: str = DEPTH,
                          path: Path | str | None = None, title: str = "Stratigraphic diagram") -> Figure:
    """The convention of pollen and tephra diagrams: one panel per class against depth (downwards), the fraction as
    a filled silhouette with its interval, particles per ml below it where volumes are known, the "unknown"
    fraction as a panel of its own, and volcanic layers (``layers``: depths) marked across every panel.

    ``composition``: per-sample long table (sample_id, depth, class, fraction, ci_low, ci_high);
    ``concentrations``: per-sample class concentrations (sample, class, per_ml, per_ml_total_lo/hi);
    ``unknown``: the flagged fraction per sample id.
    """
    if depth not in composition.columns:
        raise ValueError(f"composition table has no depth column {depth!r}; columns are {list(composition.columns)}")
    classes = [str(k) for k in dict.fromkeys(composition["class"])]
    depths = composition.groupby("sample_id", sort=False)[depth].median()
    columns = classes + (["unknown"] if unknown is not None else [])
    rows = 2 if concentrations is not None else 1
    fig = Figure(figsize=(1.35 * len(columns) + 1.2, 3.6 * rows + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, len(columns), sharey=True, squeeze=False))
    colors = class_colors(classes)
    for j, key in enumerate(columns):
        ax = axes[0, j]
        if key == "unknown":
            values = unknown.reindex(depths.index).to_numpy(dtype=float)
            order = np.argsort(depths.to_numpy())
            ax.fill_betweenx(depths.to_numpy()[order], 0, values[order], color="0.35", alpha=0.8)
            ax.set_title("unknown\n(flagged)", fontsize=8)
        else:
            part = composition[composition["class"].astype(str) == key].sort_values(depth)
            ax.fill_betweenx(part[depth], 0, part["fraction"], color=colors[key], alpha=0.8)
            if part["ci_low"].notna().any():
                ax.fill_betweenx(part[depth], part["ci_low"], part["ci_high"], color=colors[key], alpha=0.25)
            ax.set_title(display_name(key), fontsize=8)
            values = part[["fraction", "ci_high"]].to_numpy(dtype=float)
        ax.set_xlim(0, max(0.05, 1.05 * float(np.nanmax(values))))  # a trace class still gets a readable axis
        ax.tick_params(labelsize=7)
        ax.set_xlabel("fraction", fontsize=7)
        if rows == 2:
            _concentration_panel(axes[1, j], concentrations, key, depths, colors.get(key, "0.35"))
    for ax in axes.ravel():
        for layer in layers:
            ax.axhline(layer, color="#b71c1c", linewidth=1.2, alpha=0.7)
    axes[0, 0].invert_yaxis()
    for row in range(rows):
        axes[row, 0].set_ylabel(f"depth (m){' - red: volcanic layers' if layers and row == 0 else ''}", fontsize=8)
    fig.suptitle(title)
    return save(fig, path)


def _concentration_panel(ax: Any, concentrations: pd.DataFrame, key: str, depths: pd.Series, color: str) -> None:
    """Particles per ml of one class per sample against depth, with the counting + classification interval."""
    part = concentrations[concentrations["class"].astype(str) == key].set_index("sample").reindex(depths.index)
    if part["per_ml"].isna().all():
        ax.set_axis_off()
        return
    d = depths.to_numpy()
    low, high = part["per_ml_total_lo"].to_numpy(dtype=float), part["per_ml_total_hi"].to_numpy(dtype=float)
    value = part["per_ml"].to_numpy(dtype=float)
    ax.errorbar(value, d, xerr=[np.clip(value - low, 0, None), np.clip(high - value, 0, None)], fmt="o", ms=3,
                color=color, elinewidth=0.8, capsize=2)
    ax.set_xlim(left=0)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("particles / ml", fontsize=7)
