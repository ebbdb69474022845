"""Shortcut audit: can a model learn the acquisition session instead of the particle?

Each reference class is imaged in its own session, so a classifier can score well by recognising the session
(background level, focus, noise). The audit measures what can be measured: how well simple image statistics
tell sessions apart (overall, background only, and within a class when a class has several sessions), and how
much a metric drops when the test particles come from sessions (or a core domain) the model never saw.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score
from sklearn.model_selection import GroupShuffleSplit, StratifiedKFold, StratifiedShuffleSplit, cross_validate
from tqdm.auto import tqdm

# Statistics of the crop's border pixels: the background, which should not depend on the particle.
BACKGROUND_STATS = ("border_mean", "border_std", "border_p05", "border_p95")
IMAGE_STATS = (*BACKGROUND_STATS, "lap_var", "p01", "p50", "p99", "mean", "std")


def _check_images(images: np.ndarray, border: int) -> None:
    """Fail unless images is (N, S, S) with room for a border of ``border`` pixels."""
    if images.ndim != 3 or images.shape[1] <= 2 * border or images.shape[2] <= 2 * border:
        raise ValueError(f"images must be (N, H, W) with H, W > {2 * border}, got shape {images.shape}")


def _chunk_stats(x: np.ndarray, border: int) -> dict[str, np.ndarray]:
    """Per-image background, blur (Laplacian variance) and intensity statistics of one float32 chunk."""
    n, b = len(x), border
    edge = np.concatenate([x[:, :b].reshape(n, -1), x[:, -b:].reshape(n, -1),
                           x[:, b:-b, :b].reshape(n, -1), x[:, b:-b, -b:].reshape(n, -1)], axis=1)
    flat = x.reshape(n, -1)
    laplacian = x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:] - 4 * x[:, 1:-1, 1:-1]
    edge_p05, edge_p95 = np.percentile(edge, [5, 95], axis=1)
    p01, p50, p99 = np.percentile(flat, [1, 50, 99], axis=1)
    return {"border_mean": edge.mean(axis=1), "border_std": edge.std(axis=1), "border_p05": edge_p05,
            "border_p95": edge_p95, "lap_var": laplacian.reshape(n, -1).var(axis=1), "p01": p01, "p50": p50,
            "p99": p99, "mean": flat.mean(axis=1), "std": flat.std(axis=1)}


def image_stats(images: np.ndarray, border: int = 4, index: pd.Index | None = None, chunk_size: int = 4096,
                progress: bool = False) -> pd.DataFrame:
    """Background (border pixels), blur and intensity statistics per image, in chunks (works on a memmap)."""
    _check_images(images, border)
    starts = range(0, len(images), chunk_size)
    parts = [pd.DataFrame(_chunk_stats(np.asarray(images[s:s + chunk_size], dtype=np.float32), border))
             for s in tqdm(starts, desc="image statistics", disable=not progress)]
    stats = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(IMAGE_STATS), dtype=float)
    if index is not None:
        stats.index = index
    return stats[list(IMAGE_STATS)]


def default_probe(seed: int = 0) -> RandomForestClassifier:
    """The small, non-linear classifier the probe uses (a forest: no per-fit thread start-up, fast on small data)."""
    return RandomForestClassifier(n_estimators=100, min_samples_leaf=2, random_state=seed, n_jobs=1)


def _cv_accuracy(features: pd.DataFrame, target: np.ndarray, cv: int, seed: int,
                 estimator: BaseEstimator | None) -> dict[str, float]:
    """Stratified-CV accuracy and balanced accuracy of predicting ``target`` from ``features``, with chance."""
    values, counts = np.unique(target, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"session {values[counts.argmin()]!r} has {counts.min()} image(s); the probe needs 2 or more")
    folds = StratifiedKFold(n_splits=min(cv, int(counts.min())), shuffle=True, random_state=seed)
    model = clone(estimator) if estimator is not None else default_probe(seed)
    scores = cross_validate(model, features.to_numpy(), target, cv=folds, scoring=["accuracy", "balanced_accuracy"])
    return {"accuracy": float(scores["test_accuracy"].mean()), "accuracy_std": float(scores["test_accuracy"].std()),
            "balanced_accuracy": float(scores["test_balanced_accuracy"].mean()),
            "chance": float(counts.max() / counts.sum()), "n_sessions": len(values), "n": int(counts.sum())}


@dataclass(frozen=True)
class ProbeResult:
    """What the session probe measured, and what it means."""

    accuracy: float
    accuracy_std: float
    balanced_accuracy: float
    chance: float
    background_accuracy: float
    n_sessions: int
    n: int
    confounded: bool
    within_class: pd.DataFrame
    message: str

    def summary(self) -> dict[str, Any]:
        """The scalar results (for metrics.json)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "within_class"}


