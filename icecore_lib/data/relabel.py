"""Verdicts on doubted reference labels (notebook 01's label review) read back as the labels of the next run.

The log is ``<run_dir>/label_review.csv``: particle id, the given label, the label a person decided, when. A run
started with ``-p relabel=<that file>`` trains on the decided labels (the latest verdict per particle wins).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..schema import PARTICLE_ID

LABEL_REVIEW_COLUMNS = ("given", "label", "timestamp")


def read_decision_log(path: Path | str, columns: tuple[str, ...]) -> pd.DataFrame:
    """A review log (particle id, then ``columns``, as strings; oldest first); empty when the file is absent.

    A log without its columns is an error naming the file and what it lacks.
    """
    path = Path(path)
    if not path.exists():
        empty = pd.Index([], dtype="string", name=PARTICLE_ID)
        return pd.DataFrame({c: pd.Series(dtype="string") for c in columns}, index=empty)
    log = pd.read_csv(path, index_col=0, dtype="string", keep_default_na=False)
    missing = [c for c in columns if c not in log.columns]
    if missing or log.index.name != PARTICLE_ID:
        raise ValueError(f"{path}: expected columns {[PARTICLE_ID, *columns]}, missing {missing or [PARTICLE_ID]}")
    return log[list(columns)]


def read_label_review(path: Path | str) -> pd.DataFrame:
    """Every verdict in a label-review log (oldest first), indexed by particle id; empty when the file is absent."""
    return read_decision_log(path, LABEL_REVIEW_COLUMNS)


def corrected_labels(labels: pd.Series, review: pd.DataFrame, source: str = "the label review") -> pd.Series:
    """``labels`` with each reviewed particle's latest verdict in place of its given label.

    A reviewed particle missing from ``labels`` is an error naming it and ``source`` (a log of another dataset).
    """
    latest = review[~review.index.duplicated(keep="last")]
    stray = latest.index.difference(labels.index)
    if len(stray):
        raise ValueError(f"{source}: {stray[0]} was reviewed but is not among the labelled particles "
                         f"({len(stray)} such): is it the log of another dataset?")
    decided = latest["label"].reindex(labels.index)
    return labels.astype("string").where(decided.isna(), decided).rename(labels.name)
