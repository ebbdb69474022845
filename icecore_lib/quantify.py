"""Class composition of an unlabelled core: classify-and-count, confusion-adjusted counts, EM prior adjustment,
bootstrap intervals, per sample/depth, and the error against known truth.

Methods (``method=``): ``cc`` classify and count, ``pcc`` mean probability, ``acc`` adjusted count (needs the
validation confusion rates), ``em`` Saerens-Latinne-Decaestecker EM (needs the training priors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .evaluate import UNASSIGNED, as_proba_frame

METHODS = ("cc", "pcc", "acc", "em")


def _fractions(values: np.ndarray | pd.Series, classes: Sequence[Any]) -> pd.Series:
    """A composition Series named 'fraction', indexed by class."""
    return pd.Series(np.asarray(values, dtype=float), index=pd.Index(list(classes), name="class"), name="fraction")


def classify_and_count(pred: Sequence[Any] | pd.Series, classes: Sequence[Any]) -> pd.Series:
    """Fraction of the assigned particles predicted as each class (UNASSIGNED ones are left out)."""
    series = pd.Series(np.asarray(pred, dtype=object))
    assigned = series[series != UNASSIGNED]
    unknown = sorted({str(v) for v in assigned} - {str(c) for c in classes})
    if unknown:
        raise ValueError(f"prediction(s) {unknown} are not among the classes {list(classes)}")
    if assigned.empty:
        raise ValueError("no assigned particle to count")
    counts = assigned.value_counts().reindex(list(classes), fill_value=0)
    return _fractions(counts / counts.sum(), classes)


def adjusted_count(pred: Sequence[Any] | pd.Series, confusion_rates: pd.DataFrame) -> pd.Series:
    """Counts corrected for known confusions: solve observed = rates^T @ true, clip at 0 and renormalise.

    ``confusion_rates`` is the row-normalised validation confusion matrix (rows true, columns predicted)."""
    classes = list(confusion_rates.index)
    if list(confusion_rates.columns) != classes:
        raise ValueError("confusion rates need the same classes, in the same order, as rows and columns")
    rates = confusion_rates.to_numpy(dtype=float)
    empty = [c for c, row in zip(classes, rates) if not np.isfinite(row).all()]
    if empty:
        raise ValueError(f"confusion rates undefined for class(es) {empty} (no validation particles)")
    observed = classify_and_count(pred, classes).to_numpy()
    solved, *_ = np.linalg.lstsq(rates.T, observed, rcond=None)
    clipped = np.clip(solved, 0.0, None)
    if clipped.sum() <= 0:
        raise ValueError("adjusted counts are all zero after clipping; the confusion rates do not fit these counts")
    return _fractions(clipped / clipped.sum(), classes)


def _prior_array(train_priors: pd.Series | Sequence[float], classes: Sequence[Any]) -> np.ndarray:
    """Training priors aligned with the classes, checked positive and summing to 1."""
    if isinstance(train_priors, pd.Series):
        missing = [c for c in classes if c not in train_priors.index]
        if missing:
            raise ValueError(f"no training prior for class(es) {missing}")
        train_priors = train_priors.reindex(list(classes))
    priors = np.asarray(train_priors, dtype=float)
    if priors.shape != (len(classes),) or (priors <= 0).any() or abs(priors.sum() - 1) > 1e-6:
        raise ValueError(f"training priors must be {len(classes)} positive values summing to 1, got {priors.tolist()}")
    return priors


def em_prior_adjust(proba: pd.DataFrame | np.ndarray, train_priors: pd.Series | Sequence[float],
                    classes: Sequence[Any] | None = None, max_iter: int = 1000, tol: float = 1e-8,
                    ) -> tuple[pd.Series, pd.DataFrame]:
    """Saerens-Latinne-Decaestecker EM: the core's class priors and the posteriors re-weighted to them."""
    frame = as_proba_frame(proba, classes)
    keys = list(frame.columns)
    base = _prior_array(train_priors, keys)
    original = frame.to_numpy()
    posterior, priors = original, base.copy()
    for _ in range(max_iter):
        weighted = original * (priors / base)
        posterior = weighted / np.maximum(weighted.sum(axis=1, keepdims=True), np.finfo(float).tiny)
        updated = posterior.mean(axis=0)
        converged = np.abs(updated - priors).max() < tol
        priors = updated
        if converged:
            break
    return _fractions(priors, keys), pd.DataFrame(posterior, index=frame.index, columns=keys)


def estimate_composition(proba: pd.DataFrame | np.ndarray, method: str = "em", classes: Sequence[Any] | None = None,
                         train_priors: pd.Series | Sequence[float] | None = None,
                         confusion_rates: pd.DataFrame | None = None) -> pd.Series:
    """The class fractions of a set of particles by one of METHODS."""
    frame = as_proba_frame(proba, classes)
    keys = list(frame.columns)
    if method == "pcc":
        return _fractions(frame.mean(axis=0), keys)
    pred = np.asarray(keys, dtype=object)[frame.to_numpy().argmax(axis=1)]
    if method == "cc":
        return classify_and_count(pred, keys)
    if method == "acc":
        if confusion_rates is None:
            raise ValueError("method 'acc' needs confusion_rates (the row-normalised validation confusion matrix)")
        return adjusted_count(pred, confusion_rates.loc[keys, keys])
    if method == "em":
        if train_priors is None:
            raise ValueError("method 'em' needs train_priors (the class fractions the classifier was trained on)")
        return em_prior_adjust(frame, train_priors)[0]
    raise ValueError(f"unknown composition method {method!r}; choose one of {', '.join(METHODS)}")


