"""Decode and resize every crop once into one uint8 memory-mapped array, keyed by the data's checksum.

``cache_dir/packed/<key>/`` holds ``images.npy`` ((N, S, S) uint8, opened read-only as a memmap),
``table.parquet`` (aligned row by row), ``report.json`` (the check report, bad items included) and
``meta.json``. The key is a sha256 of the CSVs, the image listing (zip CRCs / file sizes and mtimes),
the manifest settings that shape the table, the image size and ``PACK_FORMAT_VERSION``: edit a CSV and
you get a new key; call again with the same data and the pack is reused without decoding anything.
A pack in progress lives in ``.<key>.partial/`` with a journal of finished chunks: an interrupted pack
resumes where it stopped, and a lock makes a second process packing the same data wait and reuse it.
Splits (train/val/test) are stored beside it under ``splits/``, keyed by their parameters.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # POSIX (Linux, macOS, Colab); elsewhere two processes packing the same data at once is not guarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

import numpy as np
import pandas as pd

from .manifest import ResolvedPart
from .runs import atomic_write_json, atomic_write_table
from .schema import LABEL, ORIG_HEIGHT, ORIG_WIDTH, SPLIT
from .sources import decode_many
from .validate import CheckReport, DataError, Inspection, decode_problems, inspect_part

PACK_FORMAT_VERSION = 1
SPLIT_VERSION = 1
SPLITS = ("train", "val", "test")
_COPY_ROWS = 4096
_STAMP = "started_for.sha256"


@dataclass(frozen=True)
class Packed:
    """A packed part: ``images[i]`` is the crop of ``table.iloc[i]``."""

    images: np.ndarray  # (N, S, S) uint8, read-only np.memmap
    table: pd.DataFrame  # indexed by particle_id
    key: str
    path: Path
    report: CheckReport

    def __len__(self) -> int:
        """Number of particles."""
        return len(self.table)


def pack_part(
    part: ResolvedPart,
    image_size: int,
    cache_dir: Path | str,
    *,
    skip_bad: bool = False,
    workers: int = 0,
    progress: bool = True,
) -> Packed:
    """The packed part, built once (checked, decoded in parallel, written atomically) and reused after.

    Strict by default: any error in the check report raises :class:`DataError`; with ``skip_bad`` the
    bad particles are left out (and listed in the saved report) and a warning says how many.
    """
    inspection = inspect_part(part)
    if inspection.source is None:
        raise ValueError(f"{part.name} has no images to pack")
    dest = Path(cache_dir) / "packed" / pack_key(inspection, image_size)
    if not dest.is_dir():
        _check_strict(inspection.report, skip_bad)
        with _exclusive(dest):
            if not dest.is_dir():
                _build(inspection, image_size, dest, skip_bad=skip_bad, workers=workers, progress=progress)
    packed = load_packed(dest)
    _check_strict(packed.report, skip_bad)
    if not packed.report.ok:
        warnings.warn(f"skip_bad: {len(packed.report.bad_ids):,} particle(s) left out\n"
                      f"{packed.report.summary(limit=5)}", stacklevel=2)
    return packed


def pack_key(inspection: Inspection, image_size: int) -> str:
    """Hex digest naming the pack: data checksums, table-shaping settings, image size, format version."""
    part = inspection.part
    payload = {
        "format": PACK_FORMAT_VERSION,
        "image_size": image_size,
        "part": part.part,
        "classes": list(part.classes),
        "csvs": [[c.name, c.label, inspection.digests[c.path]] for c in part.csvs],
        "columns": sorted(part.columns.items()),
        "imgpath_prefix": part.imgpath_prefix,
        "session_pattern": part.session_pattern,
        "images": inspection.source.fingerprint(inspection.listing) if inspection.source else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def load_packed(path: Path | str) -> Packed:
    """A pack folder opened: the images as a read-only memmap, the table, the report."""
    path = Path(path)
    images = np.load(path / "images.npy", mmap_mode="r")
    table = pd.read_parquet(path / "table.parquet")
    report = CheckReport.from_json((path / "report.json").read_text(encoding="utf-8"))
    return Packed(images=images, table=table, key=path.name, path=path, report=report)


def _check_strict(report: CheckReport, skip_bad: bool) -> None:
    """Raise :class:`DataError` on a report with errors, unless bad particles may be left out."""
    if not report.ok and not skip_bad:
        raise DataError(report, "Fix the data, or pass skip_bad=True (icecore --skip-bad) to leave them out.")


def _build(inspection: Inspection, size: int, dest: Path, *, skip_bad: bool, workers: int, progress: bool) -> None:
    """Decode into ``.<key>.partial`` next to ``dest``, then rename it (nothing half-written is ever visible).

    The partial folder survives an interruption (Ctrl-C, a lost Colab runtime): its journal records every
    finished chunk, and the next call decodes only the rest. It is started afresh when the particle list or
    the image size differ from what it was started with.
    """
    table = inspection.table(drop=inspection.report.bad_ids)
    if table.empty:
        raise DataError(inspection.report, f"{inspection.part.name}: no particle left to pack")
    partial = dest.with_name(f".{dest.name}.partial")
    images_path = partial / "images.npy"
    _start_partial(partial, list(table.index), size)
    result = decode_many(inspection.source, list(table.index), out=images_path, workers=workers,
                         journal=partial / "journal", progress=progress)
    report = inspection.report.with_problems(decode_problems(result.errors, inspection.source), result.errors)
    keep = ~table.index.isin(list(result.errors))
    if not keep.all():
        _check_strict(report, skip_bad)
        (partial / _STAMP).unlink()  # from here the array is rewritten: an interruption must start afresh
        _keep_rows(images_path, keep)
    table = table[keep].assign(**{ORIG_HEIGHT: result.shapes[keep, 0], ORIG_WIDTH: result.shapes[keep, 1]})
    table.to_parquet(partial / "table.parquet")
    report.to_json(partial / "report.json")
    atomic_write_json(partial / "meta.json", _meta(inspection, size, len(table)))
    shutil.rmtree(partial / "journal", ignore_errors=True)
    (partial / _STAMP).unlink(missing_ok=True)
    _publish(partial, dest)


def _start_partial(partial: Path, names: list[str], size: int) -> None:
    """Reuse a partial pack of the same particles and size; otherwise start an empty one."""
    stamp = hashlib.sha256(json.dumps([size, names]).encode()).hexdigest()
    stamp_path = partial / _STAMP
    if stamp_path.is_file() and stamp_path.read_text() == stamp and (partial / "images.npy").is_file():
        return
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    np.lib.format.open_memmap(partial / "images.npy", mode="w+", dtype=np.uint8, shape=(len(names), size, size)).flush()
    stamp_path.write_text(stamp)


@contextlib.contextmanager
def _exclusive(dest: Path) -> Iterator[None]:
    """Hold an exclusive lock for packing ``dest``: a second process packing the same data waits, then reuses it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(f".{dest.name}.lock"), "a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _publish(tmp: Path, dest: Path) -> None:
    """Rename the finished folder to ``dest``; if another process published the same key first, keep theirs."""
    try:
        os.replace(tmp, dest)
    except OSError:
        if not dest.is_dir():
            raise


def _keep_rows(path: Path, keep: np.ndarray) -> None:
    """Rewrite an .npy array with only the ``keep`` rows, block by block (it may not fit in memory)."""
    old = np.load(path, mmap_mode="r")
    rows = np.flatnonzero(keep)
    new_path = path.with_name(f".kept.{path.name}")
    new = np.lib.format.open_memmap(new_path, mode="w+", dtype=old.dtype, shape=(len(rows), *old.shape[1:]))
    for start in range(0, len(rows), _COPY_ROWS):
        block = rows[start:start + _COPY_ROWS]
        new[start:start + len(block)] = old[block]
    new.flush()
    del old, new
    new_path.replace(path)


def _meta(inspection: Inspection, size: int, n: int) -> dict[str, Any]:
    """What a pack was made from, for people reading the cache folder."""
    part = inspection.part
    return {
        "format": PACK_FORMAT_VERSION, "dataset": part.dataset, "part": part.part, "image_size": size,
        "n_particles": n, "images": str(part.images), "csvs": {str(p): d for p, d in inspection.digests.items()},
        "resize": "stretch to square, Pillow bilinear (anti-aliased)",
    }


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
