"""Atomic writes: a file a user keeps is replaced whole or not at all, never left half-written."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; it replaces ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~_umask())  # mkstemp makes 0600 files; results are for the whole lab to read
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    """The process's file-creation mask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(target: Path | str, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def atomic_write_json(target: Path | str, obj: Any) -> Path:
    """Write JSON atomically (NaN becomes null so every JSON reader accepts it)."""
    return atomic_write_text(target, json.dumps(jsonable(obj), indent=2, sort_keys=True) + "\n")


def atomic_write_yaml(target: Path | str, obj: Any) -> Path:
    """Write YAML atomically."""
    return atomic_write_text(target, yaml.safe_dump(jsonable(obj), sort_keys=False))


def atomic_write_table(df: Any, target: Path | str) -> Path:
    """Write a DataFrame atomically as Parquet or CSV, chosen by the suffix."""
    target = Path(target)
    with atomic_path(target) as tmp:
        if target.suffix == ".parquet":
            df.to_parquet(tmp)
        elif target.suffix == ".csv":
            df.to_csv(tmp)
        else:
            raise ValueError(f"{target}: tables are written as .parquet or .csv")
    return target


def jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tuples, paths and NaN into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_figure(fig: Figure, target: Path | str, dpi: int = 120) -> Path:
    """Save a figure atomically, its format from the suffix (PNG when none)."""
    target = Path(target)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=target.suffix.lstrip(".") or "png")
    return target
