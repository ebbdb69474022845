"""Novelty scores for particles no known class explains, their evaluation, and the lab-to-core shift.

Every score follows one convention: **higher = more novel**. Detectors are fitted on the labelled
TRAINING particles only; scoring new particles (core, held-out class) never refits them.

Score families, one column each in :meth:`NoveltyScorer.score`'s table:

- classifier (from logits): ``median`` (the study's median of the class probabilities: flat = novel),
  ``msp`` (1 - maximum softmax probability), ``entropy`` (of the softmax), ``energy`` (-logsumexp of logits);
- reconstruction: ``recon`` (the autoencoder's per-particle loss, passed in);
- embedding: ``knn_<space>`` (:class:`KNNDistance`) and ``maha_<space>`` (:class:`ClassMahalanobis`) for each
  embedding (CNN penultimate layer, AE latent, standardised metadata), ``knn_<map>`` for a 2-D map (UMAP),
  where Gaussians mean little and only the distance to the nearest training points is used;
- group: ``excess_<space>`` (:class:`CoreExcess`): how much denser the scored set is around a particle than the
  training set, the signature of a new *class* (many similar particles) rather than a one-off oddity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import logsumexp, softmax
from sklearn.covariance import LedoitWolf, ShrunkCovariance
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.neighbors import NearestNeighbors
from tqdm.auto import tqdm

from .schema import FLOWCAM_FEATURES, PARTICLE_ID

BATCH = 4096
LIGHTS = ("green", "amber", "red")
NON_SCORE_COLUMNS = ("flagged_by", "n_flags")


# ---------------------------------------------------------------- classifier scores


def median_class_score(logits: np.ndarray) -> np.ndarray:
    """The study's score: median of a particle's class probabilities (high when no class stands out)."""
    return np.median(softmax(np.asarray(logits, dtype=np.float64), axis=1), axis=1)


def msp_score(logits: np.ndarray) -> np.ndarray:
    """One minus the maximum softmax probability (Hendrycks & Gimpel 2017), so higher = more novel."""
    return 1.0 - softmax(np.asarray(logits, dtype=np.float64), axis=1).max(axis=1)


def entropy_score(logits: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of the softmax: the classifier's spread over the known classes."""
    logits = np.asarray(logits, dtype=np.float64)
    log_p = logits - logsumexp(logits, axis=1, keepdims=True)
    return -(np.exp(log_p) * log_p).sum(axis=1)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Free energy -T logsumexp(logits / T) (Liu et al. 2020): low total evidence = more novel."""
    return -temperature * logsumexp(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


CLASSIFIER_SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "median": median_class_score,
    "msp": msp_score,
    "entropy": entropy_score,
    "energy": energy_score,
}


def classifier_scores(logits: pd.DataFrame) -> pd.DataFrame:
    """Every classifier-based score of a logits table (one column per class), same index.

    A model without logits (e.g. XGBoost) can pass log-probabilities: every score but ``energy`` (then 0) holds.
    """
    values = _finite(logits, "logits")
    return pd.DataFrame({name: fn(values) for name, fn in CLASSIFIER_SCORES.items()}, index=logits.index)


# ---------------------------------------------------------------- embedding detectors


class KNNDistance:
    """Distance to the k nearest TRAINING embeddings (Sun et al. 2022 use the k-th; the mean is steadier).

    ``train_scores_`` holds each training point's score with the point itself left out: the reference
    distribution for percentiles and traffic lights.
    """

    def __init__(self, k: int = 10, aggregate: Literal["mean", "kth"] = "mean", progress: bool = True) -> None:
        if aggregate not in ("mean", "kth"):
            raise ValueError(f"aggregate must be 'mean' or 'kth', got {aggregate!r}")
        self.k = k
        self.aggregate = aggregate
        self.progress = progress

    def fit(self, X: np.ndarray) -> KNNDistance:
        """Index the training embeddings and record their leave-self-out scores."""
        X = np.asarray(X, dtype=np.float32)
        if len(X) <= self.k:
            raise ValueError(f"KNNDistance needs more than k={self.k} training points, got {len(X)}")
        self.nn_ = NearestNeighbors(n_neighbors=self.k).fit(X)
        self.train_scores_ = _batched(self._leave_self_out, X, "kNN distance (training)", self.progress)
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        """Novelty of new embeddings (higher = farther from the training set); no refit."""
        X = np.asarray(X, dtype=np.float32)
        return _batched(lambda b: self._aggregate(self.nn_.kneighbors(b)[0]), X, "kNN distance", self.progress)

    def _leave_self_out(self, X: np.ndarray) -> np.ndarray:
        """Scores of training points without themselves: k + 1 neighbours, the first (distance 0) dropped."""
        return self._aggregate(self.nn_.kneighbors(X, n_neighbors=self.k + 1)[0][:, 1:])

    def _aggregate(self, distances: np.ndarray) -> np.ndarray:
        """Mean or k-th of each row's neighbour distances."""
        return distances.mean(axis=1) if self.aggregate == "mean" else distances[:, -1]


