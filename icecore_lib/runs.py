"""Run directories and atomic writes: nothing a user had is overwritten, nothing half-written is left."""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

TRACKED_PACKAGES = (
    "icecore", "numpy", "pandas", "scikit-learn", "scikit-image", "scipy", "torch", "torchvision",
    "xgboost", "shap", "umap-learn", "papermill", "matplotlib", "pillow", "pyarrow", "safetensors",
)


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
    return atomic_write_text(target, json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


def atomic_write_yaml(target: Path | str, obj: Any) -> Path:
    """Write YAML atomically."""
    return atomic_write_text(target, yaml.safe_dump(_jsonable(obj), sort_keys=False))


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


def _jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tuples, paths and NaN into plain JSON values."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def new_run_dir(root: Path | str, name: str | None = None) -> Path:
    """Create a fresh run directory under ``root``; an existing one is never reused."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stem = name or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        candidate = root / (stem if attempt == 0 else f"{stem}-{attempt}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RuntimeError(f"could not create a fresh run directory named {stem!r} under {root}")


def environment_versions() -> dict[str, Any]:
    """Python, platform and the versions of the packages a result depends on."""
    versions: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in TRACKED_PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        import torch

        versions["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
        versions["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return versions


def update_metrics(run_dir: Path | str, section: str, values: dict[str, Any]) -> Path:
    """Merge one notebook's metrics into ``run_dir/metrics.json`` under ``section``, atomically."""
    path = Path(run_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics[section] = _jsonable(values)
    return atomic_write_json(path, metrics)


def read_metrics(run_dir: Path | str) -> dict[str, Any]:
    """The run's metrics.json as a dict (empty when none was written yet)."""
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def project_root(start: Path | str | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: cwd) holding data_manifest.yaml, else ``start``."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "data_manifest.yaml").is_file():
            return folder
    return start


def runs_root() -> Path:
    """Where run directories go: $ICECORE_RUNS, else ``runs/`` in the project root."""
    return Path(os.environ.get("ICECORE_RUNS", project_root() / "runs"))


LATEST_POINTER = "LATEST"
# Files the runner writes into a fresh run directory before notebook 00 starts.
_RUNNER_FILES = frozenset({"params.yaml", "environment.json", "notebooks"})


def start_run(run_dir: Path | str = "", name: str = "") -> Path:
    """Run directory for notebook 00: the given one (fresh or empty), else a new one under runs_root()."""
    if run_dir:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        if any(p for p in path.iterdir() if p.name not in _RUNNER_FILES):
            raise FileExistsError(f"{path} already holds results; run directories are never reused")
    else:
        path = new_run_dir(runs_root(), name or None)
    atomic_write_text(path.parent / LATEST_POINTER, path.name + "\n")
    return path


def continue_run(run_dir: Path | str = "") -> Path:
    """Run directory for notebooks 01+: the given one, else the latest one notebook 00 started."""
    if run_dir:
        path = Path(run_dir)
    else:
        pointer = runs_root() / LATEST_POINTER
        if not pointer.is_file():
            raise FileNotFoundError(f"no run started yet under {runs_root()}: run notebook 00 first or pass run_dir")
        path = runs_root() / pointer.read_text().strip()
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path} does not exist: run notebook 00 first")
    return path


def record_stage(run_dir: Path | str, stage: str, cfg: Any) -> Path:
    """Save a notebook stage's resolved config as ``params/<stage>.yaml`` in the run directory."""
    from .config import to_dict

    return atomic_write_yaml(Path(run_dir) / "params" / f"{stage}.yaml", to_dict(cfg))


def copy_into(run_dir: Path | str, source: Path | str, relative: str) -> Path:
    """Copy a file into the run directory (atomically) so the run holds everything it showed."""
    import shutil

    target = Path(run_dir) / relative
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


PARTS = ("labelled", "core")


def write_part_tables(run_dir: Path | str, name: str, parts: dict[str, Any]) -> dict[str, Path]:
    """Write one model's per-particle tables as ``tables/<name>_<part>.parquet`` (parts that are None skipped)."""
    return {part: atomic_write_table(frame, Path(run_dir) / "tables" / f"{name}_{part}.parquet")
            for part, frame in parts.items() if frame is not None}


def read_part_tables(run_dir: Path | str, name: str) -> dict[str, Any]:
    """Read what :func:`write_part_tables` wrote: the labelled table must exist, the core's may not."""
    import pandas as pd

    tables = {part: Path(run_dir) / "tables" / f"{name}_{part}.parquet" for part in PARTS}
    if not tables["labelled"].exists():
        raise FileNotFoundError(f"{tables['labelled']} is missing: run the notebook that writes {name!r} first")
    return {part: pd.read_parquet(path) if path.exists() else None for part, path in tables.items()}
