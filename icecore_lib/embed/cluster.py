"""Clusters in embeddings, how they match known classes, and leave-one-class-out separation metrics.

The question behind every function: does a class the model never saw stand apart in its embedding
(its own neighbourhood, far from the training data, its own cluster)? Labels are class-key strings;
cluster label -1 is HDBSCAN's noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import HDBSCAN
from sklearn.metrics import adjusted_rand_score, roc_auc_score
from sklearn.neighbors import NearestNeighbors

from ..frames import ArrayOrFrame, as_matrix
from ..novelty.detectors import KNNDistance

NOISE = -1
Labels = Sequence[Any] | np.ndarray | pd.Series
_CLUSTER_COLUMNS = (
    "cluster", "size", "nearest_class", "vote_share", "relative_distance", "median_nn_distance", "far_from_training",
)


def _labels(values: Labels, n: int, name: str) -> np.ndarray:
    """Labels as a 1-D array, checked against the number of points."""
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{name} must be 1-D with {n} entries (one per point), got shape {arr.shape}")
    return arr


def cluster_hdbscan(Y: ArrayOrFrame, min_cluster_size: int = 20, min_samples: int | None = None,
                    selection: str = "eom") -> ArrayOrFrame:
    """HDBSCAN cluster ids (-1 = noise); a DataFrame in gives a Series on its particle_id index.

    ``selection="eom"`` keeps the most persistent (often large) clusters, ``"leaf"`` the leaves of the
    cluster tree: small homogeneous groups, the scale at which a rare new particle type forms its own.
    """
    values, index = as_matrix(Y, "Y")
    if len(values) < min_cluster_size:
        raise ValueError(f"Y has {len(values)} points, fewer than min_cluster_size={min_cluster_size}")
    if selection not in ("eom", "leaf"):
        raise ValueError(f"selection must be 'eom' or 'leaf', got {selection!r}")
    ids = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples, cluster_selection_method=selection,
                  copy=True).fit_predict(values)
    return ids if index is None else pd.Series(ids, index=index, name="cluster")


def cluster_vs_labels(cluster_labels: Labels, true_labels: Labels) -> dict[str, Any]:
    """ARI (noise counted as one group) and, per true class, the best-matching cluster with purity and recall.

    The best match maximises F1 of purity (share of the cluster that is the class) and recall (share of
    the class inside the cluster), so a giant catch-all cluster does not win; noise is never a match.
    """
    clusters = np.asarray(cluster_labels)
    truth = _labels(true_labels, len(clusters), "true_labels").astype(str)
    counts = pd.crosstab(pd.Series(truth, name="truth"), pd.Series(clusters, name="cluster"))
    counts = counts.drop(columns=[NOISE], errors="ignore")
    classes = {}
    for cls, row in counts.iterrows():
        classes[str(cls)] = _best_match(row, counts.sum(axis=0), int((truth == cls).sum()))
    return {"ari": float(adjusted_rand_score(truth, clusters)), "classes": classes}


def _best_match(row: pd.Series, cluster_sizes: pd.Series, class_size: int) -> dict[str, Any]:
    """The cluster with the best purity/recall F1 for one class's counts per cluster."""
    if row.sum() == 0:
        return {"cluster": NOISE, "purity": 0.0, "recall": 0.0, "f1": 0.0, "class_size": class_size}
    purity = row / cluster_sizes
    recall = row / class_size
    f1 = (2 * purity * recall / (purity + recall)).fillna(0.0)
    best = f1.idxmax()
    return {
        "cluster": int(best),
        "purity": float(purity[best]),
        "recall": float(recall[best]),
        "f1": float(f1[best]),
        "class_size": class_size,
    }


def knn_purity(X: ArrayOrFrame, labels: Labels, query_mask: Labels, k: int = 10) -> float:
    """Mean share of each query point's ``k`` nearest other points that carry its own label.

    With ``query_mask = labels == held_out`` this is the fraction of a held-out point's neighbours that are
    also held out; chance level is the held-out class's share of the data.
    """
    values, _ = as_matrix(X)
    labels = _labels(labels, len(values), "labels").astype(str)
    mask = _labels(query_mask, len(values), "query_mask").astype(bool)
    if not mask.any():
        raise ValueError("query_mask selects no points")
    if len(values) <= k:
        raise ValueError(f"X has {len(values)} points; knn_purity needs more than k={k}")
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(values).kneighbors(values[mask])
    neighbours = _drop_self(idx, np.flatnonzero(mask))
    return float((labels[neighbours] == labels[mask][:, None]).mean())


