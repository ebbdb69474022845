"""UMAPReducer, compare_embeddings and the embedding figures, on tiny synthetic blobs."""

from __future__ import annotations

import joblib
import numpy as np
import pandas as pd
import pynndescent
import pytest
from sklearn.neighbors import KNeighborsClassifier

from icecore_lib.embed.compare import compare_embeddings
from icecore_lib.embed.umap import UMAPReducer
from icecore_lib.frames import as_matrix
from icecore_lib.knn import ExactIndex
from icecore_lib.plots.embed import plot_embedding, plot_holdout_comparison, plot_loco_heatmap, plot_train_core


def blobs(n_per_class: int, dim: int = 10, seed: int = 0, centers_seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated Gaussian classes; the same centres for every seed so new draws share classes."""
    centers = np.random.default_rng(centers_seed).normal(scale=8.0, size=(3, dim))
    y = np.repeat(np.array(["camp", "dust", "qrob"]), n_per_class)
    codes = np.repeat(np.arange(3), n_per_class)
    X = centers[codes] + np.random.default_rng(seed).normal(size=(len(y), dim))
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def fitted() -> tuple[UMAPReducer, np.ndarray, np.ndarray, np.ndarray]:
    """One reducer fitted on 150 points (umap-learn's JIT warm-up is paid once per module)."""
    X, y = blobs(50)
    reducer = UMAPReducer(n_neighbors=10, n_epochs=100, random_state=0)
    Y = reducer.fit_transform(X)
    return reducer, X, y, Y


def test_umap_places_new_points_near_their_class(fitted):
    reducer, _, y, Y = fitted
    X_new, y_new = blobs(10, seed=1)
    knn = KNeighborsClassifier(n_neighbors=5).fit(Y, y)
    assert (knn.predict(reducer.transform(X_new)) == y_new).mean() >= 0.95


def test_umap_save_load_gives_same_transform(fitted, tmp_path):
    reducer, X, _, _ = fitted
    path = reducer.save(tmp_path / "umap.joblib")
    loaded = UMAPReducer.load(path)
    np.testing.assert_array_equal(loaded.transform(X[:20]), reducer.transform(X[:20]))
    assert list(tmp_path.iterdir()) == [path]  # atomic write leaves no temp file


def test_umap_load_rejects_foreign_pickle(tmp_path):
    joblib.dump({"not": "a reducer"}, tmp_path / "other.joblib")
    with pytest.raises(TypeError, match="other.joblib"):
        UMAPReducer.load(tmp_path / "other.joblib")


def test_dataframe_in_gives_frame_on_particle_ids(fitted):
    reducer, X, _, _ = fitted
    frame = pd.DataFrame(X[:5], index=pd.Index([f"img/{i}.png" for i in range(5)], name="particle_id"))
    out = reducer.transform(frame)
    assert list(out.index) == list(frame.index) and list(out.columns) == ["umap_1", "umap_2"]


def test_transform_rejects_wrong_width(fitted):
    reducer, X, _, _ = fitted
    with pytest.raises(ValueError, match="10"):
        reducer.transform(X[:, :4])


def test_bad_row_is_named():
    frame = pd.DataFrame(np.ones((3, 2)), index=pd.Index(["a.png", "b.png", "c.png"], name="particle_id"))
    frame.iloc[1, 0] = np.nan
    with pytest.raises(ValueError, match="b.png"):
        as_matrix(frame)


def test_compare_embeddings_ranks_faithful_map_above_noise():
    rng = np.random.default_rng(0)
    Y_true, y = blobs(40, dim=2)
    X_high = Y_true @ rng.normal(size=(2, 12)).astype(np.float32)
    maps = {"faithful": Y_true, "noise": rng.normal(size=Y_true.shape)}
    table = compare_embeddings(X_high, maps, y, times={"faithful": {"fit_s": 1.5}}, max_points=100)
    assert table.loc["faithful", "trustworthiness"] > table.loc["noise", "trustworthiness"] + 0.2
    assert table.loc["faithful", "knn_accuracy_2d"] > 0.95
    assert table.loc["noise", "knn_accuracy_2d"] < 0.6
    assert table.loc["faithful", "fit_s"] == 1.5 and np.isnan(table.loc["noise", "fit_s"])


def test_compare_embeddings_names_a_misaligned_method():
    X, y = blobs(10)
    with pytest.raises(ValueError, match="'short'"):
        compare_embeddings(X, {"short": X[:5, :2]}, y)


def test_embedding_figures_are_written(tmp_path):
    Y, y = blobs(30, dim=2)
    y = np.where(np.arange(len(y)) % 9 == 0, "diatom", y)
    fig = plot_embedding(Y, y, highlight="diatom", path=tmp_path / "map.png")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("Diatom (new) (held out)") for t in legend)
    plot_holdout_comparison(Y, Y[::-1], y, "diatom", path=tmp_path / "loco_maps.png")
    both = plot_train_core(Y[:40], y[:40], Y, y, path=tmp_path / "train_core.png")
    assert both.axes[0].get_xlim() == both.axes[1].get_xlim()  # the same map, the same frame
    loco = pd.DataFrame({"holdout_class": ["dust", "qrob"], "knn_purity": [0.9, 0.4], "distance_auroc": [0.95, 0.6]})
    heat = plot_loco_heatmap(loco, metrics=("knn_purity", "distance_auroc"), path=tmp_path / "loco.png")
    assert [t.get_text() for t in heat.axes[0].get_yticklabels()] == ["Dust", "Pollen #2 Q. robur"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loco.png", "loco_maps.png", "map.png", "train_core.png"]


def test_umap_above_nn_descents_size_uses_exact_neighbours_and_still_transforms(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("NN-descent was built: every fresh process would compile it again (~30 s)")

    monkeypatch.setattr(pynndescent.NNDescent, "__init__", refuse)
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (3, 8))
    labels = np.repeat(np.arange(3), 1400)  # 4,200 points: above umap-learn's 4,096-point exact cut
    X = centres[labels] + rng.normal(0, 1, (len(labels), 8))
    reducer = UMAPReducer(n_neighbors=10, n_epochs=50).fit(X)
    new = centres[[0, 1, 2]] + rng.normal(0, 1, (3, 8))
    knn = KNeighborsClassifier(5).fit(reducer.umap_.embedding_, labels)
    assert list(knn.predict(reducer.transform(new))) == [0, 1, 2]


def test_exact_index_finds_each_points_true_neighbours():
    X = np.random.default_rng(1).normal(size=(300, 5)).astype(np.float32)
    idx, dist = ExactIndex(X).neighbour_graph(4)
    brute = np.linalg.norm(X[:, None] - X[None], axis=2)
    assert (idx[:, 0] == np.arange(300)).all() and idx.dtype == np.int32
    np.testing.assert_allclose(dist, np.sort(brute, axis=1)[:, :4], atol=1e-4)
