"""Metrics, confusion matrices, temperature scaling, calibration error and precision thresholds."""

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

from icecore_lib.evaluate import (
    UNASSIGNED,
    TemperatureScaler,
    apply_thresholds,
    classification_report_df,
    compare_models,
    evaluate,
    expected_calibration_error,
    fit_thresholds,
    reliability_curve,
    threshold_coverage,
)
from icecore_lib.plots.classify import (
    plot_confusion,
    plot_model_comparison,
    plot_per_class,
    plot_reliability,
    plot_threshold_coverage,
)

CLASSES = ["camp", "dust", "grim"]


def _calibrated(n: int, scale: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): probabilities that are calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=(n, len(CLASSES)))
    probs = softmax(logits, axis=1)
    labels = np.array([rng.choice(CLASSES, p=p) for p in probs], dtype=object)
    return logits, labels


def test_evaluate_counts_and_rates():
    y_true = ["camp", "camp", "dust", "dust", "grim", "grim"]
    proba = pd.DataFrame(np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.8 + 0.2 / 3, columns=CLASSES)
    result = evaluate(y_true, proba)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["balanced_accuracy"] == pytest.approx(np.mean([0.5, 1.0, 0.5]))
    assert result["confusion"].loc["camp", "dust"] == 1 and result["confusion"].loc["grim", "camp"] == 1
    assert result["confusion_norm"].loc["dust", "dust"] == 1.0
    assert result["per_class"].loc["dust", "precision"] == pytest.approx(2 / 3)
    assert result["per_class"]["support"].tolist() == [2, 2, 2]


def test_accuracy_interval_brackets_the_accuracy():
    logits, labels = _calibrated(400)
    result = evaluate(labels, softmax(logits, axis=1), CLASSES, n_boot=200, seed=0)
    assert result["accuracy_ci_low"] < result["accuracy"] < result["accuracy_ci_high"]


def test_labels_outside_the_classes_and_bad_rows_are_named():
    with pytest.raises(ValueError, match="diatom"):
        evaluate(["camp", "diatom"], np.full((2, 3), 1 / 3), CLASSES)
    bad = pd.DataFrame([[0.5, 0.5, 0.0], [0.9, 0.9, 0.0]], columns=CLASSES, index=["ok.png", "bad.png"])
    with pytest.raises(ValueError, match=r"bad\.png"):
        evaluate(["camp", "dust"], bad)


def test_unassigned_predictions_lower_recall_but_not_precision():
    report = classification_report_df(["camp", "camp", "dust"], ["camp", UNASSIGNED, "dust"], CLASSES)
    assert report.loc["camp", "precision"] == 1.0 and report.loc["camp", "recall"] == 0.5
    assert np.isnan(report.loc["grim", "precision"])


def test_ece_is_near_zero_for_calibrated_probabilities():
    logits, labels = _calibrated(6000)
    assert expected_calibration_error(softmax(logits, axis=1), labels, classes=CLASSES) < 0.03


def test_temperature_scaling_repairs_overconfident_logits():
    logits, labels = _calibrated(3000, seed=1)
    overconfident = 3.0 * logits
    before = expected_calibration_error(softmax(overconfident, axis=1), labels, classes=CLASSES)
    scaler = TemperatureScaler().fit(overconfident, labels, CLASSES)
    after = expected_calibration_error(scaler.transform(overconfident), labels, classes=CLASSES)
    assert scaler.temperature_ == pytest.approx(3.0, rel=0.15)
    assert after < before / 3 and after < 0.04
    assert scaler.nll_after_ < scaler.nll_before_


def test_temperature_scaler_keeps_a_dataframes_index():
    logits, labels = _calibrated(200)
    frame = pd.DataFrame(logits, columns=CLASSES, index=[f"p{i}" for i in range(200)])
    out = TemperatureScaler().fit(frame, labels).transform(frame)
    assert out.index.equals(frame.index) and list(out.columns) == CLASSES


def test_reliability_curve_counts_every_particle():
    logits, labels = _calibrated(500)
    curve = reliability_curve(softmax(logits, axis=1), labels, n_bins=10, classes=CLASSES)
    assert len(curve) == 10 and curve["count"].sum() == 500