def bootstrap_composition(proba: pd.DataFrame | np.ndarray, method: str = "em", n_boot: int = 200, seed: int = 0,
                          level: float = 0.95, classes: Sequence[Any] | None = None,
                          train_priors: pd.Series | Sequence[float] | None = None,
                          confusion_rates: pd.DataFrame | None = None, progress: bool = False) -> pd.DataFrame:
    """Per class: the estimated fraction and its percentile bootstrap interval over resampled particles."""
    frame = as_proba_frame(proba, classes)
    options = {"method": method, "train_priors": train_priors, "confusion_rates": confusion_rates}
    point = estimate_composition(frame, **options)
    rng = np.random.default_rng(seed)
    draws = [
        estimate_composition(frame.iloc[rng.integers(0, len(frame), size=len(frame))], **options).to_numpy()
        for _ in tqdm(range(n_boot), desc=f"bootstrap {method}", disable=not progress, leave=False)
    ]
    tail = (1 - level) / 2
    table = point.to_frame()
    table["ci_low"] = np.quantile(draws, tail, axis=0) if draws else np.nan
    table["ci_high"] = np.quantile(draws, 1 - tail, axis=0) if draws else np.nan
    return table


def composition_by_group(proba: pd.DataFrame, groups: pd.Series | pd.DataFrame, method: str = "em",
                         n_boot: int = 0, seed: int = 0, level: float = 0.95, depth: pd.Series | None = None,
                         train_priors: pd.Series | Sequence[float] | None = None,
                         confusion_rates: pd.DataFrame | None = None, progress: bool = True) -> pd.DataFrame:
    """Composition per group (e.g. per sample_id) as a long table, one row per group and class.

    Columns: the group column(s), the group's mean depth when ``depth`` (a per-particle Series such as depth_m)
    is given, class, fraction, ci_low/ci_high (NaN without bootstrap) and n_particles.
    """
    frame = as_proba_frame(proba)
    keys = groups.to_frame() if isinstance(groups, pd.Series) else groups
    if len(keys) != len(frame) or (depth is not None and len(depth) != len(frame)):
        raise ValueError(f"group and depth rows must match the {len(frame)} probability rows")
    keys = keys.set_axis(frame.index)
    columns = list(keys.columns)
    parts = []
    grouped = frame.groupby([keys[c] for c in columns], sort=True)
    for i, (key, part) in enumerate(tqdm(grouped, desc="composition by group", disable=not progress)):
        table = bootstrap_composition(part, method, n_boot, seed + i, level, train_priors=train_priors,
                                      confusion_rates=confusion_rates).reset_index()
        values = key if isinstance(key, tuple) else (key,)
        for position, (column, value) in enumerate(zip(columns, values)):
            table.insert(position, column, value)
        if depth is not None:
            table.insert(len(columns), depth.name or "depth", float(depth.set_axis(frame.index)[part.index].mean()))
        table["n_particles"] = len(part)
        parts.append(table)
    return pd.concat(parts, ignore_index=True)


def composition_error(estimate: Mapping[str, pd.Series] | pd.DataFrame, truth_labels: Sequence[Any] | pd.Series
                      ) -> pd.DataFrame:
    """Per class: the true fraction, each method's fraction and its absolute error.

    The truth is counted among the estimate's classes only: particles of other classes (a new class such as
    the planted diatom) are left out, as no estimate can hold them.
    """
    table = pd.DataFrame(dict(estimate)) if not isinstance(estimate, pd.DataFrame) else estimate.copy()
    labels = pd.Series(np.asarray(truth_labels, dtype=object))
    known = labels[labels.isin(list(table.index))]
    if known.empty:
        raise ValueError(f"no true label is among the estimated classes {list(table.index)}")
    result = pd.DataFrame({"truth": known.value_counts(normalize=True).reindex(table.index, fill_value=0.0)})
    for method in table.columns:
        result[method] = table[method]
        result[f"{method}_abs_error"] = (table[method] - result["truth"]).abs()
    result.index.name = "class"
    return result


def group_errors(by_group: Mapping[str, pd.DataFrame], truth_labels: pd.Series, groups: pd.Series) -> pd.DataFrame:
    """Per group (e.g. depth sample): each method's mean absolute error per class against that group's truth.

    ``by_group``: method -> :func:`composition_by_group` table grouped by ``groups`` (a per-particle Series named
    like the group column); ``truth_labels``: each particle's true class, keyed like ``groups``.
    """
    column = groups.name
    rows = {}
    for key, ids in groups.groupby(groups, sort=True).groups.items():
        estimates = {method: long[long[column] == key].set_index("class")["fraction"] for method, long in by_group.items()}
        errors = composition_error(estimates, truth_labels.reindex(ids))
        rows[key] = errors.filter(like="_abs_error").mean().rename(lambda c: c.removesuffix("_abs_error"))
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(column)


__all__ = [
    "METHODS",
    "adjusted_count",
    "bootstrap_composition",
    "classify_and_count",
    "composition_by_group",
    "composition_error",
    "em_prior_adjust",
    "estimate_composition",
    "group_errors",
]
