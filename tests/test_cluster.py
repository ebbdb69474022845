"""Clustering, cluster-vs-class matching and leave-one-class-out separation metrics on tiny Gaussian data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from icecore_lib.embed.cluster import (
    cluster_hdbscan,
    cluster_vs_labels,
    describe_clusters,
    distance_auroc,
    holdout_separation,
    knn_purity,
)


def gaussian_classes(
    offsets: dict[str, float], n: int = 60, dim: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit-Gaussian points per class, each class shifted by its offset along every axis."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(size=(n, dim)) + off for off in offsets.values()])
    return X.astype(np.float32), np.repeat(np.array(list(offsets)), n)


SEPARATED = {"camp": 0.0, "dust": 10.0, "diatom": -10.0}
MIXED = {"camp": 0.0, "dust": 10.0, "diatom": 0.0}  # the "new" class is drawn from camp's distribution


def test_identical_labels_match_perfectly():
    truth = np.array(["a", "a", "b", "b", "c", "c"])
    result = cluster_vs_labels(np.array([5, 5, 1, 1, 2, 2]), truth)
    assert result["ari"] == pytest.approx(1.0)
    assert {c: (m["purity"], m["recall"]) for c, m in result["classes"].items()} == {
        "a": (1.0, 1.0), "b": (1.0, 1.0), "c": (1.0, 1.0)
    }
    assert result["classes"]["a"]["cluster"] == 5


def test_random_clusters_have_no_agreement():
    rng = np.random.default_rng(0)
    truth = rng.choice(["a", "b", "c"], size=3000)
    assert abs(cluster_vs_labels(rng.integers(0, 3, size=3000), truth)["ari"]) < 0.02


def test_catch_all_cluster_is_not_the_best_match():
    truth = np.array(["a"] * 10 + ["b"] * 90)
    clusters = np.array([0] * 8 + [1] * 92)  # cluster 1 holds all of b and 2 of a
    assert cluster_vs_labels(clusters, truth)["classes"]["a"]["cluster"] == 0


def test_hdbscan_recovers_separated_classes_and_keeps_particle_ids():
    X, y = gaussian_classes(SEPARATED)
    frame = pd.DataFrame(X, index=pd.Index([f"p{i}" for i in range(len(X))], name="particle_id"))
    clusters = cluster_hdbscan(frame, min_cluster_size=10)
    assert clusters.index.equals(frame.index)
    assert cluster_vs_labels(clusters, y)["ari"] > 0.9


@pytest.mark.parametrize(("offsets", "low", "high"), [(SEPARATED, 0.95, 1.0), (MIXED, 0.4, 0.6)])
def test_knn_purity_and_distance_auroc(offsets, low, high):
    X, y = gaussian_classes(offsets, n=150)
    held = y == "diatom"
    assert low <= knn_purity(X, y, held, k=10) <= high
    ref = (y != "diatom") & (np.arange(len(y)) % 2 == 0)
    assert low <= distance_auroc(X[ref], X[~ref], held[~ref], k=10) <= high


def test_holdout_separation_row():
    X, y = gaussian_classes(SEPARATED)
    row = holdout_separation(X, y, "diatom", k=10, min_cluster_size=10)
    assert row["n_holdout"] == 60 and row["holdout_share"] == pytest.approx(1 / 3)
    assert min(row["knn_purity"], row["distance_auroc"], row["cluster_purity"], row["cluster_recall"]) > 0.9


def test_holdout_separation_refuses_holdout_in_reference():
    X, y = gaussian_classes(SEPARATED)
    with pytest.raises(ValueError, match="holdout class"):
        holdout_separation(X, y, "diatom", ref_mask=np.ones(len(y), dtype=bool))
    with pytest.raises(ValueError, match="'pollen'"):
        holdout_separation(X, y, "pollen")


def test_describe_clusters_flags_the_far_cluster():
    X_train, y_train = gaussian_classes({"camp": 0.0, "dust": 10.0}, n=100)
    X_core, truth = gaussian_classes(SEPARATED, n=40, seed=1)
    clusters = np.select([truth == "camp", truth == "dust"], [0, 1], default=2)
    clusters[:3] = -1  # noise gets no row
    table = describe_clusters(X_core, clusters, X_train, y_train, truth=truth)
    assert list(table.index) == [0, 1, 2]
    assert table["far_from_training"].tolist() == [False, False, True]
    assert table.loc[[0, 1], "nearest_class"].tolist() == ["camp", "dust"]
    assert table.loc[2, "dominant_truth"] == "diatom" and table.loc[0, "size"] == 37
    assert table.loc[2, "relative_distance"] > 3 * table.loc[0, "relative_distance"]


def test_describe_clusters_flags_a_crowd_the_training_set_lacks():
    X_train, y_train = gaussian_classes({"camp": 0.0, "dust": 10.0}, n=100)
    X_core, truth = gaussian_classes(MIXED, n=40, seed=1)
    clusters = np.select([truth == "camp", truth == "dust"], [0, 1], default=2)
    excess = np.where(truth == "diatom", 1.0, 0.0) + np.random.default_rng(2).normal(0, 0.05, len(truth))
    null = np.random.default_rng(3).normal(0, 0.1, 500)
    table = describe_clusters(X_core, clusters, X_train, y_train, truth=truth, excess=excess, excess_null=null)
    assert table["far_from_training"].tolist() == [False, False, False]  # the new type sits among camp
    assert table["crowd_in_core"].tolist() == [False, False, True]
    assert table["flagged"].tolist() == [False, False, True]
    assert table.loc[2, "median_excess"] == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="together"):
        describe_clusters(X_core, clusters, X_train, y_train, excess=excess)


def test_leaf_selection_keeps_a_tight_group_at_the_edge_of_a_big_one_as_its_own_cluster():
    rng = np.random.default_rng(0)
    big = rng.normal(0, 1, (300, 2))
    small = rng.normal(0, 0.1, (40, 2)) + np.array([2.2, 0.0])  # a tight group at the edge of a big one
    Y = np.vstack([big, small])
    leaf = cluster_hdbscan(Y, min_cluster_size=20, selection="leaf")
    in_small = pd.Series(leaf[300:]).value_counts()
    assert in_small.index[0] >= 0 and in_small.iloc[0] >= 30
    assert (leaf[:300] == in_small.index[0]).sum() < 10
    with pytest.raises(ValueError, match="selection"):
        cluster_hdbscan(Y, selection="tree")
