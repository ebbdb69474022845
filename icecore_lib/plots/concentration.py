"""Concentration and size-distribution figures: particles per ml per sample and class with their intervals, and
number and volume distributions of the ESD. Each returns a matplotlib Figure and saves it given a path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..concentration import ALL
from ..schema import VOLUME, display_name
from .common import class_colors, save

# Up to this many samples get a panel each (classes on x); more are put on x of a single panel.
FEW_SAMPLES = 4
# A log y axis once the positive concentrations span this ratio (a decade).
LOG_SPAN = 10.0
CONCENTRATION_COLUMNS = ("sample", "class", "n", "per_ml", "per_ml_lo", "per_ml_hi")
DISTRIBUTION_COLUMNS = ("class", "bin_lo_um", "bin_hi_um", "number", "number_fraction", "volume_fraction")
UNITS = "particles per ml"


def _require(table: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    """Fail naming the columns a table lacks."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; it has {list(table.columns)}")


def _has_total(table: pd.DataFrame) -> bool:
    """Whether the table carries a total (counting and classification) interval."""
    return "per_ml_total_lo" in table.columns and bool(table["per_ml_total_lo"].notna().any())


def _use_log(table: pd.DataFrame) -> bool:
    """Whether the positive concentrations and upper bounds span a decade or more."""
    values = pd.concat([table["per_ml"], table["per_ml_hi"]]).to_numpy(dtype=float)
    positive = values[values > 0]
    return len(positive) > 0 and positive.max() / positive.min() >= LOG_SPAN


def _bottom(table: pd.DataFrame) -> float:
    """Lower y limit of a log axis: below every positive value and bound shown."""
    columns = [c for c in ("per_ml", "per_ml_lo", "per_ml_hi", "per_ml_total_lo", "per_ml_total_hi") if c in table]
    values = table[columns].to_numpy(dtype=float).ravel()
    return float(np.nanmin(values[values > 0])) / 2


def _draw(ax: Any, x: np.ndarray, rows: pd.DataFrame, color: str, label: str | None, total: bool,
          offset: float) -> None:
    """Counts as points with counting-interval whiskers, zero counts as their upper bound (a 'v'), and the total
    interval as a light whisker ``offset`` to their right, around the expected count."""
    seen = rows["n"].to_numpy() > 0
    value = rows["per_ml"].to_numpy(dtype=float)
    error = np.vstack([value - rows["per_ml_lo"].to_numpy(dtype=float),
                       rows["per_ml_hi"].to_numpy(dtype=float) - value])
    ax.errorbar(x[seen], value[seen], yerr=error[:, seen], fmt="o", ms=5, capsize=3, color=color, label=label)
    ax.plot(x[~seen], rows["per_ml_hi"].to_numpy(dtype=float)[~seen], "v", ms=6, mfc="none", color=color)
    if total:
        centre = (rows["n_expected"] / rows[VOLUME]).to_numpy(dtype=float)
        spread = np.vstack([centre - rows["per_ml_total_lo"].to_numpy(dtype=float),
                            rows["per_ml_total_hi"].to_numpy(dtype=float) - centre])
        ax.errorbar(x + offset, centre, yerr=spread, fmt="_", ms=6, capsize=2, lw=3, alpha=0.35, color=color)


def _interval_note(table: pd.DataFrame) -> str:
    """The caption saying what the whiskers show."""
    level = table.attrs.get("level")
    share = f"{level:.0%} " if level is not None else ""
    note = f"whiskers: {share}Poisson (counting) interval; v: upper bound of a zero count"
    if _has_total(table):
        note += "; light: counting + classification, around the expected count"
    return note


def _classes(table: pd.DataFrame) -> list[str]:
    """Class keys in table order, 'all' last."""
    keys = [str(k) for k in pd.unique(table["class"]) if k != ALL]
    return [*keys, ALL] if (table["class"] == ALL).any() else keys


def _colors(classes: list[str]) -> dict[str, str]:
    """Class colours, the 'all' row black."""
    return {**class_colors([c for c in classes if c != ALL]), ALL: "black"}


