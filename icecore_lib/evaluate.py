"""Classifier evaluation: metrics, confusion matrices, temperature scaling, calibration error, precision thresholds.

Probabilities come as a DataFrame with one column per class key (indexed by particle_id) or as an array
with a ``classes`` list; true labels are class keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import f1_score, log_loss, precision_recall_fscore_support

# The prediction of a particle whose best class is below that class's threshold.
UNASSIGNED = "unassigned"

_SCALARS = ("n", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "balanced_accuracy", "macro_f1", "log_loss", "ece")


def as_proba_frame(proba: pd.DataFrame | np.ndarray, classes: Sequence[Any] | None = None) -> pd.DataFrame:
    """Probabilities as a per-class DataFrame with their values unchanged (thresholds compare against them).

    A bad shape, a missing class column or a row that is no distribution (within 1e-3) is named in the error.
    """
    if isinstance(proba, pd.DataFrame):
        if classes is not None:
            missing = [c for c in classes if c not in proba.columns]
            if missing:
                raise ValueError(f"probability table has no column(s) for class(es) {missing}")
            proba = proba[list(classes)]
        frame = proba.astype(float)
    else:
        values = np.asarray(proba, dtype=float)
        if classes is None:
            raise ValueError("pass `classes` with a probability array (or give a DataFrame with class columns)")
        if values.ndim != 2 or values.shape[1] != len(classes):
            raise ValueError(f"probabilities of shape {values.shape} do not match {len(classes)} classes")
        frame = pd.DataFrame(values, columns=list(classes))
    _check_distributions(frame)
    return frame


def _check_distributions(frame: pd.DataFrame) -> None:
    """Fail naming the first row that has a non-finite or negative entry or does not sum to 1."""
    values = frame.to_numpy()
    bad = ~np.isfinite(values).all(axis=1) | (values < 0).any(axis=1) | (np.abs(values.sum(axis=1) - 1) > 1e-3)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"probability row {frame.index[row]!r} is not a distribution: {values[row].tolist()}")


def label_codes(y: Sequence[Any] | np.ndarray | pd.Series, classes: Sequence[Any]) -> np.ndarray:
    """Column index of each label in ``classes``; unknown labels fail naming the first particle (or row) and the count."""
    series = y if isinstance(y, pd.Series) else pd.Series(np.asarray(y, dtype=object))
    codes = pd.Index(list(classes)).get_indexer(series.to_numpy(dtype=object)).astype(np.int64)
    unknown = np.flatnonzero(codes < 0)
    if unknown.size:
        first = unknown[0]
        values = sorted({str(v) for v in series.iloc[unknown]})
        raise ValueError(f"label(s) {values} are not among the classes {list(classes)} ({unknown.size} rows; "
                         f"first: {series.index[first]!r})")
    return codes


def classification_report_df(y_true: Sequence[Any], y_pred: Sequence[Any], classes: Sequence[Any]) -> pd.DataFrame:
    """Per-class precision, recall, F1 and support; an unassigned prediction counts as a miss (NaN: undefined)."""
    precision, recall, f1, support = precision_recall_fscore_support(
        np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object), labels=list(classes), zero_division=np.nan
    )
    table = pd.DataFrame({"precision": precision, "recall": recall, "f1": f1, "support": support}, index=list(classes))
    table.index.name = "class"
    return table


def confusion_counts(y_true: Sequence[Any], y_pred: Sequence[Any], classes: Sequence[Any]) -> pd.DataFrame:
    """Confusion matrix of counts: rows are true classes, columns predicted classes."""
    table = pd.crosstab(
        pd.Categorical(np.asarray(y_true, dtype=object), categories=list(classes)),
        pd.Categorical(np.asarray(y_pred, dtype=object), categories=list(classes)),
        dropna=False,
    )
    table = table.reindex(index=list(classes), columns=list(classes), fill_value=0)
    table.index.name, table.columns.name = "true", "predicted"
    return table


def row_normalise(counts: pd.DataFrame) -> pd.DataFrame:
    """Each row divided by its total (the rate of each prediction given the true class); empty rows are NaN."""
    totals = counts.sum(axis=1).replace(0, np.nan)
    return counts.div(totals, axis=0)


def evaluate(
    y_true: Sequence[Any] | np.ndarray | pd.Series,
    proba: pd.DataFrame | np.ndarray,
    classes: Sequence[Any] | None = None,
    n_boot: int = 0,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Every metric of a classifier's probabilities on labelled particles, as one dict.

    Scalars: n, accuracy (with accuracy_ci_low/high when ``n_boot`` > 0), balanced_accuracy, macro_f1, log_loss,
    ece. Tables: per_class (precision/recall/f1/support), confusion (counts), confusion_norm (row-normalised).
    """
    frame = as_proba_frame(proba, classes)
    keys = list(frame.columns)
    codes = label_codes(y_true, keys)
    pred_codes = frame.to_numpy().argmax(axis=1)
    truth, pred = np.asarray(keys, dtype=object)[codes], np.asarray(keys, dtype=object)[pred_codes]
    per_class = classification_report_df(truth, pred, keys)
    counts = confusion_counts(truth, pred, keys)
    correct = pred_codes == codes
    normalised = frame.div(frame.sum(axis=1), axis=0).to_numpy()
    result: dict[str, Any] = {
        "n": len(codes),
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float(per_class.loc[per_class["support"] > 0, "recall"].mean()),
        "macro_f1": float(f1_score(codes, pred_codes, average="macro", zero_division=0)),
        "log_loss": float(log_loss(codes, normalised, labels=list(range(len(keys))))),
        "ece": expected_calibration_error(frame, truth),
        "per_class": per_class,
        "confusion": counts,
        "confusion_norm": row_normalise(counts),
    }
    if n_boot > 0:
        result["accuracy_ci_low"], result["accuracy_ci_high"] = bootstrap_mean_ci(correct, n_boot, seed, level)
    return result