class ClassMahalanobis:
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
        self.train_scores_ = self.score(X)
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean (higher = more novel); no refit."""
        X = np.asarray(X, dtype=np.float64)
        return _batched(self._min_distance, X, "Mahalanobis", self.progress)

    def _min_distance(self, X: np.ndarray) -> np.ndarray:
        """Smallest squared whitened distance of each row to a class centre."""
        z = X @ self.whiten_
        d2 = (z**2).sum(axis=1, keepdims=True) - 2 * z @ self.centres_.T + (self.centres_**2).sum(axis=1)
        return np.maximum(d2.min(axis=1), 0.0)


class CoreExcess:
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

    ``train_scores_`` is a null distribution: the fit data split in two halves, one scored as a set against the
    other, where no class is new.
    """

    def __init__(self, k: int = 10, seed: int = 0, progress: bool = True) -> None:
        self.k = k
        self.seed = seed
        self.progress = progress

    def fit(self, X: np.ndarray, groups: np.ndarray | None = None) -> CoreExcess:
        """Index the training embeddings and record the null scores of one half scored against the other."""
        X = np.asarray(X, dtype=np.float32)
        if len(X) < 4 * (self.k + 1):
            raise ValueError(f"CoreExcess needs at least {4 * (self.k + 1)} training points for k={self.k}, got {len(X)}")
        groups = _groups(groups, len(X))
        half = np.random.default_rng(self.seed).permutation(len(X)) < len(X) // 2
        null = CoreExcess(self.k, progress=False)
        null.nn_ = NearestNeighbors(n_neighbors=self.k).fit(X[half])
        self.train_scores_ = null.score(X[~half], groups[~half])
        self.nn_ = NearestNeighbors(n_neighbors=self.k).fit(X)
        return self

    def score(self, X: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """Excess of each particle of the set ``X`` (higher = in a crowd the training set lacks); no refit."""
        X = np.asarray(X, dtype=np.float32)
        if len(X) <= self.k:
            raise ValueError(f"CoreExcess scores a set of more than k={self.k} particles, got {len(X)}")
        groups = _groups(groups, len(X))
        own = NearestNeighbors(n_neighbors=self.k + 1).fit(X)
        d_train = _batched(lambda b: self.nn_.kneighbors(b)[0].mean(axis=1), X, "excess: training", self.progress)
        d_own = _batched(lambda b: own.kneighbors(b)[0][:, 1:].mean(axis=1), X, "excess: own set", self.progress)
        tiny = np.finfo(np.float32).eps * max(float(np.median(d_train)), 1e-12)
        ratio = np.log(np.maximum(d_train, tiny)) - np.log(np.maximum(d_own, tiny))
        return ratio - pd.Series(ratio).groupby(groups).transform("median").to_numpy()


def _groups(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Group labels for centring (one group when none are given), checked against the number of points."""
    if groups is None:
        return np.zeros(n, dtype=np.int64)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must have one entry per point ({n}), got shape {groups.shape}")
    return groups


def _batched(fn: Callable[[np.ndarray], np.ndarray], X: np.ndarray, desc: str, progress: bool) -> np.ndarray:
    """Apply a row-wise scoring function in batches (bounded memory) with a progress bar."""
    starts = range(0, len(X), BATCH)
    parts = [fn(X[s : s + BATCH]) for s in tqdm(starts, desc=desc, disable=not progress or len(starts) < 2)]
    return np.concatenate(parts) if parts else np.empty(0)


# ---------------------------------------------------------------- the scorer


class NoveltyScorer:
    """Fit every novelty detector on training inputs, then score new particles into one table.

    Inputs are DataFrames indexed by ``particle_id``: ``logits`` (one column per class), ``recon`` (the
    autoencoder loss, a Series), ``embeddings`` (name -> ``(N, D)`` table: CNN, AE latent, metadata) and
    ``maps`` (name -> ``(N, 2)`` table, e.g. UMAP; new particles placed by the same fitted map's ``transform``).
    Pass for fitting the inputs of particles the models did not train on where you can (the validation
    split): training logits and losses are over-confident. A score whose input is left out of ``score``
    is left out of its table and of the combined rank.

    Each embedding also gets a group score ``excess_<space>`` (:class:`CoreExcess`, centred per predicted class
    when logits are given); it needs the whole scored set (more than ``k`` particles, else it is left out).

    ``score`` returns one column per score, then:

    - ``combined_rank``: mean over scores (those named in ``combine``, default all) of each score's percentile rank. ``reference="train"`` (default)
      ranks against the fitted training distribution of that score, so a particle's rank does not depend on
      what else is scored and 0.99 means "more novel than 99 % of training particles"; scores above every
      training score all get 1.0. ``reference="scored"`` ranks within the scored set instead (order kept at
      the top, but ranks shift with the batch).
    - ``flagged_by``: comma-separated names of the scores whose percentile rank is in the top ``quantile``
      (``n_flags``: how many).
    """

    def __init__(
        self,
        k: int = 10,
        quantile: float = 0.01,
        reference: Literal["train", "scored"] = "train",
        shrinkage: float | Literal["auto"] = "auto",
        combine: Sequence[str] | None = None,
        progress: bool = True,
    ) -> None:
        if reference not in ("train", "scored"):
            raise ValueError(f"reference must be 'train' or 'scored', got {reference!r}")
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
        self.k = k
        self.quantile = quantile
        self.reference = reference
        self.shrinkage = shrinkage
        self.combine = combine
        self.progress = progress

    def fit(
        self,
        logits: pd.DataFrame | None = None,
        recon: pd.Series | None = None,
        embeddings: Mapping[str, pd.DataFrame] | None = None,
        maps: Mapping[str, pd.DataFrame] | None = None,
        labels: pd.Series | None = None,
    ) -> NoveltyScorer:
        """Fit the detectors on training inputs; ``labels`` (by particle id) enable the Mahalanobis scores."""
        embeddings, maps = dict(embeddings or {}), dict(maps or {})
        _check_space_names(embeddings, maps)
        self.knn_: dict[str, KNNDistance] = {}
        self.maha_: dict[str, ClassMahalanobis] = {}
        self.excess_: dict[str, CoreExcess] = {}
        self.train_scores_: dict[str, np.ndarray] = {}
        if logits is not None:
            self.train_scores_.update({c: s.to_numpy() for c, s in classifier_scores(logits).items()})
        if recon is not None:
            self.train_scores_["recon"] = _finite(recon, "recon").ravel()
        for name, table in {**embeddings, **maps}.items():
            knn = KNNDistance(self.k, progress=self.progress).fit(_finite(table, name))
            self.knn_[name] = knn
            self.train_scores_[f"knn_{name}"] = knn.train_scores_
        if labels is not None:
            if labels.isna().any():
                raise ValueError(f"labels: missing label for particle {labels.index[labels.isna().argmax()]!r}")
            for name, table in embeddings.items():
                y = _aligned(labels, table.index, f"labels for embedding {name!r}")
                maha = ClassMahalanobis(self.shrinkage, self.progress).fit(_finite(table, name), y)
                self.maha_[name] = maha
                self.train_scores_[f"maha_{name}"] = maha.train_scores_
        for name, table in embeddings.items():
            groups = _predicted(logits, table.index, "logits") if logits is not None else None
            excess = CoreExcess(self.k, progress=self.progress).fit(_finite(table, name), groups)
            self.excess_[name] = excess
            self.train_scores_[f"excess_{name}"] = excess.train_scores_
        if not self.train_scores_:
            raise ValueError("NoveltyScorer.fit got no inputs: pass logits, recon, embeddings or maps")
        self.score_names_ = list(self.train_scores_)
        self.sorted_train_ = {name: np.sort(v) for name, v in self.train_scores_.items()}
        return self

    def score(
        self,
        logits: pd.DataFrame | None = None,
        recon: pd.Series | None = None,
        embeddings: Mapping[str, pd.DataFrame] | None = None,
        maps: Mapping[str, pd.DataFrame] | None = None,
    ) -> pd.DataFrame:
        """Score new particles with the fitted detectors: one table keyed by particle id."""
        embeddings, maps = dict(embeddings or {}), dict(maps or {})
        _check_space_names(embeddings, maps)
        inputs = {"logits": logits, "recon": recon, **embeddings, **maps}
        given = {name: table for name, table in inputs.items() if table is not None}
        if not given:
            raise ValueError("NoveltyScorer.score got no inputs")
        index = next(iter(given.values())).index
        columns: dict[str, np.ndarray] = {}
        if logits is not None:
            columns.update(classifier_scores(_aligned(logits, index, "logits")).items())
        if recon is not None:
            columns["recon"] = _finite(_aligned(recon, index, "recon"), "recon").ravel()
        for name in [n for n in given if n not in ("logits", "recon")]:
            values = _finite(_aligned(given[name], index, name), name)
            columns[f"knn_{name}"] = self._detector(self.knn_, name).score(values)
            if name in self.maha_:
                columns[f"maha_{name}"] = self.maha_[name].score(values)
        groups = _predicted(logits, index, "logits") if logits is not None else None
        for name in [n for n in embeddings if n in self.excess_ and len(index) > self.k]:
            columns[f"excess_{name}"] = self.excess_[name].score(_finite(_aligned(embeddings[name], index, name), name), groups)
        unfitted = sorted(set(columns) - set(self.score_names_))
        if unfitted:
            raise ValueError(f"score() got inputs for {unfitted} that fit() did not see")
        scores = pd.DataFrame({name: np.asarray(columns[name]) for name in self.score_names_ if name in columns})
        scores.index = pd.Index(index, name=PARTICLE_ID)
        return self._summarise(scores)

    def percentiles(self, scores: pd.DataFrame) -> pd.DataFrame:
        """Percentile rank (0-1) of each score column, against training or within the set (see class doc)."""
        if self.reference == "scored":
            return scores.rank(pct=True)
        return pd.DataFrame(
            {name: _train_percentile(scores[name].to_numpy(), self.sorted_train_[name]) for name in scores},
            index=scores.index,
        )

    def _summarise(self, scores: pd.DataFrame) -> pd.DataFrame:
        """Append the combined rank and which scores flag each particle."""
        pct = self.percentiles(scores)
        top = pct > 1 - self.quantile
        names = np.array(pct.columns)
        flagged = [",".join(names[row]) for row in top.to_numpy()]
        combined = list(self.combine) if self.combine else list(pct.columns)
        missing = sorted(set(combined) - set(pct.columns))
        if missing:
            raise ValueError(f"combine names scores this table lacks: {missing}; it has {list(pct.columns)}")
        return scores.assign(combined_rank=pct[combined].mean(axis=1), flagged_by=flagged, n_flags=top.sum(axis=1))

    @staticmethod
    def _detector(detectors: Mapping[str, KNNDistance], name: str) -> KNNDistance:
        """The fitted detector of a space, or an error naming the spaces fit() saw."""
        if name not in detectors:
            raise ValueError(f"score() got space {name!r} that fit() did not see; fitted: {sorted(detectors)}")
        return detectors[name]


def _predicted(logits: pd.DataFrame, index: pd.Index, name: str) -> np.ndarray:
    """Each particle's predicted class (arg-max column) in the order of ``index``."""
    values = _finite(_aligned(logits, index, name), name)
    return np.asarray(logits.columns)[values.argmax(axis=1)]


def _train_percentile(values: np.ndarray, sorted_train: np.ndarray) -> np.ndarray:
    """Mid-rank percentile of each value within a sorted training distribution (ties count half)."""
    below = np.searchsorted(sorted_train, values, side="left")
    upto = np.searchsorted(sorted_train, values, side="right")
    return (below + upto) / (2.0 * len(sorted_train))


def _check_space_names(embeddings: Mapping[str, pd.DataFrame], maps: Mapping[str, pd.DataFrame]) -> None:
    """Space names must be unique and must not shadow the logits/recon inputs."""
    clash = (set(embeddings) & set(maps)) | ({"logits", "recon"} & (set(embeddings) | set(maps)))
    if clash:
        raise ValueError(f"embedding/map names must be unique and not 'logits'/'recon': {sorted(clash)}")


def _aligned(table: pd.DataFrame | pd.Series, index: pd.Index, name: str) -> pd.DataFrame | pd.Series:
    """Rows of ``table`` in the order of ``index``; names missing or duplicated particle ids."""
    if not table.index.is_unique:
        raise ValueError(f"{name}: duplicated particle id(s), e.g. {list(table.index[table.index.duplicated()][:3])}")
    missing = index.difference(table.index)
    if len(missing):
        raise KeyError(f"{name}: {len(missing)} particle id(s) missing, e.g. {list(missing[:3])}")
    return table.loc[index]


def _finite(table: pd.DataFrame | pd.Series, name: str) -> np.ndarray:
    """The table's values as a float array; names the first particle with a NaN/inf value."""
    values = table.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values).reshape(len(values), -1).all(axis=1)
    if bad.any():
        raise ValueError(f"{name}: non-finite value for particle {table.index[bad.argmax()]!r} ({bad.sum()} rows)")
    return values


# ---------------------------------------------------------------- evaluation


def fpr_at_tpr(is_novel: np.ndarray, scores: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate (known particles flagged) at the first threshold reaching ``tpr`` of the novel."""
    fpr, tprs, _ = roc_curve(is_novel, scores, drop_intermediate=False)
    return float(fpr[np.searchsorted(tprs, tpr - 1e-12, side="left")])


def recall_at_k(is_novel: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Fraction of all novel particles among the ``k`` highest scores (ties: earlier rows first)."""
    order = np.argsort(-scores, kind="stable")
    return float(is_novel[order[:k]].sum() / is_novel.sum())


def novelty_metrics(
    scores: pd.DataFrame,
    is_novel: pd.Series,
    ks: Sequence[int] = (100, 500),
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """AUROC, FPR at 95 % TPR, recall in the top k (each k, and k = 2 x number novel) for each score.

    ``columns`` defaults to every numeric score column (``combined_rank`` included); rows: scores.
    """
    truth = _aligned(is_novel, scores.index, "is_novel").to_numpy(dtype=bool)
    if truth.all() or not truth.any():
        raise ValueError(f"novelty_metrics needs both novel and known particles, got {truth.sum()}/{len(truth)} novel")
    names = columns or [c for c in scores.select_dtypes("number").columns if c not in NON_SCORE_COLUMNS]
    rows = {}
    for name in names:
        values = _finite(scores[name], name)
        row = {"auroc": roc_auc_score(truth, values), "fpr95": fpr_at_tpr(truth, values)}
        row.update({f"recall@{k}": recall_at_k(truth, values, k) for k in ks})
        row["recall@2n"] = recall_at_k(truth, values, 2 * int(truth.sum()))
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("score")


def loco_table(
    results: Mapping[str, tuple[pd.DataFrame, pd.Series]],
    ks: Sequence[int] = (100, 500),
    progress: bool = True,
) -> pd.DataFrame:
    """Leave-one-class-out summary: rows held-out class (+ ``mean``), columns (score, metric).

    ``results`` maps each held-out class to (scores of its test particles, is-novel flags), where the
    held-out class's particles are the novel ones and the known classes' test particles the rest.
    """
    per_class = {
        cls: novelty_metrics(scores, novel, ks).stack()
        for cls, (scores, novel) in tqdm(results.items(), desc="held-out classes", disable=not progress)
    }
    table = pd.DataFrame(per_class).T.rename_axis("held_out")
    table.loc["mean"] = table.mean(axis=0)
    table.columns = table.columns.set_names(["score", "metric"])
    return table


@dataclass(frozen=True)
class UnknownThreshold:
    """A threshold on a novelty score with its operating point measured on held-out and known particles."""

    threshold: float
    tpr: float
    fpr: float

    def __float__(self) -> float:
        """The threshold itself, so the object works wherever a number does."""
        return self.threshold


def unknown_threshold(
    scores_on_heldout: np.ndarray | pd.Series,
    scores_on_known: np.ndarray | pd.Series,
    target_tpr: float = 0.95,
) -> UnknownThreshold:
    """Highest threshold (on e.g. ``combined_rank``) that flags ``target_tpr`` of held-out-class particles.

    Pool the held-out particles of every leave-one-class-out fold: a new class in the core is then caught
    at about that rate; the known particles' rate above it (``fpr``) is what "unknown" costs.
    """
    heldout = np.sort(np.asarray(scores_on_heldout, dtype=np.float64))[::-1]
    known = np.asarray(scores_on_known, dtype=np.float64)
    if not 0 < target_tpr <= 1 or not len(heldout):
        raise ValueError(f"need held-out scores and 0 < target_tpr <= 1, got {len(heldout)} and {target_tpr}")
    threshold = float(heldout[int(np.ceil(target_tpr * len(heldout))) - 1])
    return UnknownThreshold(threshold, float((heldout >= threshold).mean()), float((known >= threshold).mean()))


def flag_fraction_by_group(flags: pd.Series, groups: pd.Series | pd.DataFrame) -> pd.DataFrame:
    """Per group (sample, depth): particles, flagged particles and the flagged fraction."""
    keys = _aligned(groups, flags.index, "groups")
    grouped = flags.astype(bool).groupby(_group_keys(keys), observed=True, sort=True)
    return pd.DataFrame({"n": grouped.size(), "n_flagged": grouped.sum(), "fraction": grouped.mean()})


def _group_keys(groups: pd.Series | pd.DataFrame) -> list[pd.Series]:
    """The Series to group by: a Series itself, or every column of a DataFrame."""
    return [groups[c] for c in groups.columns] if isinstance(groups, pd.DataFrame) else [groups]


# ---------------------------------------------------------------- lab -> core shift


def feature_drift(
    train_df: pd.DataFrame,
    core_df: pd.DataFrame,
    features: Sequence[str] = FLOWCAM_FEATURES,
    bins: int = 10,
) -> pd.DataFrame:
    """Per feature: KS statistic (and p-value), standardised mean difference and PSI, worst PSI first.

    PSI bins are training deciles (``bins`` quantiles); rule of thumb: < 0.1 stable, 0.1-0.25 moderate,
    > 0.25 a shift worth a look. NaNs are dropped per feature.
    """
    for name, df in (("training", train_df), ("core", core_df)):
        missing = [f for f in features if f not in df.columns]
        if missing:
            raise KeyError(f"feature_drift: the {name} table lacks column(s) {missing}")
    rows = {f: _drift_row(_numeric(train_df, f, "training"), _numeric(core_df, f, "core"), bins) for f in features}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("feature").sort_values("psi", ascending=False)


def class_conditional_shift(
    train: pd.DataFrame,
    train_labels: pd.Series,
    core: pd.DataFrame,
    core_pred: pd.Series,
    min_count: int = 10,
) -> pd.DataFrame:
    """Per feature and class: core minus training mean within the same class, in pooled within-class SDs.

    The core's class prior differs from the lab's, so a plain train-vs-core drift mixes "more dust" with "a
    different instrument setting". Within one (predicted) class only the acquisition is left: a feature that
    shifts there measures the instrument, not the particle. Classes with fewer than ``min_count`` core
    particles are left out; column ``median_abs`` summarises each feature over classes (robust to one class
    hiding a new type), NaN where the feature does not vary within training classes.
    """
    labels = _aligned(train_labels, train.index, "train_labels").to_numpy()
    pred = _aligned(core_pred, core.index, "core_pred").to_numpy()
    spread = np.sqrt(train.groupby(labels).var(ddof=1).mean(axis=0))
    counts = pd.Series(pred).value_counts()
    classes = [c for c in np.unique(labels) if counts.get(c, 0) >= min_count]
    if not classes:
        raise ValueError(f"class_conditional_shift: no class has {min_count} core particles predicted")
    shift = pd.DataFrame({
        c: (core[pred == c].mean(axis=0) - train[labels == c].mean(axis=0)) / spread.where(spread > 0)
        for c in classes
    })
    return shift.assign(median_abs=shift.abs().median(axis=1, skipna=False)).rename_axis("feature")


def _numeric(df: pd.DataFrame, column: str, name: str) -> np.ndarray:
    """A column's non-missing values as floats; names the table and column if it is not numeric."""
    if not pd.api.types.is_numeric_dtype(df[column]):
        raise TypeError(f"feature_drift: column {column!r} of the {name} table is not numeric ({df[column].dtype})")
    values = df[column].to_numpy(dtype=np.float64, na_value=np.nan)
    values = values[np.isfinite(values)]
    if not len(values):
        raise ValueError(f"feature_drift: column {column!r} of the {name} table has no finite values")
    return values


def _drift_row(train: np.ndarray, core: np.ndarray, bins: int) -> dict[str, float]:
    """KS, SMD and PSI of one feature."""
    ks = stats.ks_2samp(train, core)
    pooled_sd = np.sqrt((train.var(ddof=1) + core.var(ddof=1)) / 2) if min(len(train), len(core)) > 1 else 0.0
    smd = (core.mean() - train.mean()) / pooled_sd if pooled_sd > 0 else 0.0
    return {
        "ks": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
        "smd": float(smd),
        "psi": psi(train, core, bins),
        "train_mean": float(train.mean()),
        "core_mean": float(core.mean()),
    }


def psi(reference: np.ndarray, other: np.ndarray, bins: int = 10, floor: float = 1e-4) -> float:
    """Population stability index of ``other`` against ``reference``, on the reference's quantile bins."""
    inner = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    p = np.maximum(np.histogram(reference, edges)[0] / len(reference), floor)
    q = np.maximum(np.histogram(other, edges)[0] / len(other), floor)
    return float(((q - p) * np.log(q / p)).sum())


def traffic_light(
    dist_core: pd.Series | np.ndarray,
    dist_train: np.ndarray,
    levels: tuple[float, float] = (0.95, 0.99),
) -> pd.Series:
    """Green inside the 95th percentile of training kNN distances, amber inside the 99th, red beyond.

    Use ``KNNDistance.train_scores_`` (leave-self-out) as ``dist_train``: in-sample distances are zero.
    """
    amber, red = np.quantile(np.asarray(dist_train, dtype=np.float64), levels)
    core = dist_core if isinstance(dist_core, pd.Series) else pd.Series(np.asarray(dist_core))
    codes = np.digitize(core.to_numpy(dtype=np.float64), [amber, red], right=True)
    lights = pd.Categorical.from_codes(codes, categories=list(LIGHTS), ordered=True)
    return pd.Series(lights, index=core.index, name="light")


def traffic_light_by_group(lights: pd.Series, groups: pd.Series | pd.DataFrame) -> pd.DataFrame:
    """Per group (sample, depth): particles and the fraction in each light, worst (most red) first."""
    keys = _aligned(groups, lights.index, "groups")
    table = pd.crosstab(_group_keys(keys), lights.astype(str), normalize="index")
    table = table.reindex(columns=list(LIGHTS), fill_value=0.0)
    table.insert(0, "n", lights.groupby(_group_keys(keys), observed=True).size())
    return table.sort_values(["red", "amber"], ascending=False)


__all__ = [
    "CLASSIFIER_SCORES",
    "ClassMahalanobis",
    "CoreExcess",
    "KNNDistance",
    "NoveltyScorer",
    "UnknownThreshold",
    "class_conditional_shift",
    "classifier_scores",
    "energy_score",
    "entropy_score",
    "feature_drift",
    "flag_fraction_by_group",
    "fpr_at_tpr",
    "loco_table",
    "median_class_score",
    "msp_score",
    "novelty_metrics",
    "psi",
    "recall_at_k",
    "traffic_light",
    "traffic_light_by_group",
]
