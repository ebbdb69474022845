"""XGBoost BDT on FlowCam features: fits, searches its space, explains with SHAP, saves and reloads."""

import json

import numpy as np
import pandas as pd
import pytest

from icecore_lib.models.bdt import SEARCH_SPACE, BDTClassifier, search
from icecore_lib.plots.classify import plot_feature_importance, plot_shap_bar, plot_shap_beeswarm
from icecore_lib.schema import FLOWCAM_FEATURES, PARTICLE_ID

CLASSES = ["camp", "dust", "grim"]


def _blobs(n_per_class: int = 40, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A feature table with 34 FlowCam columns: the first three carry the class, the rest are noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(CLASSES, n_per_class)
    X = rng.normal(size=(len(y), len(FLOWCAM_FEATURES)))
    X[:, :3] += 4 * np.repeat(np.eye(3), n_per_class, axis=0)
    index = pd.Index([f"part/p{i:04d}.png" for i in range(len(y))], name=PARTICLE_ID)
    return pd.DataFrame(X, columns=FLOWCAM_FEATURES, index=index), y


def _small(**params) -> BDTClassifier:
    """A quick CPU model for tests."""
    return BDTClassifier(**{"n_estimators": 30, "max_depth": 3, "device": "cpu", "n_jobs": 1, **params})


@pytest.fixture(scope="module")
def fitted() -> tuple[BDTClassifier, pd.DataFrame, np.ndarray]:
    X, y = _blobs()
    return _small().fit(X.iloc[::2], y[::2], eval_set=(X.iloc[1::2], y[1::2])), X, y


def test_fits_blobs_with_high_accuracy_and_probabilities_sum_to_one(fitted):
    model, X, y = fitted
    held_out = X.iloc[1::2]
    assert list(model.classes_) == CLASSES
    assert np.mean(model.predict(held_out) == y[1::2]) > 0.9
    np.testing.assert_allclose(model.predict_proba(held_out).sum(axis=1), 1.0, atol=1e-5)
    frame = model.predict_proba_frame(held_out)
    assert frame.index.equals(held_out.index) and list(frame.columns) == CLASSES


def test_defaults_are_the_studys_optimum():
    model = BDTClassifier()
    assert (model.eta, model.max_depth, model.n_estimators) == (0.296, 14, 200)


def test_early_stopping_keeps_only_the_useful_rounds():
    X, y = _blobs()
    model = _small(n_estimators=300, early_stopping_rounds=5).fit(X.iloc[::2], y[::2], eval_set=(X.iloc[1::2], y[1::2]))
    assert model.booster_.num_boosted_rounds() < 300
    assert {"merror", "mlogloss"} <= set(model.evals_result_["val"])


def test_softmax_of_logits_is_predict_proba(fitted):
    model, X, _ = fitted
    logits = model.predict_logits(X)
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(softmax, model.predict_proba(X), atol=1e-5)


def test_informative_features_rank_first(fitted):
    model, _, _ = fitted
    importance = model.feature_importance()
    assert set(importance.index[:3]) == set(FLOWCAM_FEATURES[:3])
    assert importance.sum() == pytest.approx(1.0)
    assert model.feature_importances_.shape == (34,)


def test_bad_input_is_named():
    X, y = _blobs(10)
    with pytest.raises(ValueError, match="Width"):
        _small().fit(X.drop(columns="Width"), y)
    with pytest.raises(ValueError, match="qrob"):
        _small().fit(X, y, eval_set=(X, np.full(len(y), "qrob")))
    bad = X.copy()
    bad.iloc[3, 0] = np.inf
    with pytest.raises(ValueError, match="p0003"):
        _small().fit(bad, y)


def test_search_returns_parameters_inside_its_space():
    X, y = _blobs(20)
    best, results = search(X, y, n_iter=2, cv=2, seed=1, base=_small(), progress=False)
    assert set(best) == set(SEARCH_SPACE)
    for name, value in best.items():
        low, high = SEARCH_SPACE[name].support()
        assert low <= value <= high, name
    assert len(results) == 2 and results["mean_accuracy"].is_monotonic_decreasing
    assert search(X, y, n_iter=2, cv=2, seed=1, base=_small(), progress=False)[0] == best


def test_shap_values_have_one_column_per_feature_and_class_and_add_up_to_the_logits(fitted):
    model, X, _ = fitted
    explanation = model.shap_values(X.iloc[:20], max_samples=50)
    assert explanation.values.shape == (20, 34, 3)
    total = explanation.values.sum(axis=1) + explanation.base_values
    np.testing.assert_allclose(total, model.predict_logits(X.iloc[:20]), atol=1e-3)
    assert model.shap_values(X, max_samples=25).values.shape == (25, 34, 3)


def test_save_load_roundtrip_predicts_the_same(fitted, tmp_path):
    model, X, _ = fitted
    path = model.save(tmp_path / "bdt.json")
    assert json.loads(path.read_text())["learner"]
    loaded = BDTClassifier.load(path, device="cpu")
    assert list(loaded.classes_) == CLASSES
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert loaded.get_params()["max_depth"] == 3


def test_load_rejects_a_foreign_file(tmp_path):
    path = tmp_path / "other.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match=r"other\.json"):
        BDTClassifier.load(path, device="cpu")


def test_importance_and_shap_plots_return_figures_and_save_pngs(fitted, tmp_path):
    model, X, _ = fitted
    explanation = model.shap_values(X, max_samples=30)
    figures = {
        "importance.png": plot_feature_importance(model.feature_importance(), top=10, path=tmp_path / "importance.png"),
        "bar.png": plot_shap_bar(explanation, path=tmp_path / "bar.png"),
        "swarm.png": plot_shap_beeswarm(explanation, "dust", path=tmp_path / "swarm.png"),
    }
    for name, fig in figures.items():
        assert fig.axes
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="qsub"):
        plot_shap_beeswarm(explanation, "qsub")
