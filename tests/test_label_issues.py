"""Label issues: labels flipped on purpose are found near the top of cleanlab's ranking of out-of-fold probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from icecore_lib.label_issues import out_of_fold_proba, rank_label_issues, recall_in_top
from icecore_lib.models.bdt import BDTClassifier

CLASSES = ["camp", "grim", "dust", "qrob", "cont"]


def _reference(n_per_class: int = 120, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Five overlapping classes in six features (a BDT gets most, not all, right), keyed by particle id."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.6, (len(CLASSES), 6))
    X = np.concatenate([rng.normal(c, 1.0, (n_per_class, 6)) for c in centres])
    labels = np.repeat(CLASSES, n_per_class)
    ids = pd.Index([f"p{i:04d}.png" for i in range(len(X))], name="particle_id")
    return pd.DataFrame(X, index=ids, columns=[f"f{j}" for j in range(6)]), pd.Series(labels, index=ids, name="label")


def _flip(labels: pd.Series, fraction: float, seed: int = 1) -> tuple[pd.Series, list[str]]:
    """The labels with ``fraction`` of them moved to another class at random, and which ones."""
    rng = np.random.default_rng(seed)
    flipped = list(rng.choice(labels.index, int(round(fraction * len(labels))), replace=False))
    noisy = labels.copy()
    for pid in flipped:
        noisy[pid] = rng.choice([c for c in CLASSES if c != labels[pid]])
    return noisy, flipped


@pytest.mark.parametrize("fraction", [0.02, 0.05])
def test_cleanlab_finds_most_labels_flipped_on_purpose_in_its_top_twice_their_count(fraction):
    X, labels = _reference()
    noisy, flipped = _flip(labels, fraction)
    model = BDTClassifier(n_estimators=60, max_depth=3, eta=0.2, features=list(X.columns), n_jobs=1)
    proba = out_of_fold_proba(model, X, noisy, CLASSES, folds=5, seed=0)
    issues = rank_label_issues(noisy, proba)
    assert recall_in_top(issues, flipped) >= 0.8
    first = issues.iloc[0]
    assert first["given"] == noisy[issues.index[0]] and first["given_proba"] < first["suggested_proba"]
    assert (issues["rank"].to_numpy() == np.arange(1, len(issues) + 1)).all()


def test_out_of_fold_probabilities_never_come_from_a_model_that_saw_the_particle():
    X, labels = _reference(n_per_class=30)
    model = BDTClassifier(n_estimators=200, max_depth=8, eta=0.5, features=list(X.columns), n_jobs=1)
    noisy, flipped = _flip(labels, 0.05)
    proba = out_of_fold_proba(model, X, noisy, CLASSES, folds=3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    # A model that had memorised the flipped labels would give them high probability; out of fold it cannot.
    given = np.array([proba.loc[pid, noisy[pid]] for pid in flipped])
    assert np.median(given) < 0.5


def test_a_class_with_fewer_particles_than_folds_is_named():
    X, labels = _reference(n_per_class=10)
    labels.iloc[:8] = "grim"
    with pytest.raises(ValueError, match="'camp' has 2"):
        out_of_fold_proba(BDTClassifier(features=list(X.columns)), X, labels, CLASSES, folds=5)