def session_probe(images: np.ndarray, sessions: Sequence[Any], labels: Sequence[Any] | None = None, cv: int = 5,
                  seed: int = 0, border: int = 4, margin: float = 0.1, estimator: BaseEstimator | None = None,
                  progress: bool = False) -> ProbeResult:
    """Predict the acquisition session from image statistics under cross-validation.

    With labels, also probe within each class imaged in several sessions and say whether session and class
    are confounded (one session per class, as in the lab sets).
    """
    sessions = np.asarray(sessions, dtype=object)
    if len(sessions) != len(images):
        raise ValueError(f"{len(images)} images but {len(sessions)} session values")
    stats = image_stats(images, border, progress=progress)
    overall = _cv_accuracy(stats, sessions, cv, seed, estimator)
    background = _cv_accuracy(stats[list(BACKGROUND_STATS)], sessions, cv, seed, estimator)
    within = _within_class(stats, sessions, labels, cv, seed, estimator)
    confounded = labels is not None and _nested(sessions, np.asarray(labels, dtype=object))
    return ProbeResult(
        accuracy=overall["accuracy"], accuracy_std=overall["accuracy_std"],
        balanced_accuracy=overall["balanced_accuracy"], chance=overall["chance"],
        background_accuracy=background["accuracy"], n_sessions=overall["n_sessions"], n=overall["n"],
        confounded=confounded, within_class=within,
        message=_probe_message(overall, background["accuracy"], within, confounded, margin),
    )


def _nested(sessions: np.ndarray, labels: np.ndarray) -> bool:
    """True when every class was imaged in exactly one session of its own (session and class coincide)."""
    pairs = pd.DataFrame({"session": sessions, "label": labels})
    return bool((pairs.groupby("label")["session"].nunique() == 1).all()
                and (pairs.groupby("session")["label"].nunique() == 1).all())


def _within_class(stats: pd.DataFrame, sessions: np.ndarray, labels: Sequence[Any] | None, cv: int, seed: int,
                  estimator: BaseEstimator | None) -> pd.DataFrame:
    """Session-probe accuracy inside each class imaged in two or more sessions (of 2+ images each; rarer ones left out)."""
    columns = ["n_sessions", "n", "accuracy", "balanced_accuracy", "chance"]
    if labels is None:
        return pd.DataFrame(columns=columns)
    labels = np.asarray(labels, dtype=object)
    rows = {}
    for label in pd.unique(labels):
        in_class = pd.Series(sessions[labels == label])
        counts = in_class.value_counts()
        mask = (labels == label) & np.isin(sessions, counts.index[counts >= 2])
        if len(np.unique(sessions[mask])) >= 2:
            result = _cv_accuracy(stats[mask], sessions[mask], cv, seed, estimator)
            rows[label] = {c: result[c] for c in columns}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    table.index.name = "class"
    return table


def _probe_message(overall: dict[str, float], background: float, within: pd.DataFrame, confounded: bool,
                   margin: float) -> str:
    """A plain-language reading of the probe's numbers."""
    lines = [f"Image statistics predict the session ({overall['n_sessions']} sessions) with accuracy "
             f"{overall['accuracy']:.3f} (background only {background:.3f}; chance {overall['chance']:.3f})."]
    if max(overall["accuracy"], background) - overall["chance"] > margin:
        lines.append("Sessions are distinguishable: a classifier can learn the session instead of the particle.")
    else:
        lines.append("Sessions are not distinguishable from these statistics.")
    if confounded:
        lines.append(
            "Each class was imaged in exactly one session, so session and class coincide: the overall score may "
            "come from the particles themselves, and a session-grouped split of the classifier is impossible (a "
            "class would be missing from training). Measurable instead: the background-only probe above, session "
            "probes within classes imaged in several sessions, and the drop from the test split to a set from "
            "another session with known labels (domain_drop)."
        )
    for label, row in within.iterrows():
        lines.append(f"Within class {label!r}: {row['n_sessions']:.0f} sessions told apart with accuracy "
                     f"{row['accuracy']:.3f} (chance {row['chance']:.3f}).")
    return "\n".join(lines)


@dataclass(frozen=True)
class SplitDrop:
    """A metric on a reference split against a shifted one (unseen sessions or domain), and a warning."""

    metric: str
    reference: float
    shifted: float
    drop: float
    measurable: bool
    warning: str | None
    message: str


