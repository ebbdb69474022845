"""How well a novelty score finds the new: AUROC, FPR at 95% TPR, recall in the top k, leave-one-class-out tables,
the calibrated unknown threshold, flagged fractions and traffic lights per sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm.auto import tqdm

from ..frames import aligned, finite_values

LIGHTS = ("green", "amber", "red")


NON_SCORE_COLUMNS = ("flagged_by", "n_flags")


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
    truth = aligned(is_novel, scores.index, "is_novel").to_numpy(dtype=bool)
    if truth.all() or not truth.any():
        raise ValueError(f"novelty_metrics needs both novel and known particles, got {truth.sum()}/{len(truth)} novel")
    names = columns or [c for c in scores.select_dtypes("number").columns if c not in NON_SCORE_COLUMNS]
    rows = {}
    for name in names:
        values = finite_values(scores[name], name)
        row = {"auroc": roc_auc_score(truth, values), "fpr95": fpr_at_tpr(truth, values)}
        row.update({f"recall@{k}": recall_at_k(truth, values, k) for k in ks})
        row["recall@2n"] = recall_at_k(truth, values, 2 * int(truth.sum()))
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("score")


def loco_novelty_table(
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
    keys = aligned(groups, flags.index, "groups")
    grouped = flags.astype(bool).groupby(_group_keys(keys), observed=True, sort=True)
    return pd.DataFrame({"n": grouped.size(), "n_flagged": grouped.sum(), "fraction": grouped.mean()})


def _group_keys(groups: pd.Series | pd.DataFrame) -> list[pd.Series]:
    """The Series to group by: a Series itself, or every column of a DataFrame."""
    return [groups[c] for c in groups.columns] if isinstance(groups, pd.DataFrame) else [groups]


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
    keys = aligned(groups, lights.index, "groups")
    table = pd.crosstab(_group_keys(keys), lights.astype(str), normalize="index")
    table = table.reindex(columns=list(LIGHTS), fill_value=0.0)
    table.insert(0, "n", lights.groupby(_group_keys(keys), observed=True).size())
    return table.sort_values(["red", "amber"], ascending=False)
