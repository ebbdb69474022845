"""Train/val/test splits of a packed part: stratified by class (optionally grouped, e.g. by session), seeded, cached.
"""

from __future__ import annotations

import hashlib
import json
import zlib

import numpy as np
import pandas as pd

from ..files import atomic_write_json, atomic_write_table
from ..schema import LABEL, SPLIT
from .pack import Packed

SPLIT_VERSION = 1


SPLITS = ("train", "val", "test")


def assign_split(
    table: pd.DataFrame,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    group_by: str | None = None,
) -> pd.Series:
    """train/val/test per particle, stratified by label; with ``group_by`` no group spans two splits.

    Ungrouped: each class is shuffled with its own seeded generator and cut by the fractions (so one
    class's split does not depend on the others). Grouped: whole groups are assigned greedily, largest
    first, to the split that best moves every class towards its target counts, with a strong pull
    towards splits that still lack a class; too few groups per class is an error saying so.
    """
    fractions = _fractions(val_fraction, test_fraction)
    labels = table[LABEL].astype(str).to_numpy()
    if group_by is None:
        values = _stratified(labels, fractions, seed)
    else:
        if group_by not in table.columns:
            raise KeyError(f"cannot group the split by {group_by!r}: the table has no such column")
        values = _grouped(labels, table[group_by], fractions, seed)
    return pd.Series(values, index=table.index, name=SPLIT, dtype="str")


def _fractions(val_fraction: float, test_fraction: float) -> dict[str, float]:
    """Split -> fraction, checked to be sensible."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0 and sum below 1")
    return {"train": 1 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}


def _class_rng(seed: int, label: str) -> np.random.Generator:
    """A generator seeded by the split seed and the class name."""
    return np.random.default_rng([seed, zlib.crc32(label.encode())])


def _stratified(labels: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Per class: shuffle, then the first round(n*test) to test, the next round(n*val) to val."""
    out = np.full(len(labels), "train", dtype=object)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[_class_rng(seed, label).permutation(len(idx))]
        n_test = round(len(idx) * fractions["test"])
        n_val = round(len(idx) * fractions["val"])
        out[idx[:n_test]] = "test"
        out[idx[n_test:n_test + n_val]] = "val"
    return out


def _grouped(labels: np.ndarray, groups: pd.Series, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Assign whole groups to splits (see :func:`assign_split`)."""
    name = groups.name
    if groups.isna().any():
        raise ValueError(f"cannot group the split by {name!r}: {int(groups.isna().sum())} particle(s) have no {name}")
    counts = pd.crosstab(groups.to_numpy(), labels)  # groups x classes
    wanted = [s for s in SPLITS if fractions[s] > 0]
    _check_enough_groups(counts, wanted, name)
    totals = counts.sum(axis=0).to_numpy(dtype=float)
    targets = np.array([fractions[s] * totals for s in wanted])
    current = np.zeros_like(targets)
    order = np.random.default_rng(seed).permutation(len(counts))
    order = order[np.argsort(-counts.sum(axis=1).to_numpy()[order], kind="stable")]
    assigned = {}
    for g in order:
        c = counts.iloc[g].to_numpy(dtype=float)
        best = int(np.argmin([_cost_change(current[s], c, targets[s], totals) for s in range(len(wanted))]))
        current[best] += c
        assigned[counts.index[g]] = wanted[best]
    return groups.map(assigned).to_numpy(dtype=object)


def _cost_change(current: np.ndarray, add: np.ndarray, target: np.ndarray, totals: np.ndarray) -> float:
    """How much a split's cost changes when a group is added to it."""
    return _split_cost(current + add, target, totals) - _split_cost(current, target, totals)


def _split_cost(counts: np.ndarray, target: np.ndarray, totals: np.ndarray) -> float:
    """Squared deviation from the target counts (as fractions of each class), plus 1 per class the split lacks."""
    return float((((counts - target) / totals) ** 2).sum() + ((counts == 0) & (target > 0)).sum())


def _check_enough_groups(counts: pd.DataFrame, wanted: list[str], name: str) -> None:
    """Every class needs at least one group per split; say which do not have enough."""
    per_class = (counts > 0).sum(axis=0)
    short = per_class[per_class < len(wanted)]
    if not short.empty:
        listed = ", ".join(f"{label} ({n})" for label, n in short.items())
        raise ValueError(
            f"cannot split by {name!r} into {'/'.join(wanted)} with every class in each: class(es) with too few "
            f"{name} groups: {listed}; need {len(wanted)}. Use no grouping, test_fraction=0, or data with more {name}s."
        )


def packed_split(
    packed: Packed,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    group_by: str | None = None,
) -> pd.Series:
    """The split of a packed part: read from ``splits/`` when made before with these parameters, else made and saved."""
    params = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
              "group_by": group_by, "version": SPLIT_VERSION}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    path = packed.path / "splits" / f"{digest}.parquet"
    if path.exists():
        return pd.read_parquet(path)[SPLIT].reindex(packed.table.index)
    split = assign_split(packed.table, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                         group_by=group_by)
    atomic_write_json(path.with_suffix(".json"), params)
    atomic_write_table(split.to_frame(), path)
    return split


def split_ids(table: pd.DataFrame, split: str) -> pd.Index:
    """Particle ids of one split (train/val/test)."""
    ids = table.index[table[SPLIT] == split]
    if not len(ids):
        raise ValueError(f"the {split!r} split is empty; check val_fraction/test_fraction")
    return ids


def stratified_subset(rows: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded share of ``rows`` taken class by class (``labels`` aligned with ``rows``; at least one row of each
    class), sorted; all of them when ``fraction`` is 1. Cheaper models that must still see every class."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return np.sort(rows)
    keep = []
    for label in np.unique(labels):
        members = rows[labels == label]
        n = max(1, round(len(members) * fraction))
        keep.append(members[_class_rng(seed, str(label)).permutation(len(members))[:n]])
    return np.sort(np.concatenate(keep))
