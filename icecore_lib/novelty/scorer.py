"""The novelty scorer: every detector fitted on training inputs, new particles scored into one table.

Every score follows one convention: **higher = more novel**. Detectors are fitted on the labelled
TRAINING particles only; scoring new particles (core, held-out class) never refits them.

Score families, one column each in :meth:`NoveltyScorer.score_samples`'s table:

- classifier (from logits, :mod:`icecore_lib.novelty.scores`): ``median`` (the study's median of the class
  probabilities: flat = novel), ``msp`` (1 - maximum softmax probability), ``entropy`` (of the softmax),
  ``energy`` (-logsumexp of logits);
- reconstruction: ``recon`` (the autoencoder's per-particle loss, passed in);
- embedding: ``knn_<space>`` (:class:`KNNDistance`) and ``maha_<space>`` (:class:`ClassMahalanobis`) for each
  embedding (CNN penultimate layer, AE latent, standardised metadata), ``knn_<map>`` for a 2-D map (UMAP),
  where Gaussians mean little and only the distance to the nearest training points is used;
- group: ``excess_<space>`` (:class:`CoreExcess`): how much denser the scored set is around a particle than the
  training set, the signature of a new *class* (many similar particles) rather than a one-off oddity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ..frames import aligned, finite_values
from ..schema import PARTICLE_ID
from .detectors import ClassMahalanobis, CoreExcess, KNNDistance
from .scores import classifier_scores

EXCESS = "excess_"  # the group scores' prefix: excess_<space>


class NoveltyScorer(BaseEstimator):
    """Fit every novelty detector on training inputs, then score new particles into one table.

    Inputs are DataFrames indexed by ``particle_id``: ``logits`` (one column per class), ``recon`` (the
    autoencoder loss, a Series), ``embeddings`` (name -> ``(N, D)`` table: CNN, AE latent, metadata) and
    ``maps`` (name -> ``(N, 2)`` table, e.g. UMAP; new particles placed by the same fitted map's ``transform``).
    Pass for fitting the inputs of particles the models did not train on where you can (the validation
    split): training logits and losses are over-confident. A score whose input is left out of ``score_samples``
    is left out of its table and of the combined rank.

    Each embedding also gets a group score ``excess_<space>`` (:class:`CoreExcess`, centred per predicted class
    when logits are given); it needs the whole scored set (more than ``k`` particles, else it is left out). Give a
    core's ``sessions`` to ``score_samples`` and a particle's crowd is counted in the other sessions only.

    ``score_samples`` returns one column per score, then:

    - ``combined_rank``: mean over scores (those named in ``combine``, default all) of each score's percentile rank. ``reference="train"`` (default)
      ranks against the fitted training distribution of that score, so a particle's rank does not depend on
      what else is scored and 0.99 means "more novel than 99 % of training particles"; scores above every
      training score share the last half-rank in their own order (an exponential tail), and ranks between two training
      scores are interpolated, so particles never tie unless their scores do.
      ``reference="scored"`` ranks within the scored set instead (order kept at
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
        if self.reference not in ("train", "scored"):
            raise ValueError(f"reference must be 'train' or 'scored', got {self.reference!r}")
        if not 0 < self.quantile < 1:
            raise ValueError(f"quantile must lie in (0, 1), got {self.quantile}")
        embeddings, maps = dict(embeddings or {}), dict(maps or {})
        _check_space_names(embeddings, maps)
        self.knn_: dict[str, KNNDistance] = {}
        self.maha_: dict[str, ClassMahalanobis] = {}
        self.excess_: dict[str, CoreExcess] = {}
        self.train_scores_: dict[str, np.ndarray] = {}
        if logits is not None:
            self.train_scores_.update({c: s.to_numpy() for c, s in classifier_scores(logits).items()})
        if recon is not None:
            self.train_scores_["recon"] = finite_values(recon, "recon").ravel()
        for name, table in {**embeddings, **maps}.items():
            knn = KNNDistance(self.k, progress=self.progress).fit(finite_values(table, name))
            self.knn_[name] = knn
            self.train_scores_[f"knn_{name}"] = knn.train_scores_
        if labels is not None:
            if labels.isna().any():
                raise ValueError(f"labels: missing label for particle {labels.index[labels.isna().argmax()]!r}")
            for name, table in embeddings.items():
                y = aligned(labels, table.index, f"labels for embedding {name!r}")
                maha = ClassMahalanobis(self.shrinkage, self.progress).fit(finite_values(table, name), y)
                self.maha_[name] = maha
                self.train_scores_[f"maha_{name}"] = maha.train_scores_
        for name, table in embeddings.items():
            groups = _predicted(logits, table.index, "logits") if logits is not None else None
            excess = CoreExcess(self.k, progress=self.progress).fit(finite_values(table, name), groups)
            self.excess_[name] = excess
            self.train_scores_[f"{EXCESS}{name}"] = excess.train_scores_
        if not self.train_scores_:
            raise ValueError("NoveltyScorer.fit got no inputs: pass logits, recon, embeddings or maps")
        self.score_names_ = list(self.train_scores_)
        self.sorted_train_ = {name: np.sort(v) for name, v in self.train_scores_.items()}
        return self

    def score_samples(
        self,
        logits: pd.DataFrame | None = None,
        recon: pd.Series | None = None,
        embeddings: Mapping[str, pd.DataFrame] | None = None,
        maps: Mapping[str, pd.DataFrame] | None = None,
        sessions: pd.Series | None = None,
    ) -> pd.DataFrame:
        """Score new particles with the fitted detectors: one table keyed by particle id (``sessions``, by particle
        id: the instrument session of each, so the group scores find crowds that recur across sessions)."""
        check_is_fitted(self, "score_names_")
        embeddings, maps = dict(embeddings or {}), dict(maps or {})
        _check_space_names(embeddings, maps)
        inputs = {"logits": logits, "recon": recon, **embeddings, **maps}
        given = {name: table for name, table in inputs.items() if table is not None}
        if not given:
            raise ValueError("NoveltyScorer.score_samples got no inputs")
        index = next(iter(given.values())).index
        columns: dict[str, np.ndarray] = {}
        if logits is not None:
            columns.update(classifier_scores(aligned(logits, index, "logits")).items())
        if recon is not None:
            columns["recon"] = finite_values(aligned(recon, index, "recon"), "recon").ravel()
        for name in [n for n in given if n not in ("logits", "recon")]:
            values = finite_values(aligned(given[name], index, name), name)
            columns[f"knn_{name}"] = self._detector(self.knn_, name).score_samples(values)
            if name in self.maha_:
                columns[f"maha_{name}"] = self.maha_[name].score_samples(values)
        groups = _predicted(logits, index, "logits") if logits is not None else None
        session = aligned(sessions, index, "sessions").to_numpy() if sessions is not None else None
        for name in [n for n in embeddings if n in self.excess_ and len(index) > self.k]:
            values = finite_values(aligned(embeddings[name], index, name), name)
            columns[f"{EXCESS}{name}"] = self.excess_[name].score_samples(values, groups, session)
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
    values = finite_values(aligned(logits, index, name), name)
    return np.asarray(logits.columns)[values.argmax(axis=1)]


def _train_percentile(values: np.ndarray, sorted_train: np.ndarray) -> np.ndarray:
    """Mid-rank percentile of each value within a sorted training distribution, continuous and order-keeping.

    A training value's own rank is its mid-rank (ties count half); between two training values the rank is
    interpolated linearly, and beyond the training range the remaining fraction decays exponentially (scale: the
    training IQR): above the maximum 1 - (1 - r_max) exp(-(x - max) / IQR). So no two scores tie unless they are
    equal, and a crowd of new particles above every training score keeps its order rather than all reading 1.0.
    """
    n = len(sorted_train)
    unique, first, counts = np.unique(sorted_train, return_index=True, return_counts=True)
    mid = (first + counts / 2.0) / n
    low, high = unique[0], unique[-1]
    spread = sorted_train[int(0.75 * (n - 1))] - sorted_train[int(0.25 * (n - 1))]
    scale = spread if spread > 0 else (high - low if high > low else 1.0)
    with np.errstate(over="ignore"):
        above = 1.0 - (1.0 - mid[-1]) * np.exp(-(values - high) / scale)
        under = mid[0] * np.exp((values - low) / scale)
    return np.where(values > high, above, np.where(values < low, under, np.interp(values, unique, mid)))


def _check_space_names(embeddings: Mapping[str, pd.DataFrame], maps: Mapping[str, pd.DataFrame]) -> None:
    """Space names must be unique and must not shadow the logits/recon inputs."""
    clash = (set(embeddings) & set(maps)) | ({"logits", "recon"} & (set(embeddings) | set(maps)))
    if clash:
        raise ValueError(f"embedding/map names must be unique and not 'logits'/'recon': {sorted(clash)}")

