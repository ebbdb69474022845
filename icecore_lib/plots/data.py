"""Figures of notebook 00: what is in the data, and how the core differs from the lab set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..schema import DEPTH, LABEL, ORIG_HEIGHT, ORIG_WIDTH, SAMPLE, display_name
from .common import class_colors, save


def class_counts(table: pd.DataFrame, path: Path | str | None = None) -> Figure:
    """Bar chart of particles per class (display names), with the count on each bar."""
    counts = table[LABEL].value_counts().sort_values()
    colors = class_colors(list(counts.index))
    fig = Figure(figsize=(6, 0.4 * len(counts) + 1))
    ax = fig.subplots()
    bars = ax.barh([display_name(k) for k in counts.index], counts.values, color=[colors[k] for k in counts.index])
    ax.bar_label(bars, padding=2, fontsize=8)
    ax.set_xlabel("particles")
    ax.set_title(f"Labelled particles per class (n={len(table):,})")
    return save(fig, path)


def samples_overview(core: pd.DataFrame, path: Path | str | None = None) -> Figure:
    """Particles per core sample, shallowest on top (by median depth) where the core has depths, else by sample id."""
    summary = core.groupby(SAMPLE, observed=True).agg(n=(SAMPLE, "size"))
    labels = [str(s) for s in summary.index]
    if DEPTH in core:
        summary = summary.join(core.groupby(SAMPLE, observed=True)[DEPTH].median().rename("depth")).sort_values("depth")
        labels = [f"{s} ({d:.2f} m)" for s, d in zip(summary.index, summary["depth"])]
    fig = Figure(figsize=(6, 0.3 * len(summary) + 1.2))
    ax = fig.subplots()
    ax.barh(labels, summary["n"], color="#607d8b")
    ax.invert_yaxis()
    ax.set_xlabel("particles")
    ax.set_title(f"Core particles per sample (n={len(core):,})")
    return save(fig, path)


def crop_sizes(parts: dict[str, pd.DataFrame], path: Path | str | None = None) -> Figure:
    """Distribution of the original crop size (longest side, px) per part: the size lost by resizing."""
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    bins = np.geomspace(8, 1024, 50)
    for name, table in parts.items():
        longest = np.maximum(table[ORIG_HEIGHT], table[ORIG_WIDTH])
        ax.hist(longest, bins=bins, histtype="step", linewidth=1.5, density=True, label=f"{name} (n={len(table):,})")
    ax.set_xscale("log")
    ax.set_xlabel("crop size before resizing, longest side (px)")
    ax.set_ylabel("density")
    ax.legend()
    return save(fig, path)


def feature_distributions(
    parts: dict[str, pd.DataFrame], features: list[str], path: Path | str | None = None, ncols: int = 4
) -> Figure:
    """Per-feature histograms of each part on shared bins (log scale for positive skewed features)."""
    nrows = int(np.ceil(len(features) / ncols))
    fig = Figure(figsize=(3.2 * ncols, 2.4 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, feature in zip(axes, features):
        values = {name: t[feature].to_numpy(dtype=float) for name, t in parts.items()}
        stacked = np.concatenate(list(values.values()))
        stacked = stacked[np.isfinite(stacked)]
        positive_skewed = stacked.min() > 0 and np.percentile(stacked, 99) > 20 * np.median(stacked)
        bins = (np.geomspace(stacked.min(), stacked.max(), 40) if positive_skewed
                else np.linspace(stacked.min(), stacked.max(), 40))
        for name, v in values.items():
            ax.hist(v, bins=bins, histtype="step", density=True, linewidth=1.2, label=name)
        if positive_skewed:
            ax.set_xscale("log")
        ax.set_title(feature, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(features):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    # Fixed margins: tight_layout measures all 36 panels' tick labels (~4 s on 2 cores) for the same result.
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.03, top=0.98, wspace=0.28, hspace=0.6)
    return save(fig, path)


def shift_heatmap(shift: pd.DataFrame, max_shift: float, names: dict[str, str] | None = None,
                            path: Path | str | None = None) -> Figure:
    """Heat map of each feature's lab -> core shift within each predicted class (SDs); dropped features marked."""
    classes = [c for c in shift.columns if c not in ("median_abs", "kept")]
    ordered = shift.sort_values("median_abs", ascending=False)
    values = ordered[classes].to_numpy(dtype=float)
    limit = max(float(np.nanmax(np.abs(values))), max_shift) if np.isfinite(values).any() else 1.0
    fig = Figure(figsize=(0.8 * len(classes) + 4.5, 0.24 * len(ordered) + 1.5), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    labels = [f"{f}  (dropped)" if "kept" in ordered and not ordered.loc[f, "kept"] else f for f in ordered.index]
    ax.set_yticks(range(len(ordered)), labels, fontsize=7)
    ax.set_xticks(range(len(classes)), [display_name(c, names) for c in classes], rotation=30, ha="right", fontsize=8)
    ax.set_title(f"Core minus lab, same predicted class (pooled within-class SDs); dropped if median |shift| > {max_shift}",
                 fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.6)
    return save(fig, path)
