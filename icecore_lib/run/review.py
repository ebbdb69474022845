"""A run's review logs: the decisions a person takes in the explorer (a candidate class and its name, or an
artefact), appended to ``<run_dir>/review.csv`` and read back as labels for retraining or for an export; and the
verdicts on the reference set's doubted labels (notebook 01), appended to ``<run_dir>/label_review.csv`` and read
back as the corrected labels of the next run."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..data.relabel import read_decision_log, read_label_review
from ..files import atomic_write_table
from ..schema import PARTICLE_ID
from .artifacts import Run

REVIEW_COLUMNS = ("decision", "name", "timestamp")
CANDIDATE = "candidate"
ARTEFACT = "artefact"
DECISIONS = (CANDIDATE, ARTEFACT)


def review_path(run_dir: Path | str) -> Path:
    """Where a run's review decisions live (the run's ``review`` artefact)."""
    return Run(run_dir).file("review")


def load_review(run_dir: Path | str) -> pd.DataFrame:
    """Every decision taken in a run (oldest first), indexed by particle id; empty when none yet."""
    path = review_path(run_dir)
    review = read_decision_log(path, REVIEW_COLUMNS)
    bad = ~review["decision"].isin(DECISIONS)
    if bad.any():
        row = int(bad.to_numpy().argmax())
        value = review["decision"].iloc[row]
        raise ValueError(f"{path}: line {row + 2} has decision {value!r}; expected one of {DECISIONS}")
    return review[list(REVIEW_COLUMNS)]


def append_review(run_dir: Path | str, ids: Sequence[str], decision: str, name: str = "") -> pd.DataFrame:
    """Append a decision for these particles to the run's review log (rewritten atomically); returns the new rows."""
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
    if decision == CANDIDATE and not name.strip():
        raise ValueError("a candidate class needs a name")
    if not len(ids):
        raise ValueError("no particles selected")
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    rows = pd.DataFrame(
        {"decision": decision, "name": name.strip(), "timestamp": stamp},
        index=pd.Index(list(ids), name=PARTICLE_ID),
        dtype="string",
    )
    atomic_write_table(pd.concat([load_review(run_dir), rows]), review_path(run_dir))
    return rows


def label_review_path(run_dir: Path | str) -> Path:
    """Where a run's verdicts on doubted labels live (the run's ``label_review`` artefact)."""
    return Run(run_dir).file("label_review")


def load_label_review(run_dir: Path | str) -> pd.DataFrame:
    """Every verdict on a doubted label taken in a run (oldest first), indexed by particle id."""
    return read_label_review(label_review_path(run_dir))


def append_label_review(run_dir: Path | str, verdicts: pd.Series, given: pd.Series, classes: Sequence[str]) -> pd.DataFrame:
    """Append verdicts (particle id -> the label a person decided: the given one kept, or another class).

    A label outside ``classes`` is refused, naming it and the particle; the log is rewritten atomically.
    """
    if not len(verdicts):
        raise ValueError("no verdicts to record")
    unknown = verdicts[~verdicts.isin(list(classes))]
    if len(unknown):
        raise ValueError(f"{unknown.index[0]}: label {unknown.iloc[0]!r} is not a class; classes: {list(classes)}")
    missing = verdicts.index.difference(given.index)
    if len(missing):
        raise ValueError(f"{missing[0]}: not a labelled particle of this run")
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    rows = pd.DataFrame({"given": given.loc[verdicts.index].to_numpy(), "label": verdicts.to_numpy(), "timestamp": stamp},
                        index=pd.Index(verdicts.index, name=PARTICLE_ID), dtype="string")
    atomic_write_table(pd.concat([load_label_review(run_dir), rows]), label_review_path(run_dir))
    return rows


def review_to_labels(review: pd.DataFrame, artefact_label: str | None = ARTEFACT) -> pd.Series:
    """One label per reviewed particle (its latest decision): the candidate's name, or ``artefact_label``.

    ``artefact_label=None`` drops the artefacts (e.g. to train only on named classes).
    """
    latest = review[~review.index.duplicated(keep="last")]
    labels = latest["name"].where(latest["decision"] == CANDIDATE, artefact_label)
    return labels.dropna().astype("string").rename("label")
