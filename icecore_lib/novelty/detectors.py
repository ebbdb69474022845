"""Novelty detectors fitted on training embeddings (higher = more novel): kNN distance, class Mahalanobis, core excess.

Each follows scikit-learn's estimator contract: ``__init__`` stores parameters, ``fit`` validates and returns
self, learned attributes end in ``_``, and ``score_samples`` gives one score per particle. The sign is
icecore's one convention (higher = more novel), the opposite of scikit-learn's outlier detectors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import ceil
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.covariance import LedoitWolf, ShrunkCovariance
from sklearn.neighbors import NearestNeighbors
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

BATCH = 4096


class KNNDistance(BaseEstimator):
    """Distance to the k nearest TRAINING embeddings (Sun et al. 2022 use the k-th; the mean is steadier).

    ``train_scores_`` holds each training point's score with the point itself left out: the reference
    distribution for percentiles and traffic lights.
    """

    def __init__(self, k: int = 10, aggregate: Literal["mean", "kth"] = "mean", progress: bool = True) -> None:
        self.k = k
        self.aggregate = aggregate
        self.progress = progress

    def fit(self, X: np.ndarray) -> KNNDistance:
        """Index the training embeddings and record their leave-self-out scores."""
        if self.aggregate not in ("mean", "kth"):
            raise ValueError(f"aggregate must be 'mean' or 'kth', got {self.aggregate!r}")
        X = np.asarray(X, dtype=np.float32)
        if len(X) <= self.k:
            raise ValueError(f"KNNDistance needs more than k={self.k} training points, got {len(X)}")
        self.nn_ = NearestNeighbors(n_neighbors=self.k).fit(X)
        self.train_scores_ = _batched(self._leave_self_out, X, "kNN distance (training)", self.progress)
        return self

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Novelty of new embeddings (higher = farther from the training set); no refit."""
        check_is_fitted(self, "nn_")
        X = np.asarray(X, dtype=np.float32)
        return _batched(lambda b: self._aggregate(self.nn_.kneighbors(b)[0]), X, "kNN distance", self.progress)

    def _leave_self_out(self, X: np.ndarray) -> np.ndarray:
        """Scores of training points without themselves: k + 1 neighbours, the first (distance 0) dropped."""
        return self._aggregate(self.nn_.kneighbors(X, n_neighbors=self.k + 1)[0][:, 1:])

    def _aggregate(self, distances: np.ndarray) -> np.ndarray:
        """Mean or k-th of each row's neighbour distances."""
        return distances.mean(axis=1) if self.aggregate == "mean" else distances[:, -1]


