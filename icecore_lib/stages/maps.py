"""Notebook 04: 2-D maps of the embedding spaces (umap-learn against our parametric UMAP), the leave-one-class-out
folds' separation, and the core's own clusters.

Maps and leave-one-class-out need the labelled part only (which classes are held out: :mod:`.loco`); the
acquisition shift, the core on the maps and the core's clusters need a core part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..config import EmbedConfig
from ..embed.cluster import cluster_hdbscan, describe_clusters
from ..embed.compare import Timer, compare_embeddings
from ..models.pumap import ParametricUMAP
from ..novelty.detectors import CoreExcess
from ..plots.data import shift_heatmap
from ..plots.embed import plot_embedding, plot_holdout_comparison, plot_loco_heatmap, plot_train_core
from ..plots.gallery import group_gallery
from ..run.artifacts import Run
from ..run.notebook import Skipped, Stage, step
from ..schema import LABEL, SPLIT
from .loco import (HoldoutPlan, plan_holdouts, save_fold, separation, separation_table, train_without,
                   umap_reducer)
from .spaces import Space, core_predictions, core_sessions, robust_metadata_space

CLUSTER = "cluster"


@dataclass(frozen=True)
class FittedMaps:
    """Both UMAPs of one space, fitted on the training split, and every particle placed on each."""

    labelled: dict[str, pd.DataFrame]  # method -> (N, 2) keyed by particle id
    core: dict[str, pd.DataFrame]
    times: dict[str, dict[str, float]]
    reducers: dict[str, object]


def fit_maps(space: Space, table: pd.DataFrame, cfg: EmbedConfig, *, progress: bool = True) -> FittedMaps:
    """Fit umap-learn and parametric UMAP on the training split; place labelled and core particles on both."""
    train = space.labelled.loc[table.index[table[SPLIT] == "train"]]
    reducers = {
        "umap-learn": umap_reducer(cfg),
        "parametric": ParametricUMAP(n_neighbors=cfg.n_neighbors, min_dist=cfg.min_dist, epochs=cfg.pumap_epochs,
                                     random_state=cfg.seed, device=cfg.device, progress=progress),
    }
    labelled, core, times = {}, {}, {}
    for method, reducer in reducers.items():
        with Timer() as fit_time:
            reducer.fit(train)
        with Timer() as transform_time:
            labelled[method] = reducer.transform(space.labelled)
            if space.core is not None:
                core[method] = reducer.transform(space.core)
        n = len(space.labelled) + (len(space.core) if space.core is not None else 0)
        times[method] = {"fit_s": fit_time.seconds, "transform_s": transform_time.seconds, "transform_n": n}
    return FittedMaps(labelled, core, times, reducers)


def compare_maps(space: Space, maps: FittedMaps, table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Trustworthiness and 2-D kNN accuracy of each map on the test split, with fit/transform times."""
    test = table.index[table[SPLIT] == "test"]
    return compare_embeddings(space.labelled.loc[test], {m: y.loc[test] for m, y in maps.labelled.items()},
                              table.loc[test, LABEL], maps.times, seed=seed)


@dataclass(frozen=True)
class CoreClusters:
    """HDBSCAN clusters of the core on a map fitted jointly with the training split, and what each one is."""

    clusters: pd.Series  # cluster id per core particle (-1 = noise)
    summary: pd.DataFrame  # one row per cluster: size, nearest training class, flags (far, crowd), truth
    core_map: pd.DataFrame
    train_map: pd.DataFrame


def cluster_core(space: Space, table: pd.DataFrame, core_pred: pd.Series, cfg: EmbedConfig,
                 truth: pd.Series | None = None, sessions: pd.Series | None = None) -> CoreClusters:
    """Map core and training particles together (the core keeps its own structure), cluster the core points.

    Each cluster is described in the space itself: nearest training class, distance from training, and the
    members' median core excess (a crowd the training set lacks; groups = notebook 02's predicted classes; with the
    core's ``sessions``, a crowd in the other sessions).
    """
    if space.core is None:
        raise ValueError("this dataset has no core part to cluster")
    train = space.labelled.loc[table.index[table[SPLIT] == "train"]]
    joint = umap_reducer(cfg).fit_transform(
        pd.concat([train, space.core]))
    train_map, core_map = joint.iloc[: len(train)], joint.iloc[len(train):]
    labels = cluster_hdbscan(core_map.to_numpy(), cfg.min_cluster_size, selection=cfg.cluster_selection)
    clusters = pd.Series(np.asarray(labels), index=space.core.index, name=CLUSTER)
    y_train = table.loc[train.index, LABEL].to_numpy()
    excess = CoreExcess(seed=cfg.seed).fit(train.to_numpy(), y_train)
    core_excess = excess.score_samples(space.core.to_numpy(), core_pred.loc[space.core.index].to_numpy(),
                                       None if sessions is None else sessions.loc[space.core.index].to_numpy())
    summary = describe_clusters(space.core.to_numpy(), clusters.to_numpy(), train.to_numpy(), y_train,
                                truth.reindex(space.core.index).to_numpy() if truth is not None else None,
                                excess=core_excess, excess_null=excess.train_scores_)
    return CoreClusters(clusters, summary, core_map, train_map)


