"""Label issues in the reference set: out-of-fold probabilities of a classifier, ranked by cleanlab.

A person sorting thousands of crops mislabels some (a Grimsvotn shard filed as Campanian, contamination as dust);
those labels teach every model of the run the wrong thing and bias every accuracy. Each labelled particle is
predicted by a model that never saw it (stratified k-fold), and cleanlab's confident learning
(``cleanlab.filter.find_label_issues``, ranked by self-confidence) lists the particles whose given label the data
contradicts most, with the class the model suggests instead: a list to look at, not to apply blindly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from sklearn.base import ClassifierMixin, clone
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from .evaluate import label_codes


def out_of_fold_proba(model: ClassifierMixin, X: pd.DataFrame, labels: pd.Series, classes: Sequence[str], *,
                      folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """Each particle's class probabilities from a clone of ``model`` fitted on the other folds (stratified, seeded)."""
    smallest = int(labels.value_counts().min())
    if smallest < folds:
        raise ValueError(f"out-of-fold probabilities need {folds} particles of every class; "
                         f"{labels.value_counts().idxmin()!r} has {smallest}")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    label_codes(labels, classes)  # every label must be one of the classes
    proba = cross_val_predict(clone(model), X, labels.to_numpy(), cv=cv, method="predict_proba")
    # cross_val_predict orders the columns as the sorted labels; the table follows ``classes``.
    frame = pd.DataFrame(proba, index=X.index, columns=np.unique(labels.to_numpy()))
    return frame.reindex(columns=list(classes), fill_value=0.0)


def rank_label_issues(labels: pd.Series, proba: pd.DataFrame) -> pd.DataFrame:
    """The particles whose given label the out-of-fold probabilities contradict, most doubtful first.

    Columns: ``given`` label, ``suggested`` (the most probable class), ``given_proba`` (cleanlab's self-confidence,
    lower = more doubtful), ``suggested_proba`` and ``rank`` (1 = look at first).
    """
    if not labels.index.equals(proba.index):
        raise ValueError("rank_label_issues: labels and probabilities must be keyed by the same particles, in order")
    classes = list(proba.columns)
    codes = label_codes(labels, classes)
    ranked = find_label_issues(codes, proba.to_numpy(), return_indices_ranked_by="self_confidence")
    ids = proba.index[ranked]
    table = pd.DataFrame({
        "given": labels.loc[ids].to_numpy(),
        "suggested": proba.loc[ids].idxmax(axis=1).to_numpy(),
        "given_proba": proba.to_numpy()[ranked, codes[ranked]],
        "suggested_proba": proba.loc[ids].max(axis=1).to_numpy(),
    }, index=ids)
    table["rank"] = np.arange(1, len(table) + 1)
    return table


def recall_in_top(issues: pd.DataFrame, flipped: Sequence[str], factor: float = 2.0) -> float:
    """Share of the ``flipped`` particles among the first ``factor`` x len(flipped) issues (a measured flip test)."""
    top = set(issues.index[: int(round(factor * len(flipped)))])
    return float(np.mean([pid in top for pid in flipped])) if len(flipped) else float("nan")
