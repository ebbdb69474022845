"""Figure helpers every plots submodule shares: saving and class colours.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state), so the library works headless and
notebooks show a figure by returning it.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from ..files import atomic_write_figure
from ..schema import CLASSES, NEW_CLASS

_PALETTE = ("#1f77b4", "#ff7f0e", "#8c564b", "#d62728", "#2ca02c", "#9467bd", "#7f7f7f", "#e377c2", "#17becf", "#bcbd22")


NEW_CLASS_COLOR = "#e377c2"


def class_colors(keys: list[str] | None = None) -> dict[str, str]:
    """A fixed colour per class key: the study's seven always get the same colours, the new class pink, any other
    key (a lab's own classes) the palette's colours that none of the given study classes takes, in order."""
    keys = list(dict.fromkeys(keys or []))
    colors = {k: _PALETTE[i] for i, k in enumerate(CLASSES)}
    free = [c for c in _PALETTE if c != NEW_CLASS_COLOR and c not in {colors[k] for k in keys if k in colors}]
    extra = [k for k in keys if k not in CLASSES and k != NEW_CLASS]
    colors |= {k: free[i % len(free)] for i, k in enumerate(extra)}
    colors[NEW_CLASS] = NEW_CLASS_COLOR
    return colors


def save(fig: Figure, path: Path | str | None, dpi: int = 120) -> Figure:
    """Save a figure as PNG when a path is given (folders created, written atomically) and return it."""
    if path is not None:
        atomic_write_figure(fig, path, dpi)
    return fig
