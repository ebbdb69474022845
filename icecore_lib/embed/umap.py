"""UMAP of embeddings: umap-learn behind a seeded scikit-learn shape (fit / transform / save / load).

Embeddings are ``(N, D)`` float arrays or DataFrames indexed by ``particle_id``; a DataFrame in gives a
DataFrame out with the same index, so per-particle results stay keyed by particle.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..files import atomic_path
from ..frames import ArrayOrFrame, as_matrix, check_n_features, embedding_frame
from ..knn import ExactIndex
from ..numba_cache import umap_module


class UMAPReducer(TransformerMixin, BaseEstimator):
    """Seeded umap-learn UMAP with fit / transform / save / load; new points are placed on the fitted map.

    Its neighbour graph and the new points' neighbours are exact (:mod:`icecore_lib.knn`), not NN-descent's.

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
        if values.shape[0] <= self.n_neighbors:
            raise ValueError(f"X has {values.shape[0]} rows; UMAP needs more than n_neighbors={self.n_neighbors}")
        index = ExactIndex(values, self.metric)
        knn = (*index.neighbour_graph(self.n_neighbors), index)
        reducer = umap_module().UMAP(
            n_neighbors=self.n_neighbors,
            min_dist=self.min_dist,
            metric=self.metric,
            n_components=self.n_components,
            n_epochs=self.n_epochs,
            random_state=self.random_state,
            n_jobs=1 if self.random_state is not None else -1,
            tqdm_kwds={"disable": not self.progress},
            verbose=self.progress,
            precomputed_knn=knn,
        )
        with warnings.catch_warnings():
            # umap-learn warns that an index of another kind than NN-descent's cannot transform; ours can (query).
            warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
            self.umap_ = reducer.fit(values)
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