def _drop_self(idx: np.ndarray, query_rows: np.ndarray) -> np.ndarray:
    """The ``k`` neighbours of each query row from ``k + 1`` found, removing the row itself (or the farthest)."""
    is_self = idx == query_rows[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    return idx[~is_self].reshape(len(idx), idx.shape[1] - 1)


def distance_auroc(X_ref: ArrayOrFrame, X_query: ArrayOrFrame, is_novel: Labels, k: int = 10) -> float:
    """AUROC of the mean kNN distance to the reference set at telling novel query points from known (0.5 = chance)."""
    ref, _ = as_matrix(X_ref, "X_ref")
    query, _ = as_matrix(X_query, "X_query")
    novel = _labels(is_novel, len(query), "is_novel").astype(bool)
    if novel.all() or not novel.any():
        raise ValueError("is_novel must hold both novel and known query points for an AUROC")
    return float(roc_auc_score(novel, KNNDistance(k, progress=False).fit(ref).score_samples(query)))


def holdout_separation(
    X: ArrayOrFrame,
    labels: Labels,
    holdout_class: str,
    *,
    k: int = 10,
    ref_mask: Labels | None = None,
    ref_fraction: float = 0.5,
    Y: ArrayOrFrame | None = None,
    min_cluster_size: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """One leave-one-class-out row: how well a class the model never saw separates in an embedding.

    ``X`` embeds points of all classes with a model trained without ``holdout_class``. The reference set
    for the distance AUROC is ``ref_mask`` (e.g. the training split) or else a random ``ref_fraction`` of
    the known classes; the query set is every other point. Clusters are found on ``Y`` (e.g. the 2-D
    map) when given, else on ``X``.
    """
    values, _ = as_matrix(X)
    labels = _labels(labels, len(values), "labels").astype(str)
    held = labels == holdout_class
    if not held.any():
        raise ValueError(f"holdout class {holdout_class!r} has no points; classes: {sorted(set(labels))}")
    ref = _reference_mask(held, ref_mask, ref_fraction, seed)
    clusters = cluster_hdbscan(values if Y is None else as_matrix(Y, "Y")[0], min_cluster_size)
    match = cluster_vs_labels(clusters, labels)
    best = match["classes"][holdout_class]
    return {
        "holdout_class": holdout_class,
        "n_holdout": int(held.sum()),
        "holdout_share": float(held.mean()),
        "knn_purity": knn_purity(values, labels, held, k),
        "distance_auroc": distance_auroc(values[ref], values[~ref], held[~ref], k),
        "cluster_purity": best["purity"],
        "cluster_recall": best["recall"],
        "ari": match["ari"],
        "n_clusters": int(len(set(clusters.tolist()) - {NOISE})),
    }


def _reference_mask(held: np.ndarray, ref_mask: Labels | None, ref_fraction: float, seed: int) -> np.ndarray:
    """Known-class points used as the reference; held-out points never are."""
    if ref_mask is not None:
        ref = _labels(ref_mask, len(held), "ref_mask").astype(bool)
        if (ref & held).any():
            raise ValueError("ref_mask includes points of the holdout class; the reference must be known classes")
    else:
        if not 0 < ref_fraction < 1:
            raise ValueError(f"ref_fraction must be in (0, 1), got {ref_fraction}")
        ref = ~held & (np.random.default_rng(seed).random(len(held)) < ref_fraction)
    if not ref.any() or (~ref & ~held).sum() == 0:
        raise ValueError("the reference and the query set both need known-class points")
    return ref


def describe_clusters(
    X: ArrayOrFrame,
    cluster_labels: Labels,
    X_train: ArrayOrFrame,
    y_train: Labels,
    truth: Labels | None = None,
    *,
    k: int = 10,
    far_quantile: float = 0.99,
    excess: Labels | None = None,
    excess_null: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per cluster (noise excluded): size, nearest training class, and whether it is flagged as new.

    ``nearest_class`` is the majority vote of the members' ``k`` nearest training points (``vote_share`` its
    share); ``relative_distance`` is the distance between the cluster's and that class's centroids over the
    class's own spread (RMS distance of its points to its centroid). ``far_from_training`` is set when the
    members' median distance to their nearest training point exceeds the ``far_quantile`` of the training
    points' own nearest-neighbour distances. With ``excess`` (each point's :class:`~icecore_lib.novelty.CoreExcess`
    score) and its null distribution ``excess_null``, ``median_excess`` is the members' median and
    ``crowd_in_core`` is set when it exceeds the ``far_quantile`` of the null: the core holds a crowd there that
    the training set lacks. ``flagged`` is either. ``dominant_truth`` / ``truth_share`` need ``truth``.
    """
    values, _ = as_matrix(X)
    train, _ = as_matrix(X_train, "X_train")
    y_train = _labels(y_train, len(train), "y_train").astype(str)
    clusters = _labels(cluster_labels, len(values), "cluster_labels")
    truth_arr = None if truth is None else _labels(truth, len(values), "truth").astype(str)
    index = NearestNeighbors(n_neighbors=max(k, 2)).fit(train)
    threshold = float(np.quantile(index.kneighbors(train, n_neighbors=2)[0][:, 1], far_quantile))
    excess_arr = None if excess is None else _labels(excess, len(values), "excess").astype(np.float64)
    if (excess_arr is None) != (excess_null is None):
        raise ValueError("pass excess and excess_null together")
    crowd_threshold = None if excess_null is None else float(np.quantile(excess_null, far_quantile))
    centroids, spreads = _class_geometry(train, y_train)
    dist, idx = index.kneighbors(values, n_neighbors=k)
    rows = []
    for cluster in sorted(set(clusters.tolist()) - {NOISE}):
        members = clusters == cluster
        votes = pd.Series(y_train[idx[members]].ravel()).value_counts(normalize=True)
        nearest = str(votes.index[0])
        gap = float(np.linalg.norm(values[members].mean(axis=0) - centroids.loc[nearest].to_numpy()))
        median_nn = float(np.median(dist[members, 0]))
        row = {
            "cluster": cluster,
            "size": int(members.sum()),
            "nearest_class": nearest,
            "vote_share": float(votes.iloc[0]),
            "relative_distance": gap / spreads[nearest],
            "median_nn_distance": median_nn,
            "far_from_training": median_nn > threshold,
        }
        if excess_arr is not None:
            row["median_excess"] = float(np.median(excess_arr[members]))
            row["crowd_in_core"] = row["median_excess"] > crowd_threshold
        row["flagged"] = row["far_from_training"] or row.get("crowd_in_core", False)
        if truth_arr is not None:
            shares = pd.Series(truth_arr[members]).value_counts(normalize=True)
            row |= {"dominant_truth": str(shares.index[0]), "truth_share": float(shares.iloc[0])}
        rows.append(row)
    columns = [*_CLUSTER_COLUMNS, *([] if excess_arr is None else ["median_excess", "crowd_in_core"]), "flagged",
               *([] if truth_arr is None else ["dominant_truth", "truth_share"])]
    return pd.DataFrame(rows, columns=columns).set_index("cluster")


def _class_geometry(X: np.ndarray, y: np.ndarray) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per-class centroids and spreads (RMS distance to the centroid; a point class gets spread 1e-12)."""
    frame = pd.DataFrame(X).assign(_y=y)
    centroids = frame.groupby("_y").mean()
    spreads = {}
    for cls, centroid in centroids.iterrows():
        diffs = X[y == cls] - centroid.to_numpy()
        spreads[str(cls)] = max(float(np.sqrt((diffs**2).sum(axis=1).mean())), 1e-12)
    return centroids, spreads


__all__ = [
    "NOISE",
    "cluster_hdbscan",
    "cluster_vs_labels",
    "describe_clusters",
    "distance_auroc",
    "holdout_separation",
    "knn_purity",
]
