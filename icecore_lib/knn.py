"""Exact nearest neighbours for UMAP's graphs, in place of umap-learn's NN-descent.

umap-learn builds its neighbour graph with pynndescent from 4,096 points up, and pynndescent jit-compiles its
kernels inside functions, where numba's on-disk cache cannot keep them: ~30 s of compiling in every fresh
process (each notebook kernel, each test run; docs/measurements.md), longer than the search itself at the sizes
a lab embeds (tens of thousands of 40- or 64-dim points: a BLAS distance pass in seconds). Exact neighbours are
what NN-descent approximates (docs/measurements.md compares the maps). :class:`ExactIndex` answers umap-learn's
``transform`` the way its NN-descent index does (``query``), so new points are placed on the map as before.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors


class ExactIndex:
    """scikit-learn's exact neighbour search behind the ``query`` umap-learn asks of its search index."""

    _angular_trees = False  # umap-learn reads it to choose NN-descent's search epsilon, which exact search ignores

    def __init__(self, X: np.ndarray, metric: str = "euclidean") -> None:
        self.points = np.asarray(X)
        self.nn = NearestNeighbors(metric=metric).fit(self.points)

    def query(self, X: np.ndarray, k: int, epsilon: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest indexed points of each row of ``X``: indices (int32) and distances (float32)."""
        dist, idx = self.nn.kneighbors(np.asarray(X), n_neighbors=k)
        return idx.astype(np.int32), dist.astype(np.float32)

    def neighbour_graph(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each indexed point's ``k`` nearest, itself first (as umap-learn's graphs count it)."""
        return self.query(self.points, k)