def _per_sample_panels(fig: Figure, table: pd.DataFrame, samples: list[Any], classes: list[str]) -> list[Any]:
    """One panel per sample, classes on x."""
    axes = fig.subplots(1, len(samples), sharey=True, squeeze=False)[0]
    colors, total = _colors(classes), _has_total(table)
    for ax, sample in zip(axes, samples):
        rows = table[table["sample"] == sample].set_index("class").reindex(classes)
        for i, key in enumerate(classes):
            _draw(ax, np.array([float(i)]), rows.loc[[key]], colors[key], None, total, 0.2)
        ax.set_xticks(range(len(classes)), [display_name(c) for c in classes], rotation=40, ha="right", fontsize=8)
        volume = f" ({rows[VOLUME].iloc[0]:g} ml)" if VOLUME in rows else ""
        ax.set_title(f"{sample}{volume}", fontsize=9)
    return list(axes)


def _samples_on_x(fig: Figure, table: pd.DataFrame, samples: list[Any], classes: list[str]) -> list[Any]:
    """A single panel, samples on x and one series per class."""
    ax = fig.subplots()
    colors, total = _colors(classes), _has_total(table)
    width = 0.8 / len(classes)
    x = np.arange(len(samples), dtype=float)
    for k, key in enumerate(classes):
        rows = table[table["class"] == key].set_index("sample").reindex(samples)
        _draw(ax, x + (k - (len(classes) - 1) / 2) * width, rows, colors[key], display_name(key), total,
              width / 3)
    ax.set_xticks(x, [str(s) for s in samples], rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("sample")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return [ax]


def concentration_figure(table: pd.DataFrame, path: Path | str | None = None) -> Figure:
    """Particles per ml per sample and class with their intervals (from ``concentration_table``): a panel per
    sample when there are few, else samples on x; log y when the concentrations span a decade."""
    _require(table, CONCENTRATION_COLUMNS, "concentration table")
    if table.empty:
        raise ValueError("concentration table has no row to plot")
    samples, classes = list(pd.unique(table["sample"])), _classes(table)
    few = len(samples) <= FEW_SAMPLES
    width = max(5.0, 0.55 * len(classes) + 1.5) * len(samples) if few else max(7.0, 0.5 * len(samples) + 3)
    fig = Figure(figsize=(min(width, 18.0), 4.8), layout="constrained")
    axes = (_per_sample_panels if few else _samples_on_x)(fig, table, samples, classes)
    if _use_log(table):
        axes[0].set_yscale("log")
        axes[0].set_ylim(bottom=_bottom(table))
    else:
        axes[0].set_ylim(bottom=0)
    axes[0].set_ylabel(UNITS)
    fig.suptitle(f"Concentration ({UNITS} of meltwater)\n{_interval_note(table)}", fontsize=10)
    return save(fig, path)


def _distribution_panel(ax: Any, dist: pd.DataFrame, column: str, colors: dict[str, str]) -> None:
    """One distribution per class as steps: the fraction per decade of ESD, so unequal bins compare fairly."""
    for key, part in dist.groupby("class", sort=False):
        part = part.sort_values("bin_lo_um")
        edges = np.append(part["bin_lo_um"].to_numpy(dtype=float), part["bin_hi_um"].iloc[-1])
        density = part[column].to_numpy(dtype=float) / np.log10(edges[1:] / edges[:-1])
        label = f"{display_name(str(key))} (n={int(part['number'].sum())})"
        ax.stairs(density, edges, color=colors[str(key)], lw=1.5, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("ESD (µm)")
    ax.set_ylim(bottom=0)


def size_distribution_figure(dist: pd.DataFrame, path: Path | str | None = None) -> Figure:
    """Number and volume distributions of ESD per class (from ``size_distribution``), log ESD, two panels."""
    _require(dist, DISTRIBUTION_COLUMNS, "size distribution")
    if dist.empty:
        raise ValueError("size distribution has no row to plot")
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    number, volume = fig.subplots(1, 2)
    colors = class_colors([str(k) for k in pd.unique(dist["class"])])
    _distribution_panel(number, dist, "number_fraction", colors)
    _distribution_panel(volume, dist, "volume_fraction", colors)
    number.set_ylabel("number fraction per decade of ESD")
    volume.set_ylabel("volume fraction per decade of ESD")
    number.set_title("Number distribution")
    volume.set_title("Volume distribution (equivalent spheres)")
    volume.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save(fig, path)


__all__ = ["concentration_figure", "size_distribution_figure"]
