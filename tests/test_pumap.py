"""ParametricUMAP in torch: separates blobs, deterministic, batch-invariant, lossless save/load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from sklearn.neighbors import KNeighborsClassifier

from icecore_lib.models.pumap import ParametricUMAP, sample_edges


def blobs(n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated 16-D Gaussian classes with fixed centres (new seeds = new draws, same classes)."""
    centers = np.random.default_rng(42).normal(scale=6.0, size=(3, 16))
    y = np.repeat(np.arange(3), n_per_class)
    X = centers[y] + np.random.default_rng(seed).normal(size=(len(y), 16))
    return X.astype(np.float32), y


def small_model(seed: int = 0) -> ParametricUMAP:
    """A few-epoch CPU model that trains in well under a second on 150 points."""
    return ParametricUMAP(n_neighbors=10, hidden=(64, 64), epochs=8, batch_size=256, random_state=seed, device="cpu")


@pytest.fixture(scope="module")
def fitted() -> tuple[ParametricUMAP, np.ndarray, np.ndarray]:
    """One model fitted on 3 blobs of 50 points."""
    X, y = blobs(50)
    return small_model().fit(X), X, y


def test_separates_blobs_and_maps_new_points_to_their_class(fitted):
    model, X, y = fitted
    X_new, y_new = blobs(20, seed=1)
    knn = KNeighborsClassifier(n_neighbors=5).fit(model.transform(X), y)
    assert (knn.predict(model.transform(X_new)) == y_new).mean() >= 0.95


def test_training_lowers_the_umap_loss(fitted):
    model, _, _ = fitted
    assert model.loss_history_[-1] < 0.7 * model.loss_history_[0]


def test_same_seed_same_map_other_seed_other_map(fitted):
    model, X, _ = fitted
    np.testing.assert_array_equal(small_model().fit(X).transform(X), model.transform(X))
    assert not np.allclose(small_model(seed=1).fit(X).transform(X), model.transform(X))


def test_fit_leaves_global_torch_rng_alone(fitted):
    _, X, _ = fitted
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    small_model().fit(X)
    assert torch.equal(torch.rand(3), expected)


def test_batched_transform_equals_one_pass(fitted):
    model, X, _ = fitted
    np.testing.assert_allclose(model.transform(X, batch_size=7), model.transform(X), rtol=0, atol=1e-5)


def test_save_load_roundtrip_is_identical(fitted, tmp_path):
    model, X, _ = fitted
    path = model.save(tmp_path / "pumap.safetensors")
    loaded = ParametricUMAP.load(path)
    np.testing.assert_array_equal(loaded.transform(X), model.transform(X))
    assert loaded.get_params()["hidden"] == (64, 64) and loaded.loss_history_ == model.loss_history_
    assert list(tmp_path.iterdir()) == [path]


def test_load_rejects_other_safetensors(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="other.safetensors"):
        ParametricUMAP.load(tmp_path / "other.safetensors")


def test_dataframe_in_gives_frame_on_particle_ids(fitted):
    model, X, _ = fitted
    frame = pd.DataFrame(X[:4], index=pd.Index([f"p{i}" for i in range(4)], name="particle_id"))
    out = model.transform(frame)
    assert out.index.equals(frame.index) and list(out.columns) == ["umap_1", "umap_2"]


def test_transform_rejects_wrong_width(fitted):
    model, X, _ = fitted
    with pytest.raises(ValueError, match="16"):
        model.transform(X[:, :3])


def test_edges_are_sampled_in_proportion_to_weight():
    weight = torch.tensor([1.0, 3.0, 6.0])
    draws = sample_edges(weight, 60000, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(np.bincount(draws.numpy(), minlength=3) / 60000, [0.1, 0.3, 0.6], atol=0.01)
