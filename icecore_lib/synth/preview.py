"""Contact sheet of synthetic crops: a row per class, so a person can judge them against real ones at a glance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from ..files import atomic_write_figure
from ..schema import display_name

CELL = 96
_GAP = 4
_SHEET_GRAY = 40


def _fit(crop: np.ndarray, cell: int) -> np.ndarray:
    """The crop scaled to fit a square cell (aspect kept, never enlarged past 3x), centred on a dark cell."""
    h, w = crop.shape
    scale = min(cell / h, cell / w, 3.0)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR))
    out = np.full((cell, cell), _SHEET_GRAY, dtype=np.uint8)
    top, left = (cell - resized.shape[0]) // 2, (cell - resized.shape[1]) // 2
    out[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
    return out


def mosaic(rows: Sequence[Sequence[np.ndarray]], cell: int = CELL) -> np.ndarray:
    """One uint8 image holding the crops row by row, each fitted to a cell."""
    ncols = max((len(r) for r in rows), default=1)
    step = cell + _GAP
    sheet = np.full((len(rows) * step + _GAP, ncols * step + _GAP), _SHEET_GRAY, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, crop in enumerate(row):
            sheet[_GAP + i * step : _GAP + i * step + cell, _GAP + j * step : _GAP + j * step + cell] = _fit(crop, cell)
    return sheet


def contact_sheet(
    examples: Mapping[str, Sequence[np.ndarray]], path: Path | str | None = None, cell: int = CELL
) -> Figure:
    """A row of crops per class, labelled with the class's display name; each crop's size (px) under it."""
    keys = list(examples)
    rows = [list(examples[k]) for k in keys]
    sheet = mosaic(rows, cell)
    step = cell + _GAP
    fig = Figure(figsize=(sheet.shape[1] / 80 + 1.8, sheet.shape[0] / 80 + 0.4))
    ax = fig.add_axes((0.13, 0.0, 0.87, 1.0))
    ax.imshow(sheet, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    for i, key in enumerate(keys):
        ax.text(-8, _GAP + i * step + cell / 2, display_name(key), ha="right", va="center", fontsize=9)
        for j, crop in enumerate(rows[i]):
            ax.text(_GAP + j * step + cell - 2, _GAP + i * step + cell - 2, f"{crop.shape[1]}x{crop.shape[0]}",
                    ha="right", va="bottom", fontsize=5, color="#ffd54f")
    if path is not None:
        atomic_write_figure(fig, path)
    return fig
