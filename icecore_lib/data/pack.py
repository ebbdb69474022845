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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import atomic_write_json
from ..images.decode import decode_many
from ..schema import ORIG_HEIGHT, ORIG_WIDTH
from .manifest import ResolvedPart
from .validate import CheckReport, DataError, Inspection, decode_problems, inspect_part

try:  # POSIX (Linux, macOS, Colab); elsewhere two processes packing the same data at once is not guarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

import numpy as np
import pandas as pd

PACK_FORMAT_VERSION = 2  # 2: the report names tiny crops and colour crops made gray; journal has colour flags
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
    report = inspection.report.with_problems(decode_problems(result, list(table.index), inspection.source),
                                             result.errors)
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


