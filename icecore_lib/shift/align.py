"""Test-time alignment of a core to the lab, one instrument session at a time, with the core's own known classes.

A session's light, focus and noise move every particle's features (or embedding) the same way, whatever its
class; a new particle type moves only its own few particles. So per core session and per coordinate, the
offset of the session from the lab is estimated within predicted classes (core class median minus lab class
median) and summarised by the median over classes: a new type mistaken for one class shifts that class's
median, not the median over classes. Subtracting it leaves what differs between particles, not sessions.
"""

from __future__ import annotations

import pandas as pd

from ..frames import aligned


def session_offsets(
    train: pd.DataFrame,
    train_labels: pd.Series,
    core: pd.DataFrame,
    core_pred: pd.Series,
    sessions: pd.Series,
    min_count: int = 10,
) -> pd.DataFrame:
    """Per core session (rows) and coordinate (columns): the median over predicted classes of the class-conditional
    offset, core class median minus training class median; classes with fewer than ``min_count`` particles in a
    session are left out, and a session with no such class gets the offset of the whole core."""
    labels = aligned(train_labels, train.index, "train_labels")
    pred = aligned(core_pred, core.index, "core_pred")
    session = aligned(sessions, core.index, "sessions")
    lab = train.groupby(labels.to_numpy()).median()
    pooled = _offset(core, pred, lab, min_count)
    rows = {s: _offset(core[session == s], pred[session == s], lab, min_count) for s in pd.unique(session)}
    return pd.DataFrame({s: pooled if row is None else row for s, row in rows.items()}).T.rename_axis("session")


def _offset(core: pd.DataFrame, pred: pd.Series, lab: pd.DataFrame, min_count: int) -> pd.Series | None:
    """Median over the well-populated predicted classes of (core class median - lab class median); None if none."""
    counts = pred.value_counts()
    classes = [c for c in lab.index if counts.get(c, 0) >= min_count]
    if not classes:
        return None
    medians = core.groupby(pred.to_numpy()).median().loc[classes]
    return (medians - lab.loc[classes]).median(axis=0)


def align_core(core: pd.DataFrame, sessions: pd.Series, offsets: pd.DataFrame) -> pd.DataFrame:
    """The core with each particle's session offset subtracted (``session_offsets``)."""
    session = aligned(sessions, core.index, "sessions")
    missing = sorted(set(session) - set(offsets.index))
    if missing:
        raise KeyError(f"align_core: no offset for session(s) {missing}; offsets hold {sorted(offsets.index)}")
    return core - offsets.loc[session.to_numpy(), core.columns].to_numpy()
