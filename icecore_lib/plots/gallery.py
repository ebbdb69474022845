"""Image galleries and discovery figures of notebook 05: what the novelty scores put on top, and why.

``images`` is always the ``(N, S, S)`` uint8 array aligned row by row with ``table`` (indexed by
``particle_id``), as in a packed part; galleries pick rows by particle id.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec, SubplotSpec

from ..novelty.metrics import LIGHTS, flag_fraction_by_group
from ..schema import DEPTH, FLOWCAM_FEATURES, LABEL, SAMPLE, display_name
from ..shift.drift import feature_drift
from .common import save

PRED = "pred"
LIGHT_COLORS = {"green": "#2e7d32", "amber": "#f9a825", "red": "#c62828"}
PANEL_IN = 1.35


def particle_captions(table: pd.DataFrame, ids: Sequence[str], columns: Sequence[str] = ()) -> list[str]:
    """One caption per particle: its id (file name) and ``column: value`` lines for the columns the table has."""
    present = [c for c in columns if c in table.columns]
    rows = table.loc[list(ids), present]
    return ["\n".join([_short_id(pid)] + [f"{c}: {_fmt(v)}" for c, v in row.items()]) for pid, row in rows.iterrows()]


def _short_id(particle_id: str, width: int = 22) -> str:
    """The file name of a particle id, cut to fit under a thumbnail."""
    name = PurePosixPath(str(particle_id)).name
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _fmt(value: object) -> str:
    """A table value in a few characters (3 significant digits for floats)."""
    return f"{value:.3g}" if isinstance(value, (float, np.floating)) else str(value)


def _rows(table: pd.DataFrame, ids: Sequence[str]) -> np.ndarray:
    """Row positions of particle ids in the table (aligned with the images); names missing ids."""
    rows = table.index.get_indexer(list(ids))
    if (rows < 0).any():
        missing = [pid for pid, r in zip(ids, rows) if r < 0]
        raise KeyError(f"{len(missing)} particle id(s) not in the table, e.g. {missing[:3]}")
    return rows


def _draw_panels(fig: Figure, spec: SubplotSpec, images: np.ndarray, captions: Sequence[str], ncols: int) -> None:
    """Fill a region of a figure with one grayscale panel per image, caption in small text below it."""
    nrows = max(1, -(-len(images) // ncols))
    grid = spec.subgridspec(nrows, ncols, wspace=0.05, hspace=0.45)
    for i, (image, caption) in enumerate(zip(images, captions)):
        ax = fig.add_subplot(grid[i // ncols, i % ncols])
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(caption, fontsize=5.5, linespacing=1.1)


def gallery(
    images: np.ndarray,
    ids: Sequence[str],
    captions: Sequence[str] | None = None,
    ncols: int = 8,
    title: str | None = None,
    path: Path | str | None = None,
) -> Figure:
    """Grid of particle crops (one panel each) captioned with id and e.g. predicted class, score, key features."""
    captions = [_short_id(pid) for pid in ids] if captions is None else list(captions)
    if not len(images) == len(ids) == len(captions):
        raise ValueError(f"gallery: {len(images)} images but {len(ids)} particle ids and {len(captions)} captions")
    ncols = max(1, min(ncols, len(images)))
    nrows = max(1, -(-len(images) // ncols))
    fig = Figure(figsize=(ncols * PANEL_IN, nrows * (PANEL_IN + 0.45) + 0.5))
    _draw_panels(fig, GridSpec(1, 1, figure=fig)[0], np.asarray(images), captions, ncols)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)


def top_k_gallery(
    images: np.ndarray,
    table: pd.DataFrame,
    score: str,
    k: int = 24,
    caption_columns: Sequence[str] = (PRED,),
    ncols: int = 8,
    title: str | None = None,
    path: Path | str | None = None,
) -> Figure:
    """The ``k`` particles with the highest ``score`` (ties: table order), captioned with the score."""
    top = table[score].sort_values(ascending=False, kind="stable").index[:k]
    captions = particle_captions(table, top, [*caption_columns, score])
    title = title or f"Top {len(top)} by {score}"
    return gallery(images[_rows(table, top)], top, captions, ncols, title, path)


def confused_gallery(
    images: np.ndarray,
    table: pd.DataFrame,
    k: int = 24,
    entropy: str = "entropy",
    path: Path | str | None = None,
) -> Figure:
    """The particles the classifier is least sure about (highest softmax entropy)."""
    return top_k_gallery(images, table, entropy, k, title=f"Most confused: top {k} by {entropy}", path=path)


def hardest_reconstructions(
    images: np.ndarray,
    table: pd.DataFrame,
    loss: str = "recon",
    reconstructions: np.ndarray | None = None,
    k: int = 16,
    path: Path | str | None = None,
) -> Figure:
    """Training crops the autoencoder reconstructs worst, each followed by its reconstruction when given."""
    top = table[loss].sort_values(ascending=False, kind="stable").index[:k]
    rows = _rows(table, top)
    captions = particle_captions(table, top, [LABEL, loss])
    if reconstructions is None:
        return gallery(images[rows], top, captions, 8, f"Hardest to reconstruct: top {len(top)} by {loss}", path)
    pairs = np.stack([images[rows], reconstructions[rows]], axis=1).reshape(-1, *images.shape[1:])
    pair_ids = np.repeat(np.asarray(top), 2)
    pair_captions = [c for caption in captions for c in (caption, "reconstruction")]
    title = f"Hardest to reconstruct (crop, reconstruction): top {len(top)} by {loss}"
    return gallery(pairs, pair_ids, pair_captions, 8, title, path)


def group_gallery(
    images: np.ndarray,
    table: pd.DataFrame,
    by: str,
    per_group: int = 8,
    order_by: str | None = None,
    caption_columns: Sequence[str] = (),
    seed: int = 0,
    title: str | None = None,
    path: Path | str | None = None,
) -> Figure:
    """One row per group (class, predicted class, cluster): its top ``order_by`` particles, else a seeded sample."""
    rng = np.random.default_rng(seed)
    picks: dict[str, pd.Index] = {}
    for group, members in table.groupby(by, observed=True, sort=True):
        if order_by is None:
            chosen = members.index[np.sort(rng.permutation(len(members))[:per_group])]
        else:
            chosen = members[order_by].sort_values(ascending=False, kind="stable").index[:per_group]
        picks[str(group)] = chosen
    extra = [order_by] if order_by else []
    fig = Figure(figsize=(per_group * PANEL_IN + 1.2, len(picks) * (PANEL_IN + 0.45) + 0.5))
    grid = GridSpec(len(picks), 1, figure=fig, hspace=0.5)
    for row, (group, ids) in enumerate(picks.items()):
        captions = particle_captions(table, ids, [*caption_columns, *extra])
        _draw_panels(fig, grid[row], images[_rows(table, ids)], captions, per_group)
        fig.axes[-len(ids)].set_ylabel(_group_label(by, group), fontsize=8)
    fig.suptitle(title or f"Particles by {by}", fontsize=10)
    return save(fig, path)


def _group_label(by: str, group: str) -> str:
    """Row label of a group: a class's display name, else the group's value."""
    return display_name(group) if by in (LABEL, PRED) else f"{by} {group}"


def discovery_card(
    images: np.ndarray,
    table: pd.DataFrame,
    members: Sequence[str],
    reference: pd.DataFrame,
    reference_class: str | None = None,
    features: Sequence[str] | None = None,
    n_features: int = 4,
    n_images: int = 16,
    title: str = "Candidate cluster",
    path: Path | str | None = None,
) -> Figure:
    """One candidate cluster on one page: crops, key features against the nearest training class, where it occurs.

    ``table`` is the scored (core) table aligned with ``images``; ``reference`` the labelled training table.
    The nearest training class defaults to the class the classifier gives most members (``pred`` column);
    the features default to the ``n_features`` that differ most from it (largest |standardised mean difference|).
    """
    members = pd.Index(members)
    if reference_class is None:
        if PRED not in table.columns:
            raise KeyError(f"discovery_card: pass reference_class, or give the table a {PRED!r} column")
        reference_class = str(table.loc[members, PRED].mode().iloc[0])
    ref_rows = reference[reference[LABEL] == reference_class]
    if ref_rows.empty:
        raise ValueError(f"discovery_card: no training particles of class {reference_class!r} in the reference table")
    if features is None:
        candidates = [f for f in FLOWCAM_FEATURES if f in table.columns and f in reference.columns]
        drift = feature_drift(ref_rows, table.loc[members], candidates)
        features = list(drift["smd"].abs().sort_values(ascending=False).index[:n_features])
    shown = members[:n_images]
    gallery_in = max(1, -(-len(shown) // 8)) * (PANEL_IN + 0.4)
    fig = Figure(figsize=(12, gallery_in + 3.4))
    grid = GridSpec(2, 1, figure=fig, height_ratios=[gallery_in, 2.6], hspace=0.3)
    _draw_panels(fig, grid[0], images[_rows(table, shown)], particle_captions(table, shown, [PRED]), 8)
    bottom = grid[1].subgridspec(1, len(features) + 1, wspace=0.45)
    for i, feature in enumerate(features):
        _feature_violin(fig.add_subplot(bottom[0, i]), ref_rows[feature], table.loc[members, feature], reference_class)
    _occurrence(fig.add_subplot(bottom[0, -1]), table, members)
    fig.suptitle(f"{title}: {len(members)} particles, nearest class {display_name(reference_class)}", fontsize=11)
    return save(fig, path)


def _feature_violin(ax, reference: pd.Series, cluster: pd.Series, reference_class: str) -> None:
    """Violins of one feature: the nearest training class against the cluster."""
    data = [reference.dropna().to_numpy(dtype=float), cluster.dropna().to_numpy(dtype=float)]
    ax.violinplot(data, showmedians=True)
    ax.set_xticks([1, 2], [display_name(reference_class), "cluster"], fontsize=7, rotation=20)
    ax.set_title(str(reference.name), fontsize=8)
    ax.tick_params(axis="y", labelsize=7)


def _occurrence(ax, table: pd.DataFrame, members: pd.Index) -> None:
    """Fraction of each sample's particles in the cluster, samples ordered by depth when known."""
    if SAMPLE not in table.columns:
        ax.text(0.5, 0.5, f"no {SAMPLE} column", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    in_cluster = pd.Series(table.index.isin(members), index=table.index)
    per_sample = flag_fraction_by_group(in_cluster, table[SAMPLE])
    if DEPTH in table.columns:
        depth = table.groupby(SAMPLE, observed=True)[DEPTH].median()
        per_sample = per_sample.loc[depth.sort_values().index]
        labels = [f"{s} ({depth[s]:.1f} m)" for s in per_sample.index]
    else:
        labels = [str(s) for s in per_sample.index]
    ax.barh(labels, per_sample["fraction"], color="#e377c2")
    ax.invert_yaxis()
    ax.tick_params(labelsize=6)
    ax.set_xlabel("fraction of sample", fontsize=7)
    ax.set_title("where it occurs", fontsize=8)


def novelty_heatmap(loco: pd.DataFrame, metric: str = "auroc", path: Path | str | None = None) -> Figure:
    """Heat map of a leave-one-class-out table (``novelty.loco_novelty_table``): held-out class x score, one metric."""
    values = loco.xs(metric, axis=1, level="metric")
    fig = Figure(figsize=(0.8 * values.shape[1] + 2.5, 0.45 * values.shape[0] + 1.8))
    ax = fig.subplots()
    lower_is_better = metric.startswith("fpr")
    cmap = "viridis_r" if lower_is_better else "viridis"
    image = ax.imshow(values.to_numpy(dtype=float), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(values.to_numpy(dtype=float)):
        dark = v > 0.5 if lower_is_better else v < 0.5
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(values.shape[1]), values.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(values.shape[0]), [display_name(str(c)) for c in values.index], fontsize=8)
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(f"Leave-one-class-out: {metric} per held-out class and score")
    return save(fig, path)


def drift_report(drift: pd.DataFrame, top: int = 15, path: Path | str | None = None) -> Figure:
    """Lab -> core shift of the features (``shift.drift.feature_drift``): PSI and standardised mean difference."""
    shown = drift.sort_values("psi", ascending=False).head(top).iloc[::-1]
    fig = Figure(figsize=(10, 0.3 * len(shown) + 1.5))
    ax_psi, ax_smd = fig.subplots(1, 2, sharey=True)
    levels = np.digitize(shown["psi"], [0.1, 0.25], right=True)
    ax_psi.barh(shown.index, shown["psi"], color=[LIGHT_COLORS[LIGHTS[i]] for i in levels])
    for level in (0.1, 0.25):
        ax_psi.axvline(level, color="0.4", linestyle="--", linewidth=0.8)
    ax_psi.set_xlabel("PSI (0.1 moderate, 0.25 large)")
    ax_smd.barh(shown.index, shown["smd"], color="#607d8b")
    ax_smd.axvline(0, color="0.3", linewidth=0.8)
    ax_smd.set_xlabel("standardised mean difference (core - lab)")
    ax_psi.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"Feature drift, lab -> core: the {len(shown)} most shifted features")
    return save(fig, path)


def traffic_light_bars(by_group: pd.DataFrame, path: Path | str | None = None) -> Figure:
    """Stacked bars per sample of the green / amber / red fractions (``novelty.traffic_light_by_group``)."""
    labels = [" / ".join(map(str, g)) if isinstance(g, tuple) else str(g) for g in by_group.index]
    fig = Figure(figsize=(7, 0.3 * len(by_group) + 1.5))
    ax = fig.subplots()
    left = np.zeros(len(by_group))
    for light in LIGHTS:
        ax.barh(labels, by_group[light], left=left, color=LIGHT_COLORS[light], label=light)
        left += by_group[light].to_numpy(dtype=float)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of particles (green < 95th, amber < 99th percentile of training kNN distance)")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title("How far each sample's particles lie from the training set")
    return save(fig, path)


__all__ = [
    "confused_gallery",
    "discovery_card",
    "drift_report",
    "gallery",
    "group_gallery",
    "hardest_reconstructions",
    "novelty_heatmap",
    "particle_captions",
    "top_k_gallery",
    "traffic_light_bars",
]