class ClassMahalanobis(BaseEstimator):
    """Minimum Mahalanobis distance to class-conditional Gaussians with one shared covariance (Lee et al. 2018).

    The shared covariance of the class-centred training embeddings is shrunk (Ledoit-Wolf when
    ``shrinkage="auto"``, else a fixed coefficient) so it stays invertible for wide embeddings.
    ``train_scores_`` are the in-sample scores of the training points.
    """

    def __init__(self, shrinkage: float | Literal["auto"] = "auto", progress: bool = True) -> None:
        self.shrinkage = shrinkage
        self.progress = progress

    def fit(self, X: np.ndarray, y: Sequence | np.ndarray) -> ClassMahalanobis:
        """Class means and the shrunk shared precision of the training embeddings."""
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        if len(y) != len(X):
            raise ValueError(f"ClassMahalanobis: {len(X)} embeddings but {len(y)} labels")
        self.classes_, codes = np.unique(y, return_inverse=True)
        self.means_ = np.stack([X[codes == c].mean(axis=0) for c in range(len(self.classes_))])
        centred = X - self.means_[codes]
        estimator = (
            LedoitWolf(assume_centered=True)
            if self.shrinkage == "auto"
            else ShrunkCovariance(shrinkage=float(self.shrinkage), assume_centered=True)
        )
        precision = estimator.fit(centred).precision_
        # P = L L^T, so (x - mu)^T P (x - mu) = |(x - mu) L|^2: distances in the whitened space.
        self.whiten_ = np.linalg.cholesky((precision + precision.T) / 2)
        self.centres_ = self.means_ @ self.whiten_
        self.train_scores_ = self.score_samples(X)
        return self

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean (higher = more novel); no refit."""
        check_is_fitted(self, "whiten_")
        X = np.asarray(X, dtype=np.float64)
        return _batched(self._min_distance, X, "Mahalanobis", self.progress)

    def _min_distance(self, X: np.ndarray) -> np.ndarray:
        """Smallest squared whitened distance of each row to a class centre."""
        z = X @ self.whiten_
        d2 = (z**2).sum(axis=1, keepdims=True) - 2 * z @ self.centres_.T + (self.centres_**2).sum(axis=1)
        return np.maximum(d2.min(axis=1), 0.0)


class CoreExcess(BaseEstimator):
    """Local excess of the scored set's density over the training density: a new class is a crowd, not a stray.

    Score = log(mean distance to the ``k`` nearest training points) - log(mean distance to the ``k`` nearest
    OTHER points of the scored set), a k-NN estimate of the log density ratio p_scored / p_train (the
    "inlier-based outlier detection" of Hido et al. 2011, turned around: here the scored set's crowds are
    the target). Pointwise distances flag every odd particle (cut edges, doubles, the diverse contamination
    class); a planted or real new type forms its own crowd in the scored set that the training set lacks.

    The class prior of the scored set differs from training (an ice core is mostly dust), which inflates the
    ratio of a whole class; scores are therefore centred on the median of their ``groups`` (pass each particle's
    predicted class), so a crowd stands out against the rest of the class it is mistaken for. The scored set is
    the reference of its own scores: score a whole core, not a handful of particles.

    A core is imaged in several instrument sessions, and a session's own look (its light, focus, noise) or one
    sample's layer can make a crowd of known particles that no lab session shows. Pass each particle's ``sessions``
    and its own-set neighbours are taken from the OTHER sessions only: a new type that recurs down the core stays a
    crowd, a crowd that one session made does not (with one session, or when the other sessions hold ``k`` or
    fewer particles, a particle's neighbours come from the whole set).

    The sets differ in size (a session's others hold fewer particles the bigger the session, and a core is rarely
    as big as the lab's set), so ``k`` nearest neighbours in each would measure them at different scales and favour
    the crowds of small sessions. The training set gets ``k`` neighbours and an own set as many as hold the same
    share of it (``k`` x its size / the training set's, fractional: the last one weighted; at least one), so both
    distances are radii holding the same share of their sets.

    Beyond the training set's reach, how far a particle lies from it says nothing more about a crowd: the distance
    to training is capped at the ``reach`` quantile of the training points' own (leave-self-out) distances, so a
    sparse tail the lab never imaged (specks a dark session made) does not outrank a dense new type (``None``: no cap).

    ``train_scores_`` is a null distribution: the fit data split in two halves, one scored as a set against the
    other, where no class is new.
    """

    def __init__(self, k: int = 10, reach: float | None = 0.99, seed: int = 0, progress: bool = True) -> None:
        self.k = k
        self.reach = reach
        self.seed = seed
        self.progress = progress

    def fit(self, X: np.ndarray, groups: np.ndarray | None = None) -> CoreExcess:
        """Index the training embeddings and record the null scores of one half scored against the other."""
        X = np.asarray(X, dtype=np.float32)
        if len(X) < 4 * (self.k + 1):
            raise ValueError(f"CoreExcess needs at least {4 * (self.k + 1)} training points for k={self.k}, got {len(X)}")
        if self.reach is not None and not 0 < self.reach <= 1:
            raise ValueError(f"reach must lie in (0, 1] or be None, got {self.reach}")
        groups = _groups(groups, len(X))
        half = np.random.default_rng(self.seed).permutation(len(X)) < len(X) // 2
        null = CoreExcess(self.k, self.reach, progress=False)
        null._index(X[half])
        self.train_scores_ = null.score_samples(X[~half], groups[~half])
        self._index(X)
        return self

    def _index(self, X: np.ndarray) -> None:
        """Index the training points: their neighbours, their number and their reach (quantile of leave-self-out
        distances)."""
        self.nn_ = NearestNeighbors(n_neighbors=self.k).fit(X)
        self.n_train_ = len(X)
        self.reach_ = np.inf
        if self.reach is not None:
            own = _batched(lambda b: self.nn_.kneighbors(b, n_neighbors=self.k + 1)[0][:, 1:].mean(axis=1), X,
                           "excess: training reach", self.progress)
            self.reach_ = float(np.quantile(own, self.reach))

    def score_samples(self, X: np.ndarray, groups: np.ndarray | None = None,
                      sessions: np.ndarray | None = None) -> np.ndarray:
        """Excess of each particle of the set ``X`` (higher = in a crowd the training set lacks); no refit."""
        check_is_fitted(self, "reach_")
        X = np.asarray(X, dtype=np.float32)
        if len(X) <= self.k:
            raise ValueError(f"CoreExcess scores a set of more than k={self.k} particles, got {len(X)}")
        groups = _groups(groups, len(X))
        d_train = np.minimum(_batched(lambda b: self.nn_.kneighbors(b)[0].mean(axis=1), X, "excess: training",
                                      self.progress), self.reach_)
        d_own = self._own_distance(X, _groups(sessions, len(X), "sessions"))
        tiny = np.finfo(np.float32).eps * max(float(np.median(d_train)), 1e-12)
        ratio = np.log(np.maximum(d_train, tiny)) - np.log(np.maximum(d_own, tiny))
        return ratio - pd.Series(ratio).groupby(groups).transform("median").to_numpy()

    def _own_distance(self, X: np.ndarray, sessions: np.ndarray) -> np.ndarray:
        """Mean distance of each particle to its nearest others in the set (from other sessions where they hold
        more than ``k`` particles), as many as ``k`` is of the training set (at least one)."""
        d_own = np.empty(len(X))
        names = np.unique(sessions)
        for session in tqdm(names, desc="excess: own set", disable=not self.progress or len(names) < 2):
            inside = sessions == session
            skip = int((~inside).sum() <= self.k)  # too few elsewhere: the whole set, less the particle itself
            others = np.ones_like(inside) if skip else ~inside
            k_own = max(1.0, self.k * (int(others.sum()) - skip) / self.n_train_)
            nearest = NearestNeighbors(n_neighbors=ceil(k_own) + skip).fit(X[others])
            d_own[inside] = _batched(lambda b: _mean_distance(nearest.kneighbors(b)[0][:, skip:], k_own), X[inside],
                                     "", False)
        return d_own


def _mean_distance(distances: np.ndarray, k: float) -> np.ndarray:
    """Mean of each row's ``k`` smallest distances (sorted rows) for a fractional ``k``: the last one weighted by
    the fraction."""
    weights = np.clip(k - np.arange(distances.shape[1]), 0.0, 1.0)
    return distances @ weights / weights.sum()


def _groups(groups: np.ndarray | None, n: int, name: str = "groups") -> np.ndarray:
    """Labels per point (groups for centring, sessions; one label when none are given), checked against the number
    of points."""
    if groups is None:
        return np.zeros(n, dtype=np.int64)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"{name} must have one entry per point ({n}), got shape {groups.shape}")
    return groups


def _batched(fn: Callable[[np.ndarray], np.ndarray], X: np.ndarray, desc: str, progress: bool) -> np.ndarray:
    """Apply a row-wise scoring function in batches (bounded memory) with a progress bar."""
    starts = range(0, len(X), BATCH)
    parts = [fn(X[s : s + BATCH]) for s in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2)]
    return np.concatenate(parts) if parts else np.empty(0)
