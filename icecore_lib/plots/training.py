"""Training figures: learning curves from a fit's history, and autoencoder reconstructions beside their originals."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..nn.loop import History, read_history
from .common import save


def learning_curves(history: History | pd.DataFrame | Path | str, path: Path | str | None = None) -> Figure:
    """Loss (and accuracy, when classifying) per epoch, train vs validation, the best epoch marked and the half-size
    epochs of progressive resizing shaded (they are never the kept model: see ``nn.loop``)."""
    frame = _history_frame(history)
    metrics = ["loss"] + (["acc"] if "train_acc" in frame.columns else [])
    half = frame.index[frame["image_scale"] < 1] if "image_scale" in frame.columns else frame.index[:0]
    monitor = (frame["val_loss"] if "val_loss" in frame.columns else frame["train_loss"]).drop(half)
    best = int(monitor.idxmin())
    fig = Figure(figsize=(4.8 * len(metrics), 3.6), layout="constrained")
    for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True):
        for split, style in (("train", "-"), ("val", "--")):
            column = f"{split}_{metric}"
            if column in frame.columns:
                ax.plot(frame.index, frame[column], style, marker="o", markersize=3, label=split)
        ax.axvline(best, color="0.5", linestyle=":", label=f"best epoch {best}")
        if len(half):
            ax.axvspan(half.min() - 0.5, half.max() + 0.5, color="0.9", zorder=0, label="images at half size")
        ax.set_xlabel("epoch")
        ax.set_ylabel({"loss": "loss", "acc": "accuracy"}[metric])
        ax.legend(frameon=False)
    return save(fig, path)


def _history_frame(history: History | pd.DataFrame | Path | str) -> pd.DataFrame:
    """The per-epoch table behind any of the accepted history forms."""
    if isinstance(history, History):
        return history.frame
    if isinstance(history, pd.DataFrame):
        return history
    return read_history(history)


def reconstruction_grid(
    originals: np.ndarray,
    reconstructions: np.ndarray,
    *,
    n: int = 8,
    captions: Sequence[str] | None = None,
    path: Path | str | None = None,
) -> Figure:
    """The first ``n`` images (raw 0-255 gray) in the top row, their reconstructions below, on one gray scale."""
    originals, reconstructions = _as_images(originals, "originals"), _as_images(reconstructions, "reconstructions")
    if originals.shape != reconstructions.shape:
        raise ValueError(f"originals {originals.shape} and reconstructions {reconstructions.shape} differ in shape")
    n = min(n, len(originals))
    if captions is not None and len(captions) < n:
        raise ValueError(f"need a caption for each of the {n} columns, got {len(captions)}")
    fig = Figure(figsize=(1.3 * n, 2.9), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for col in range(n):
        for row, images in enumerate((originals, reconstructions)):
            ax = axes[row, col]
            ax.imshow(images[col], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        if captions is not None:
            axes[1, col].set_xlabel(captions[col], fontsize=8)
    axes[0, 0].set_ylabel("original")
    axes[1, 0].set_ylabel("reconstruction")
    return save(fig, path)


def _as_images(images: np.ndarray, name: str) -> np.ndarray:
    """``(N, S, S)`` from ``(N, S, S)`` or ``(N, 1, S, S)`` arrays."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"{name} must be (N, S, S) or (N, 1, S, S) images, got shape {images.shape}")
    return images