def bootstrap_mean_ci(values: np.ndarray, n_boot: int, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean (e.g. of per-particle correctness)."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values, dtype=float)
    means = np.array([values[rng.integers(0, len(values), size=len(values))].mean() for _ in range(n_boot)])
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def metric_scalars(result: Mapping[str, Any]) -> dict[str, float]:
    """The scalar metrics of an :func:`evaluate` result (what goes into metrics.json)."""
    return {k: result[k] for k in _SCALARS if k in result}


def compare_models(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per model (e.g. images, metadata, both) with its scalar metrics, in the given order."""
    table = pd.DataFrame.from_dict({name: metric_scalars(r) for name, r in results.items()}, orient="index")
    table.index.name = "model"
    return table


class TemperatureScaler:
    """Temperature scaling: one scalar T fitted on validation logits by minimising the NLL of softmax(z / T)."""

    def __init__(self, bounds: tuple[float, float] = (0.05, 20.0)) -> None:
        self.bounds = bounds

    def fit(self, logits: pd.DataFrame | np.ndarray, y: Sequence[Any], classes: Sequence[Any] | None = None
            ) -> TemperatureScaler:
        """Fit T on validation logits and labels (class keys; ``classes`` defaults to the columns or 0..k-1)."""
        z = _logit_array(logits)
        keys = classes if classes is not None else _default_classes(logits, z.shape[1])
        codes = label_codes(y, keys)
        if len(codes) != len(z):
            raise ValueError(f"{len(z)} logit rows but {len(codes)} labels")
        self.classes_ = list(keys)
        self.nll_before_ = _nll(z, codes, 1.0)
        low, high = np.log(self.bounds[0]), np.log(self.bounds[1])
        best = minimize_scalar(lambda log_t: _nll(z, codes, float(np.exp(log_t))), bounds=(low, high), method="bounded")
        self.temperature_ = float(np.exp(best.x))
        self.nll_after_ = _nll(z, codes, self.temperature_)
        return self

    def transform(self, logits: pd.DataFrame | np.ndarray) -> pd.DataFrame | np.ndarray:
        """Calibrated probabilities softmax(z / T); a DataFrame keeps its index and columns."""
        probs = softmax(_logit_array(logits) / self.temperature_, axis=1)
        if isinstance(logits, pd.DataFrame):
            return pd.DataFrame(probs, index=logits.index, columns=logits.columns)
        return probs

    def fit_transform(self, logits: pd.DataFrame | np.ndarray, y: Sequence[Any],
                      classes: Sequence[Any] | None = None) -> pd.DataFrame | np.ndarray:
        """Fit on the logits and return their calibrated probabilities."""
        return self.fit(logits, y, classes).transform(logits)


def _logit_array(logits: pd.DataFrame | np.ndarray) -> np.ndarray:
    """Logits as a finite 2-D float array."""
    z = np.asarray(logits, dtype=float)
    if z.ndim != 2 or not np.isfinite(z).all():
        raise ValueError(f"logits must be a finite 2-D array, got shape {z.shape}")
    return z


def _default_classes(logits: pd.DataFrame | np.ndarray, k: int) -> list[Any]:
    """The class keys of logits: a DataFrame's columns, else 0..k-1."""
    return list(logits.columns) if isinstance(logits, pd.DataFrame) else list(range(k))


def _nll(z: np.ndarray, codes: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the labels under softmax(z / T)."""
    return float(-log_softmax(z / temperature, axis=1)[np.arange(len(codes)), codes].mean())


def reliability_curve(proba: pd.DataFrame | np.ndarray, y_true: Sequence[Any], n_bins: int = 15,
                      classes: Sequence[Any] | None = None) -> pd.DataFrame:
    """Top-label reliability: per equal-width confidence bin, its count, mean confidence and accuracy."""
    frame = as_proba_frame(proba, classes)
    values = frame.to_numpy()
    codes = label_codes(y_true, list(frame.columns))
    confidence = values.max(axis=1)
    correct = (values.argmax(axis=1) == codes).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(bins, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
    return pd.DataFrame({"bin_low": edges[:-1], "bin_high": edges[1:], "count": count,
                         "confidence": mean_conf, "accuracy": accuracy})


def ece_from_curve(curve: pd.DataFrame) -> float:
    """Expected calibration error of a reliability curve: count-weighted mean |accuracy - confidence|."""
    filled = curve[curve["count"] > 0]
    return float((filled["count"] * (filled["accuracy"] - filled["confidence"]).abs()).sum() / filled["count"].sum())


def expected_calibration_error(proba: pd.DataFrame | np.ndarray, y_true: Sequence[Any], n_bins: int = 15,
                               classes: Sequence[Any] | None = None) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width bins (0 = perfectly calibrated)."""
    return ece_from_curve(reliability_curve(proba, y_true, n_bins, classes))


def fit_thresholds(proba_val: pd.DataFrame | np.ndarray, y_val: Sequence[Any], target_precision: float = 0.95,
                   classes: Sequence[Any] | None = None) -> pd.Series:
    """Per class, the smallest probability threshold whose predictions reach the target precision on validation.

    A particle is predicted as its best class when that class's probability is at or above the threshold.
    NaN marks a class where no threshold reaches the target: :func:`apply_thresholds` never assigns it.
    """
    frame = as_proba_frame(proba_val, classes)
    values = frame.to_numpy()
    codes = label_codes(y_val, list(frame.columns))
    best = values.argmax(axis=1)
    thresholds = [
        _class_threshold(values[best == j, j], codes[best == j] == j, target_precision) for j in range(values.shape[1])
    ]
    return pd.Series(thresholds, index=pd.Index(frame.columns, name="class"), name="threshold", dtype=float)


def _class_threshold(scores: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The smallest score t with precision(score >= t) >= target, NaN if none."""
    order = np.argsort(-scores, kind="stable")
    scores, correct = scores[order], correct[order]
    precision = np.cumsum(correct) / np.arange(1, len(scores) + 1)
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    reached = last_of_tie & (precision >= target)
    return float(scores[reached].min()) if reached.any() else float("nan")


def apply_thresholds(proba: pd.DataFrame | np.ndarray, thresholds: pd.Series,
                     classes: Sequence[Any] | None = None) -> tuple[pd.Series, pd.Series]:
    """Best class per particle, or UNASSIGNED below that class's threshold (NaN = never); and the unassigned mask."""
    frame = as_proba_frame(proba, classes)
    missing = [c for c in frame.columns if c not in thresholds.index]
    if missing:
        raise ValueError(f"no threshold for class(es) {missing}")
    values = frame.to_numpy()
    best = values.argmax(axis=1)
    cut = thresholds.reindex(frame.columns).fillna(np.inf).to_numpy()
    unassigned = values[np.arange(len(best)), best] < cut[best]
    pred = np.where(unassigned, UNASSIGNED, np.asarray(frame.columns, dtype=object)[best])
    return pd.Series(pred, index=frame.index, name="pred", dtype=object), pd.Series(unassigned, index=frame.index,
                                                                                   name="unassigned")


def threshold_coverage(proba: pd.DataFrame | np.ndarray, thresholds: pd.Series, y_true: Sequence[Any] | None = None,
                       classes: Sequence[Any] | None = None) -> pd.DataFrame:
    """How much of each class the thresholds keep: a per-class table.

    Columns: threshold, reachable, n_predicted (best class), n_kept, kept_fraction; with labels also the
    precision and recall of the kept predictions.
    """
    frame = as_proba_frame(proba, classes)
    keys = list(frame.columns)
    best = np.asarray(keys, dtype=object)[frame.to_numpy().argmax(axis=1)]
    pred, _ = apply_thresholds(frame, thresholds)
    table = pd.DataFrame(index=pd.Index(keys, name="class"))
    table["threshold"] = thresholds.reindex(keys).to_numpy()
    table["reachable"] = table["threshold"].notna()
    table["n_predicted"] = pd.Series(best).value_counts().reindex(keys, fill_value=0).to_numpy()
    table["n_kept"] = pd.Series(pred.to_numpy()).value_counts().reindex(keys, fill_value=0).to_numpy()
    table["kept_fraction"] = table["n_kept"] / table["n_predicted"].replace(0, np.nan)
    if y_true is not None:
        label_codes(y_true, keys)
        report = classification_report_df(y_true, pred.to_numpy(), keys)
        table["precision"], table["recall"] = report["precision"], report["recall"]
    return table


__all__ = [
    "UNASSIGNED",
    "TemperatureScaler",
    "apply_thresholds",
    "as_proba_frame",
    "bootstrap_mean_ci",
    "classification_report_df",
    "compare_models",
    "confusion_counts",
    "ece_from_curve",
    "evaluate",
    "expected_calibration_error",
    "fit_thresholds",
    "label_codes",
    "metric_scalars",
    "reliability_curve",
    "row_normalise",
    "threshold_coverage",
]