def _precision_at(proba: np.ndarray, labels: np.ndarray, j: int, threshold: float) -> float:
    """Precision of predicting class j where it is the best class with probability >= threshold."""
    chosen = (proba.argmax(axis=1) == j) & (proba[:, j] >= threshold)
    return float(np.mean(labels[chosen] == CLASSES[j]))


def test_thresholds_are_the_smallest_reaching_the_target_precision():
    logits, labels = _calibrated(2000, seed=2)
    proba = softmax(logits, axis=1)
    thresholds = fit_thresholds(proba, labels, target_precision=0.9, classes=CLASSES)
    assert thresholds.notna().all()
    for j, key in enumerate(CLASSES):
        assert _precision_at(proba, labels, j, thresholds[key]) >= 0.9
        best = proba.argmax(axis=1) == j
        lower = np.unique(proba[best, j][proba[best, j] < thresholds[key]])
        assert all(_precision_at(proba, labels, j, t) < 0.9 for t in lower)


def test_apply_thresholds_keeps_the_target_precision_on_validation():
    logits, labels = _calibrated(2000, seed=3)
    proba = pd.DataFrame(softmax(logits, axis=1), columns=CLASSES)
    thresholds = fit_thresholds(proba, labels, target_precision=0.9)
    pred, unassigned = apply_thresholds(proba, thresholds)
    assert 0 < unassigned.mean() < 1 and (pred[unassigned] == UNASSIGNED).all()
    kept = ~unassigned.to_numpy()
    assert np.mean(pred[kept].to_numpy() == labels[kept]) >= 0.9
    coverage = threshold_coverage(proba, thresholds, labels)
    assert (coverage["precision"] >= 0.9).all()
    assert coverage["n_kept"].sum() == kept.sum()


def test_unreachable_class_is_marked_and_never_assigned():
    rng = np.random.default_rng(4)
    proba = np.tile([0.2, 0.6, 0.2], (100, 1))
    labels = rng.choice(["dust", "grim"], size=100).astype(object)
    thresholds = fit_thresholds(proba, labels, target_precision=0.95, classes=CLASSES)
    assert np.isnan(thresholds["dust"])
    pred, unassigned = apply_thresholds(proba, thresholds, CLASSES)
    assert unassigned.all() and "dust" not in set(pred)


def test_compare_models_puts_one_row_per_model():
    logits, labels = _calibrated(300)
    results = {"images": evaluate(labels, softmax(3 * logits, axis=1), CLASSES),
               "metadata": evaluate(labels, softmax(logits, axis=1), CLASSES)}
    table = compare_models(results)
    assert list(table.index) == ["images", "metadata"]
    assert table.loc["images", "accuracy"] == results["images"]["accuracy"]


def test_evaluation_plots_return_figures_and_save_pngs(tmp_path):
    logits, labels = _calibrated(600)
    proba = softmax(2 * logits, axis=1)
    result = evaluate(labels, proba, CLASSES, n_boot=50)
    scaled = TemperatureScaler().fit_transform(2 * logits, labels, CLASSES)
    thresholds = fit_thresholds(proba, labels, 0.9, CLASSES)
    figures = {
        "confusion.png": lambda p: plot_confusion(result["confusion"], path=p),
        "per_class.png": lambda p: plot_per_class(result["per_class"], path=p),
        "reliability.png": lambda p: plot_reliability(
            {"before": reliability_curve(proba, labels, classes=CLASSES),
             "after": reliability_curve(scaled, labels, classes=CLASSES)}, path=p),
        "coverage.png": lambda p: plot_threshold_coverage(threshold_coverage(proba, thresholds, labels, CLASSES), 0.9,
                                                          path=p),
        "compare.png": lambda p: plot_model_comparison(compare_models({"a": result, "b": result}), path=p),
    }
    for name, draw in figures.items():
        fig = draw(tmp_path / name)
        assert fig.axes
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ECE" in plot_reliability({"before": reliability_curve(proba, labels, classes=CLASSES)}).axes[0].get_title()


def test_label_codes_follow_class_order_and_name_the_first_unknown_particle():
    import numpy as np
    import pandas as pd
    import pytest

    from icecore_lib.evaluate import label_codes

    labels = pd.Series(["dust", "camp", "dust"], index=["a", "b", "c"])
    np.testing.assert_array_equal(label_codes(labels, ["camp", "dust"]), [1, 0, 1])
    with pytest.raises(ValueError, match=r"\['dust'\].*first: 'a'"):
        label_codes(labels, ["camp", "grim"])