def gallery_clusters(summary: pd.DataFrame, n: int = 12) -> list[int]:
    """The clusters worth a look first: flagged ones, then the largest (at most ``n``)."""
    return [int(c) for c in summary.sort_values(["flagged", "size"], ascending=False).index[:n]]


def layout(points: pd.DataFrame, cfg: EmbedConfig) -> pd.DataFrame:
    """A plain umap-learn layout of some points (for looking at a space, not for placing new points)."""
    return umap_reducer(cfg).fit_transform(points)


def save_maps(maps: FittedMaps, run: Run) -> None:
    """Write every particle's coordinates on each map (columns ``<method>_x``, ``<method>_y``): artefact ``maps``."""
    run.write_parts("maps", {
        part: pd.concat([_xy(y, method) for method, y in by_method.items()], axis=1) if by_method else None
        for part, by_method in (("labelled", maps.labelled), ("core", maps.core))
    })


def _xy(coords: pd.DataFrame, method: str) -> pd.DataFrame:
    """A 2-D map's two columns renamed ``<method>_x`` / ``<method>_y``."""
    return coords.set_axis([f"{method}_x", f"{method}_y"], axis=1)


def load_map(run: Run, part: str, method: str = "umap-learn") -> pd.DataFrame:
    """One map's coordinates of the labelled part or the core, as written by :func:`save_maps`."""
    return run.read("maps", part=part)[[f"{method}_x", f"{method}_y"]]


def metrics(comparison: pd.DataFrame, loco_table: pd.DataFrame, clusters: CoreClusters | Skipped) -> dict[str, Any]:
    """Notebook 04's numbers for metrics.json (without a core, no cluster numbers)."""
    numbers = {
        "map_comparison": comparison.to_dict(orient="index"),
        "loco": {f"{h}/{s}": row for (h, s), row in loco_table.to_dict(orient="index").items()},
    }
    if isinstance(clusters, CoreClusters):
        summary = clusters.summary
        numbers["core_clusters"] = {
            "n_clusters": int(len(summary)), "noise_fraction": float((clusters.clusters < 0).mean()),
            "flagged": summary.reset_index().loc[summary["flagged"].to_numpy()].to_dict(orient="records")}
    return numbers


CORE = {"core": True, "to": "map and cluster the core"}


@step("the core's predicted classes", **CORE)
def core_classes(stage: Stage) -> pd.Series:
    """Notebook 02's predicted class of every core particle."""
    return core_predictions(stage.run)["pred"]


@step("the lab -> core feature shift", core=True,
      to="leave the features that measure the instrument out of the metadata space")
def acquisition_shift(stage: Stage, core_pred: pd.Series) -> Figure:
    """The class-conditional lab -> core shift of each feature; those above ``max_feature_shift`` are left out."""
    shift = robust_metadata_space(stage.bundle, core_pred, stage.cfg.max_feature_shift, stage.cfg.align_sessions)[1]
    print("left out of the metadata space:", list(shift.index[~shift["kept"]]))
    return shift_heatmap(shift, stage.cfg.max_feature_shift, names=stage.bundle.classes,
                         path=stage.figure("04_metadata_acquisition_shift.png"))


@step("the core on the maps", **CORE)
def train_core_maps(stage: Stage, fitted: FittedMaps, core_pred: pd.Series) -> list[Figure]:
    """Each map with the training split by class beside the core by predicted class."""
    return [plot_train_core(fitted.labelled[method], stage.table[LABEL], fitted.core[method],
                            core_pred.reindex(fitted.core[method].index), names=stage.bundle.classes,
                            path=stage.figure(f"04_{method}_train_core.png"))
            for method in fitted.labelled]


def space_maps(stage: Stage, embedding: dict[str, Space], fitted: FittedMaps) -> list[Figure]:
    """The CNN, autoencoder and metadata spaces side by side (umap-learn layouts coloured by true class)."""
    figures = []
    for name, space in embedding.items():
        labelled_map = fitted.labelled["umap-learn"] if name == "cnn" else layout(space.labelled, stage.cfg)
        figures.append(plot_embedding(labelled_map, stage.table[LABEL], title=f"{name} space",
                                      names=stage.bundle.classes, path=stage.figure(f"04_umap_{name}.png")))
    return figures