def drop_warning(reference: float, shifted: float, threshold: float = 0.05, metric: str = "accuracy",
                 reference_name: str = "random split", shifted_name: str = "session-grouped split") -> str | None:
    """A warning string when the metric falls by more than ``threshold`` from reference to shifted, else None."""
    drop = reference - shifted
    if drop <= threshold:
        return None
    return (f"{metric} falls from {reference:.3f} ({reference_name}) to {shifted:.3f} ({shifted_name}), a drop of "
            f"{drop:.3f} > {threshold}: the model may rely on acquisition shortcuts.")


def domain_drop(reference: float, shifted: float, threshold: float = 0.05, metric: str = "accuracy",
                domain: str = "core") -> SplitDrop:
    """Compare a test-split metric with the same metric on another domain (e.g. the core's known classes)."""
    warning = drop_warning(reference, shifted, threshold, metric, "test split", domain)
    message = warning or f"{metric} holds from the test split ({reference:.3f}) to {domain} ({shifted:.3f})."
    return SplitDrop(metric, reference, shifted, reference - shifted, True, warning, message)


def _grouped_indices(y: np.ndarray, groups: np.ndarray, test_fraction: float, seed: int,
                     tries: int = 100) -> tuple[np.ndarray, np.ndarray] | None:
    """A split by group in which every class is in both train and test, or None if none is found."""
    classes = set(y)
    for attempt in range(tries):
        splitter = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed + attempt)
        train, test = next(splitter.split(y, y, groups))
        if set(y[train]) == classes and set(y[test]) == classes:
            return train, test
    return None


def _fit_score(estimator: BaseEstimator, X: pd.DataFrame, y: np.ndarray, train: np.ndarray, test: np.ndarray,
               metric: Callable[[np.ndarray, np.ndarray], float]) -> float:
    """Metric of a fresh clone of ``estimator`` fitted on the train rows and scored on the test rows."""
    model = clone(estimator).fit(X.iloc[train], y[train])
    return float(metric(y[test], model.predict(X.iloc[test])))


def grouped_split_drop(estimator: BaseEstimator, X: pd.DataFrame, y: Sequence[Any], groups: Sequence[Any],
                       metric: Callable[[np.ndarray, np.ndarray], float] = accuracy_score, test_fraction: float = 0.25,
                       threshold: float = 0.05, seed: int = 0) -> SplitDrop:
    """A metric under a random stratified split against a split grouped by session.

    Only classes imaged in two or more sessions can be split by session; the comparison runs on them. When
    fewer than two classes qualify (one session per class, as in the lab sets), the result says the grouped
    split is impossible and reports the random split alone (measurable=False).
    """
    y, groups = np.asarray(y, dtype=object), np.asarray(groups, dtype=object)
    name = getattr(metric, "__name__", "metric").removesuffix("_score")
    per_class = pd.Series(groups).groupby(y).nunique()
    usable = sorted(per_class.index[per_class >= 2])
    single = sorted(per_class.index[per_class < 2])
    keep = np.isin(y, usable) if len(usable) >= 2 else np.ones(len(y), dtype=bool)
    X_kept, y_kept = X.iloc[np.flatnonzero(keep)], y[keep]
    train, test = next(StratifiedShuffleSplit(1, test_size=test_fraction, random_state=seed).split(y_kept, y_kept))
    reference = _fit_score(estimator, X_kept, y_kept, train, test, metric)
    split = _grouped_indices(y_kept, groups[keep], test_fraction, seed) if len(usable) >= 2 else None
    if split is None:
        reason = (f"classes {single} were imaged in a single session, so holding their session out removes them "
                  f"from training, and only {len(usable)} class(es) have several sessions" if len(usable) < 2 else
                  "no split by session keeps every class in both training and test")
        message = (f"A session-grouped split is impossible: {reason}. Only the random split ({name} {reference:.3f}) "
                   "is measured; use session_probe and domain_drop to audit shortcuts.")
        return SplitDrop(name, reference, float("nan"), float("nan"), False, None, message)
    shifted = _fit_score(estimator, X_kept, y_kept, *split, metric)
    warning = drop_warning(reference, shifted, threshold, name)
    scope = f" (classes with one session left out: {single})" if single else ""
    message = (warning or f"{name} holds from the random split ({reference:.3f}) to the session-grouped split "
               f"({shifted:.3f}).") + scope
    return SplitDrop(name, reference, shifted, reference - shifted, True, warning, message)
