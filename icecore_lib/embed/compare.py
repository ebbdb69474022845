"""2-D maps of one space side by side: trustworthiness, kNN accuracy on the map, fit and transform times.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.manifold import trustworthiness
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from ..frames import ArrayOrFrame, as_matrix


def _subsample(n: int, max_points: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` points, drawn without replacement."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def knn_accuracy_2d(Y: np.ndarray, labels: np.ndarray, k: int = 5, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated kNN accuracy in the low-dimensional map: how well classes stay apart on screen."""
    _, counts = np.unique(labels, return_counts=True)
    folds = min(folds, int(counts.min()))
    if folds < 2:
        raise ValueError("every class needs at least 2 points for a cross-validated kNN accuracy")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(KNeighborsClassifier(n_neighbors=k), Y, labels, cv=cv).mean())


def compare_embeddings(
    X_high: ArrayOrFrame,
    Y_2d_by_method: Mapping[str, ArrayOrFrame],
    labels: Sequence[str] | np.ndarray | pd.Series,
    times: Mapping[str, Mapping[str, float]] | None = None,
    *,
    trust_neighbors: int = 10,
    max_points: int = 3000,
    knn_k: int = 5,
    folds: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per method: trustworthiness (on a subsample), 2-D kNN accuracy (CV) and the given timings.

    ``times`` maps a method to e.g. ``{"fit_s": 12.0, "transform_s": 0.4}``; its keys become columns.
    """
    X, _ = as_matrix(X_high, "X_high")
    labels = np.asarray(labels).astype(str)
    if len(labels) != len(X):
        raise ValueError(f"labels has {len(labels)} entries but X_high has {len(X)} rows")
    sub = _subsample(len(X), max_points, seed)
    rows = {}
    for method, Y_any in Y_2d_by_method.items():
        Y, _ = as_matrix(Y_any, f"embedding {method!r}")
        if len(Y) != len(X):
            raise ValueError(f"embedding {method!r} has {len(Y)} rows but X_high has {len(X)}")
        rows[method] = {
            "trustworthiness": float(trustworthiness(X[sub], Y[sub], n_neighbors=trust_neighbors)),
            "knn_accuracy_2d": knn_accuracy_2d(Y, labels, k=knn_k, folds=folds, seed=seed),
            **dict((times or {}).get(method, {})),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table


class Timer:
    """Context manager that records the wall-clock seconds of its block in ``seconds``."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