def holdout_plan(stage: Stage) -> HoldoutPlan:
    """The classes this run holds out in turn (``holdout_classes`` or the data's own, see :mod:`.loco`)."""
    return plan_holdouts(stage.table, list(stage.bundle.classes), stage.cfg.holdout_classes)


def leave_one_class_out(stage: Stage, reference_map: pd.DataFrame,
                        show: Callable[[object], object] = print) -> pd.DataFrame | Skipped:
    """Per held-out class: CNN and autoencoder trained without it (their outputs saved for notebook 05), its
    separation in each space, and its map beside the all-class one (passed to ``show`` as each fold ends, after
    the classes that could not be held out)."""
    plan = holdout_plan(stage)
    print(f"held out in turn: {', '.join(plan.classes) or 'no class'} ({plan.rule})")
    for skipped in plan.skipped:
        show(skipped)
    if not plan.classes:
        return Skipped("leave-one-class-out", "no class of this dataset can be held out (see above)")
    rows = []
    for holdout in plan.classes:
        fold = train_without(stage.bundle, stage.cfg, holdout, stage.run)
        save_fold(fold, stage.run)
        fold_rows, fold_maps = separation(fold, stage.table, stage.cfg)
        rows += fold_rows
        show(plot_holdout_comparison(fold_maps["cnn"], reference_map, stage.table[LABEL], holdout,
                                     names=stage.bundle.classes,
                                     path=stage.figure(f"04_loco_{holdout}_without_vs_with.png")))
    return separation_table(rows)


@step("the leave-one-class-out heat map")
def loco_heatmap(stage: Stage, loco: pd.DataFrame, space: str) -> Figure:
    """The separation metrics of every held-out class in one space."""
    return plot_loco_heatmap(loco.xs(space, level="space").reset_index(), names=stage.bundle.classes,
                             path=stage.figure(f"04_loco_heatmap_{space}.png"))


@step("the core's clusters", **CORE)
def core_clusters(stage: Stage, embedding: dict[str, Space], core_pred: pd.Series) -> CoreClusters:
    """The core clustered in the ``cluster_space`` space (with the truth beside each cluster where known)."""
    sessions = core_sessions(stage.bundle) if stage.cfg.excess_across_sessions else None
    clusters = cluster_core(embedding[stage.cfg.cluster_space], stage.table, core_pred, stage.cfg,
                            truth=stage.bundle.truth, sessions=sessions)
    print(f"{len(clusters.summary)} clusters, {(clusters.clusters < 0).mean():.0%} of the core unclustered")
    return clusters


@step("the core's cluster table", **CORE)
def cluster_table(stage: Stage, clusters: CoreClusters) -> pd.DataFrame:
    """One row per cluster, the flagged ones first, then the largest."""
    return clusters.summary.sort_values(["flagged", "size"], ascending=False).round(3)


@step("the core's cluster map", **CORE)
def cluster_map(stage: Stage, clusters: CoreClusters) -> Figure:
    """The core's joint map coloured by cluster."""
    return plot_embedding(clusters.core_map, clusters.clusters.astype(str), title="core clusters (HDBSCAN; -1 = noise)",
                          path=stage.figure("04_core_clusters.png"))


@step("the core's cluster gallery", **CORE)
def cluster_gallery(stage: Stage, clusters: CoreClusters, core_pred: pd.Series) -> Figure:
    """A sample of each core cluster worth a look: the flagged ones, then the largest."""
    clustered = stage.bundle.core.table.join(clusters.clusters).join(core_pred)
    shown = clustered[clustered[CLUSTER].isin(gallery_clusters(clusters.summary))]
    return group_gallery(stage.bundle.core.images, shown, by=CLUSTER, per_group=8, caption_columns=("pred",),
                         seed=stage.cfg.seed, title="Core clusters: the flagged ones, then the largest (a sample of each)",
                         path=stage.figure("04_core_cluster_gallery.png"))


def save(stage: Stage, fitted: FittedMaps, clusters: CoreClusters | Skipped, loco: pd.DataFrame | Skipped,
         comparison: pd.DataFrame) -> None:
    """The maps, the core's clusters and their summary, the LOCO table (empty when no class was held out: notebook
    05 reads which were), and notebook 04's metrics."""
    save_maps(fitted, stage.run)
    if isinstance(clusters, CoreClusters):
        stage.run.write("core_clusters", clusters.clusters.to_frame())
        stage.run.write("core_cluster_summary", clusters.summary)
    loco_table = separation_table([]) if isinstance(loco, Skipped) else loco
    stage.run.write("loco_separation", loco_table)
    stage.run.update_metrics("04_umap", metrics(comparison, loco_table, clusters))
