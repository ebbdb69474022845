"""UMAP of embeddings (umap-learn behind a seeded scikit-learn shape) and a side-by-side comparison of 2-D maps.

Embeddings are ``(N, D)`` float arrays or DataFrames indexed by ``particle_id``; a DataFrame in gives a
DataFrame out with the same index, so per-particle results stay keyed by particle.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.manifold import trustworthiness
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.utils.validation import check_is_fitted

from .runs import atomic_path
from .schema import PARTICLE_ID

ArrayOrFrame = np.ndarray | pd.DataFrame


def as_matrix(X: ArrayOrFrame, name: str = "X") -> tuple[np.ndarray, pd.Index | None]:
    """A finite float32 ``(N, D)`` matrix and the DataFrame's index (None for arrays); errors name the bad row."""
    index = X.index if isinstance(X, pd.DataFrame) else None
    if index is not None:
        text = [str(c) for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
        if text:
            raise ValueError(f"{name} has non-numeric columns {text}")
    values = np.asarray(X, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N points x D dims), got shape {values.shape}")
    if values.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        where = f"particle_id {index[row]!r}" if index is not None else f"row {row}"
        raise ValueError(f"{name} has non-finite values ({int((~finite).sum())} rows), first at {where}")
    return np.ascontiguousarray(values), index


def embedding_frame(Y: np.ndarray, index: pd.Index | None, prefix: str = "umap") -> ArrayOrFrame:
    """Wrap a low-dimensional embedding as a DataFrame on ``index`` (``umap_1``, ``umap_2``, ...) when one is given."""
    if index is None:
        return Y
    columns = [f"{prefix}_{i + 1}" for i in range(Y.shape[1])]
    frame = pd.DataFrame(Y, index=index, columns=columns)
    frame.index.name = index.name or PARTICLE_ID
    return frame


def check_n_features(X: np.ndarray, n_features: int, name: str = "X") -> None:
    """Fail clearly when data to transform has another width than the data fitted on."""
    if X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} columns but the reducer was fitted on {n_features}")


class UMAPReducer(TransformerMixin, BaseEstimator):
    """Seeded umap-learn UMAP with fit / transform / save / load; new points are placed on the fitted map.

    A fixed ``random_state`` makes umap-learn deterministic and single-threaded (its own rule);
    pass ``random_state=None`` to trade reproducibility for all cores.
    """

    def __init__(
        self,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        metric: str = "euclidean",
        n_components: int = 2,
        n_epochs: int | None = None,
        random_state: int | None = 0,
        progress: bool = False,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.n_components = n_components
        self.n_epochs = n_epochs
        self.random_state = random_state
        self.progress = progress

    def fit(self, X: ArrayOrFrame, y: Any = None) -> UMAPReducer:
        """Learn the map from the training embeddings (labels are ignored: unsupervised)."""
        return self._fit_matrix(as_matrix(X)[0])

    def _fit_matrix(self, values: np.ndarray) -> UMAPReducer:
        """Fit umap-learn on a checked matrix."""
        import umap

        if values.shape[0] <= self.n_neighbors:
            raise ValueError(f"X has {values.shape[0]} rows; UMAP needs more than n_neighbors={self.n_neighbors}")
        self.umap_ = umap.UMAP(
            n_neighbors=self.n_neighbors,
            min_dist=self.min_dist,
            metric=self.metric,
            n_components=self.n_components,
            n_epochs=self.n_epochs,
            random_state=self.random_state,
            n_jobs=1 if self.random_state is not None else -1,
            tqdm_kwds={"disable": not self.progress},
            verbose=self.progress,
        ).fit(values)
        self.n_features_in_ = values.shape[1]
        return self

    def transform(self, X: ArrayOrFrame) -> ArrayOrFrame:
        """Place new points on the fitted map (a DataFrame keeps its particle_id index)."""
        check_is_fitted(self, "umap_")
        values, index = as_matrix(X)
        check_n_features(values, self.n_features_in_)
        return embedding_frame(self.umap_.transform(values).astype(np.float32), index)

    def fit_transform(self, X: ArrayOrFrame, y: Any = None, **fit_params: Any) -> ArrayOrFrame:
        """The training points' own embedding (umap-learn's optimised layout, not a re-transform)."""
        values, index = as_matrix(X)
        self._fit_matrix(values)
        return embedding_frame(self.umap_.embedding_.astype(np.float32), index)

    def save(self, path: Path | str) -> Path:
        """Pickle the fitted reducer atomically (joblib); load only files this tool wrote: pickle runs code."""
        check_is_fitted(self, "umap_")
        path = Path(path)
        with atomic_path(path) as tmp:
            joblib.dump(self, tmp)
        return path

    @classmethod
    def load(cls, path: Path | str) -> UMAPReducer:
        """Read a reducer written by :meth:`save` (trusted files only: unpickling runs code)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no saved UMAP reducer at {path}")
        reducer = joblib.load(path)
        if not isinstance(reducer, cls):
            raise TypeError(f"{path} holds a {type(reducer).__name__}, not a {cls.__name__}")
        return reducer


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


__all__ = [
    "Timer",
    "UMAPReducer",
    "as_matrix",
    "check_n_features",
    "compare_embeddings",
    "embedding_frame",
    "knn_accuracy_2d",
]
